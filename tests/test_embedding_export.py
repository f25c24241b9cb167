"""training.embedding.export: ONNX and int8 ONNX of a (tiny random) student, read back by ONNX Runtime."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e .[onnx])")

TEXTS = ["A patient with fever and neck stiffness.", "Elastic fibres", "yes", "Which nerve supplies the deltoid muscle?" * 3]


def test_onnx_export_matches_torch_and_int8_stays_close(tiny_encoder_path, tmp_path):
    from training.embedding.encoders import load_encoder
    from training.embedding.evaluate import STEncoder, spearman
    from training.embedding.export import OnnxEncoder, export_all
    from training.embedding.student import StudentShape, build_student

    teacher = load_encoder(str(tiny_encoder_path), device="cpu")
    student = build_student(teacher, StudentShape(8, (0, 2), 2))  # bottleneck and recurrence both in the graph
    files = export_all(student, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx", "model_int8.onnx"}  # no temporary left
    reference = STEncoder(student).encode(TEXTS)
    fp32 = OnnxEncoder(files["onnx"], student.tokenizer, student.max_seq_length).encode(TEXTS, batch_size=3)
    torch.testing.assert_close(fp32, reference, rtol=0, atol=1e-5)
    int8 = OnnxEncoder(files["onnx_int8"], student.tokenizer, student.max_seq_length).encode(TEXTS, batch_size=3)
    assert int8.shape == reference.shape
    cos = torch.nn.functional.cosine_similarity(int8, reference, dim=-1)
    assert float(cos.min()) > 0.9
    pair_ref = reference @ reference.T
    pair_q = torch.nn.functional.normalize(int8, dim=-1) @ torch.nn.functional.normalize(int8, dim=-1).T
    iu = torch.triu_indices(len(TEXTS), len(TEXTS), 1)
    assert spearman(pair_q[iu[0], iu[1]], pair_ref[iu[0], iu[1]]) > 0.5
    assert files["onnx_int8"].stat().st_size < files["onnx"].stat().st_size


def test_missing_onnx_file_is_a_clear_error(tmp_path):
    from training.embedding.errors import EmbeddingSetupError
    from training.embedding.export import OnnxEncoder

    with pytest.raises(EmbeddingSetupError, match="no ONNX file"):
        OnnxEncoder(tmp_path / "none.onnx", None, 8)
