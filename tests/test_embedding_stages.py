"""training.embedding stages, pipeline and CLI on a tiny random teacher encoder and real clinical items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data.records import read_items
from training.embedding.config import EncoderDistillConfig
from training.embedding.errors import EmbeddingSetupError

SEED_FILE = Path(__file__).resolve().parents[1] / "data" / "clinical" / "seed.jsonl"


@pytest.fixture(scope="module")
def mcq_file(tmp_path_factory) -> Path:
    """60 real seed items (short ones, to keep the tiny runs fast) as an MCQ JSONL file."""
    items = [it for it in read_items([SEED_FILE]) if len(it.question) < 200][:60]
    path = tmp_path_factory.mktemp("enc_data") / "items.jsonl"
    path.write_text("".join(it.model_dump_json() + "\n" for it in items), encoding="utf-8")
    return path


def tiny_config(out: Path, teacher: Path, data: Path, **overrides) -> EncoderDistillConfig:
    values = dict(out=str(out), teacher=f"st:{teacher}", data=[str(data)], stages="2,3,4", bottleneck=8, keep=2, repeat=2,
                  stage2_epochs=1, stage3_epochs=1, stage4_epochs=1, batch_size=8, dev_fraction=0.25, device="cpu", progress=False)
    return EncoderDistillConfig(**(values | overrides))


def test_config_checks_its_options(tmp_path):
    with pytest.raises(EmbeddingSetupError, match="--stages"):
        EncoderDistillConfig(out=str(tmp_path), stages="1,3")
    with pytest.raises(EmbeddingSetupError, match="--stages"):
        EncoderDistillConfig(out=str(tmp_path), stages="a")
    with pytest.raises(EmbeddingSetupError, match="bottleneck"):
        EncoderDistillConfig(out=str(tmp_path), stages="2,3", bottleneck=0)
    with pytest.raises(EmbeddingSetupError, match="--loss"):
        EncoderDistillConfig(out=str(tmp_path), loss="infonce")
    with pytest.raises(EmbeddingSetupError, match="--layers"):
        EncoderDistillConfig(out=str(tmp_path), layers="0,x")
    assert EncoderDistillConfig(out=str(tmp_path), stages="4,3").stage_list == [3, 4]


def test_three_stages_train_save_and_resume(tiny_encoder_path, mcq_file, tmp_path, capsys):
    """Each stage trains (parameters move), lands in its own folder; a second run loads them all."""
    from training.embedding.distill import distill_encoder
    from training.embedding.encoders import load_encoder
    from training.embedding.student import StudentShape, build_student

    cfg = tiny_config(tmp_path / "run", tiny_encoder_path, mcq_file)
    result = distill_encoder(cfg)
    assert [r.stage for r in result.reports] == [2, 3, 4] and not any(r.resumed for r in result.reports)
    assert all(r.steps > 0 and r.first_loss is not None for r in result.reports)
    for stage in (2, 3, 4):
        saved = json.loads((tmp_path / "run" / f"stage{stage}" / "stage.json").read_text())
        assert saved["report"]["stage"] == stage and saved["options"]["bottleneck"] == 8
        assert not (tmp_path / "run" / f"stage{stage}.work").exists()
    assert (tmp_path / "run" / "student" / "modules.json").is_file()
    distill = json.loads((tmp_path / "run" / "student" / "distill.json").read_text())
    assert [s["stage"] for s in distill["stages"]] == [2, 3, 4]

    teacher = load_encoder(f"st:{tiny_encoder_path}", device="cpu")
    fresh = build_student(teacher, StudentShape(8, (0, 3), 2))
    trained = load_encoder(str(tmp_path / "run" / "student"), device="cpu")
    moved = [n for (n, a), (_, b) in zip(fresh.named_parameters(), trained.named_parameters()) if not torch.equal(a, b)]
    assert any("word_embeddings" in n for n in moved) and any("encoder.layer" in n for n in moved)
    rows = result.tables[4]
    assert rows[0].fidelity == pytest.approx(1.0) and -1.0 <= rows[1].fidelity <= 1.0
    out = capsys.readouterr().out
    assert "stage 2 (bottleneck)" in out and "stage 4 (pairs)" in out and "fidelity" in out

    again = distill_encoder(cfg)
    assert all(r.resumed for r in again.reports)
    assert [r.steps for r in again.reports] == [r.steps for r in result.reports]

    # A run folder moved elsewhere resumes from where it is now, not from the path its stage.json recorded.
    weights = (tmp_path / "run" / "student" / "model.safetensors").read_bytes()
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = distill_encoder(tiny_config(tmp_path / "moved", tiny_encoder_path, mcq_file))
    assert all(r.resumed and Path(r.folder).parent == tmp_path / "moved" for r in moved.reports)
    assert (tmp_path / "moved" / "student" / "model.safetensors").read_bytes() == weights


def test_a_finished_stage_trained_otherwise_is_not_overwritten(tiny_encoder_path, mcq_file, tmp_path):
    from training.embedding.distill import distill_encoder

    cfg = tiny_config(tmp_path / "run", tiny_encoder_path, mcq_file, stages="3", bottleneck=0)
    distill_encoder(cfg)
    before = (tmp_path / "run" / "stage3" / "model.safetensors").read_bytes()
    with pytest.raises(EmbeddingSetupError, match="stage3 was trained with other options .*repeat"):
        distill_encoder(tiny_config(tmp_path / "run", tiny_encoder_path, mcq_file, stages="3", bottleneck=0, repeat=1))
    assert (tmp_path / "run" / "stage3" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("loss", ["mse", "ce", "bool"])
def test_every_pair_loss_trains(tiny_encoder_path, mcq_file, tmp_path, loss):
    from training.embedding.distill import distill_encoder

    result = distill_encoder(tiny_config(tmp_path / loss, tiny_encoder_path, mcq_file, stages="4", bottleneck=0, loss=loss))
    (report,) = result.reports
    assert report.steps > 0 and report.last_loss is not None and report.last_loss > 0


def test_length_grouped_batches_cover_every_row_once_and_group_lengths():
    from datasets import Dataset

    from training.embedding.sampler import LengthGroupedBatchSampler

    texts = [("x" * (i % 37 + 1)) for i in range(203)]
    sampler = LengthGroupedBatchSampler(Dataset.from_dict({"text": texts}), batch_size=8, drop_last=False, seed=3, block=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 26
    assert sorted(i for b in batches for i in b) == list(range(203))
    spread = sum(max(len(texts[i]) for i in b) - min(len(texts[i]) for i in b) for b in batches) / len(batches)
    assert spread < 12  # random batches of 8 over lengths 1..37 spread ~28 characters
    assert batches == list(sampler)  # the same epoch gives the same order (a resumed run sees it)
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_teacher_targets_are_computed_once(tiny_encoder_path, tmp_path, monkeypatch):
    from training.embedding import targets as targets_module
    from training.embedding.encoders import load_encoder

    teacher = load_encoder(str(tiny_encoder_path), device="cpu")
    texts = ["first sentence", "a second, longer sentence here", "third"]
    first = targets_module.cached_targets(teacher, texts, tmp_path, progress=False)
    assert first.sentence.shape[0] == 3 and first.token_mean.shape == (3, 32)
    torch.testing.assert_close(first.sentence_of(["third"])[0], teacher.encode(["third"], convert_to_tensor=True)[0], rtol=0, atol=1e-5)
    monkeypatch.setattr(targets_module, "compute_targets", lambda *a, **k: pytest.fail("recomputed"))
    second = targets_module.cached_targets(teacher, texts, tmp_path, progress=False)
    torch.testing.assert_close(second.sentence, first.sentence)
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_bad_input_is_one_line_and_exit_2(tiny_encoder_path, mcq_file, tmp_path, capsys):
    from training.embedding.cli import main

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a question\tits answer\nno tab on this line\n", encoding="utf-8")
    code = main(["distill", "--out", str(tmp_path / "o"), "--teacher", f"st:{tiny_encoder_path}", "--data", str(mcq_file), "--pairs", str(pairs), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"error: {pairs}:2: expected 'source<TAB>target' (2 columns), got 1"
    assert main(["distill", "--out", str(tmp_path / "o"), "--stages", "2,5"]) == 2
    assert "--stages" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert main(["distill", "--out", str(tmp_path / "o"), "--teacher", "hf:/nowhere"]) == 2
    assert "not a sentence encoder" in capsys.readouterr().err


def test_cli_eval_prints_the_teacher_beside_the_student(tiny_encoder_path, mcq_file, tmp_path, capsys):
    from training.embedding.cli import main
    from training.embedding.encoders import load_encoder
    from training.embedding.student import StudentShape, build_student

    student = build_student(load_encoder(str(tiny_encoder_path), device="cpu"), StudentShape(None, (0, 2), 1))
    student.save(str(tmp_path / "s"))
    code = main(["eval", "--student", str(tmp_path / "s"), "--teacher", f"st:{tiny_encoder_path}", "--data", str(mcq_file), "--dev-fraction", "0.25", "--no-speed"])
    out = capsys.readouterr().out
    assert code == 0 and "teacher (st:" in out and str(tmp_path / "s") in out and "recall@1" in out


def test_cli_export_writes_onnx_and_measures_it_again(tiny_encoder_path, mcq_file, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from training.embedding.cli import main
    from training.embedding.encoders import load_encoder
    from training.embedding.student import StudentShape, build_student

    build_student(load_encoder(str(tiny_encoder_path), device="cpu"), StudentShape(8, (1,), 2)).save(str(tmp_path / "s"))
    code = main(["export", "--student", str(tmp_path / "s"), "--teacher", f"st:{tiny_encoder_path}", "--data", str(mcq_file), "--dev-fraction", "0.25", "--no-speed"])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "s" / "onnx" / "model.onnx").is_file() and (tmp_path / "s" / "onnx" / "model_int8.onnx").is_file()
    assert "onnx: " in out and "onnx_int8: " in out and "against the torch model" in out


def test_extra_sentences_are_trained_on_and_checked(tiny_encoder_path, mcq_file, tmp_path, capsys):
    from training.embedding.cli import main
    from training.embedding.distill import load_data

    extra = tmp_path / "more.txt"
    extra.write_text("The deltoid is supplied by the axillary nerve.\nAspirin inhibits cyclooxygenase.\n", encoding="utf-8")
    data = load_data(tiny_config(tmp_path / "o", tiny_encoder_path, mcq_file, sentences=str(extra)))
    assert "Aspirin inhibits cyclooxygenase." in data.train_sentences
    extra.write_text("one\n\nthree\n", encoding="utf-8")
    code = main(["distill", "--out", str(tmp_path / "o"), "--teacher", f"st:{tiny_encoder_path}", "--data", str(mcq_file), "--sentences", str(extra), "--device", "cpu"])
    assert code == 2 and capsys.readouterr().err.strip().endswith(f"error: {extra}:2: empty sentence")


def test_cli_config_file_and_command_line_precedence(tmp_path, capsys):
    """--config YAML sets options, the command line wins, an unknown key is refused in one line."""
    from training.embedding.cli import distill_parser, main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"out: {tmp_path / 'o'}\nbottleneck: 64\nkeep: 2\n", encoding="utf-8")
    (cfg,) = distill_parser().parse_args_and_config(["--config", str(recipe), "--keep", "1"])
    assert (cfg.bottleneck, cfg.keep, cfg.out) == (64, 1, str(tmp_path / "o"))
    recipe.write_text(f"out: {tmp_path / 'o'}\ncolour: red\n", encoding="utf-8")
    assert main(["distill", "--config", str(recipe)]) == 2
    assert "colour" in capsys.readouterr().err


def test_changed_options_names_every_difference_and_accepts_an_option_added_since():
    from training.embedding.stages import changed_options

    saved = {"seed": 0, "repeat": 1, "dropped": 3}
    assert changed_options(saved, {"seed": 0, "repeat": 1, "dropped": 3, "sentences": None}) == []  # added later, unset
    assert changed_options(saved, {"seed": 0, "repeat": 2, "dropped": 3, "sentences": "s.txt"}) == ["repeat", "sentences"]
    assert changed_options(saved, {"seed": 0, "repeat": 1}) == ["dropped"]  # gone now: not the same stage either
