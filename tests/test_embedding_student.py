"""training.embedding.student: the bottleneck / recurrent student built from a (tiny random) teacher encoder."""

from __future__ import annotations

import json

import pytest
import torch

from training.embedding.errors import EmbeddingSetupError
from training.embedding.student import (
    BottleneckEmbedding,
    StudentShape,
    build_student,
    count_parameters,
    evenly_spaced,
    layer_applications,
)

SENTENCES = ["A patient with fever and neck stiffness.", "Ligamentum flavum consists of elastic fibres.", "Tracheal suction for 10 seconds", "yes"]


@pytest.fixture(scope="module")
def teacher(tiny_encoder_path):
    from training.embedding.encoders import load_encoder

    return load_encoder(str(tiny_encoder_path), device="cpu")


def embed(model, texts=SENTENCES) -> torch.Tensor:
    return model.encode(texts, convert_to_tensor=True, show_progress_bar=False)


@pytest.mark.parametrize(("n", "keep", "expected"), [(6, 3, (0, 2, 5)), (6, 2, (0, 5)), (6, 1, (5,)), (6, 0, ()), (6, 6, (0, 1, 2, 3, 4, 5)), (4, 3, (0, 2, 3))])
def test_evenly_spaced(n, keep, expected):
    assert evenly_spaced(n, keep) == expected


def test_evenly_spaced_refuses_more_layers_than_the_teacher():
    with pytest.raises(EmbeddingSetupError, match="--keep"):
        evenly_spaced(6, 7)


def test_full_copy_reproduces_the_teacher(teacher):
    """All layers, no bottleneck, no recurrence: the student is the teacher (same weights, same outputs)."""
    student = build_student(teacher, StudentShape(None, (0, 1, 2, 3), 1))
    torch.testing.assert_close(embed(student), embed(teacher), rtol=0, atol=1e-6)
    pooler = teacher[0].auto_model.pooler  # BERT's [CLS] pooler: unused by mean pooling, not kept
    assert count_parameters(student) == count_parameters(teacher) - count_parameters(pooler)


def test_recurrence_applies_the_kept_layers_in_order_r_times(teacher):
    """Layers (1, 3) repeated twice equal the teacher's BERT run through layers 1, 3, 1, 3."""
    import copy

    student = build_student(teacher, StudentShape(None, (1, 3), 2))
    reference = copy.deepcopy(teacher)
    layers = reference[0].auto_model.encoder.layer
    reference[0].auto_model.encoder.layer = torch.nn.ModuleList([layers[1], layers[3], layers[1], layers[3]])
    torch.testing.assert_close(embed(student), embed(reference), rtol=0, atol=1e-6)
    assert layer_applications(student) == 4
    once = build_student(teacher, StudentShape(None, (1, 3), 1))
    assert count_parameters(student) == count_parameters(once)  # recurrence adds compute, not parameters
    assert not torch.allclose(embed(student), embed(once))


def test_bottleneck_svd_initialisation_is_the_best_low_rank_table():
    torch.manual_seed(0)
    table = torch.randn(50, 4) @ torch.randn(4, 12)  # rank 4
    exact = BottleneckEmbedding(50, 4, 12)
    assert exact.init_from(table) == pytest.approx(1.0)
    ids = torch.arange(50)
    torch.testing.assert_close(exact(ids), table, rtol=0, atol=1e-5)
    low = BottleneckEmbedding(50, 2, 12)
    kept = low.init_from(table)
    s = torch.linalg.svdvals(table.double())
    assert kept == pytest.approx(float((s[:2] ** 2).sum() / (s**2).sum()))
    err = torch.linalg.matrix_norm(low(ids).double() - table.double()) ** 2
    assert float(err) == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-4)  # Eckart–Young: the rest of the spectrum


def test_bottleneck_student_shrinks_the_word_table(teacher):
    bert = teacher[0].auto_model
    vocab, hidden = bert.config.vocab_size, bert.config.hidden_size
    student = build_student(teacher, StudentShape(8, (0, 2), 1))
    emb = student[0].auto_model.embeddings.word_embeddings
    assert isinstance(emb, BottleneckEmbedding)
    assert tuple(emb.lookup.weight.shape) == (vocab, 8) and tuple(emb.project.weight.shape) == (hidden, 8)
    layer = sum(p.numel() for p in bert.encoder.layer[0].parameters())
    expected = count_parameters(teacher) - count_parameters(bert.pooler) - vocab * hidden + vocab * 8 + 8 * hidden - 2 * layer
    assert count_parameters(student) == expected


def test_student_folder_is_a_plain_sentence_transformers_folder(teacher, tmp_path):
    """modules.json names only sentence-transformers' own modules; loading needs no trust_remote_code."""
    from sentence_transformers import SentenceTransformer

    student = build_student(teacher, StudentShape(8, (0, 3), 2))
    student.save(str(tmp_path))
    types = [m["type"] for m in json.loads((tmp_path / "modules.json").read_text())]
    assert all(t.startswith("sentence_transformers.") for t in types)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "atkd_recurrent_bert" and config["repeat"] == 2 and config["embedding_size"] == 8
    assert config["teacher_layers"] == [0, 3]
    loaded = SentenceTransformer(str(tmp_path), device="cpu")
    torch.testing.assert_close(embed(loaded), embed(student), rtol=0, atol=0)
    assert count_parameters(loaded) == count_parameters(student)


@pytest.mark.parametrize(("shape", "match"), [
    (StudentShape(None, (0, 9), 1), "kept layers"),
    (StudentShape(32, (0,), 1), "--bottleneck"),
    (StudentShape(None, (0,), 0), "--repeat"),
])
def test_impossible_shapes_are_refused(teacher, shape, match):
    with pytest.raises(EmbeddingSetupError, match=match):
        build_student(teacher, shape)
