"""`python -m training.teacher_logits` and `python -m training.fidelity` on tiny models."""

from __future__ import annotations

import json

import pytest

from tests.test_training_teacher_logits import small_items


@pytest.fixture(scope="module")
def data_file(shared_data_dir, tmp_path_factory):
    from data.records import write_jsonl

    path = tmp_path_factory.mktemp("cli_items") / "items.jsonl"
    write_jsonl(path, small_items(shared_data_dir))
    return path


def _json_tail(text: str) -> dict:
    return json.loads(text[text.rindex("{\n") :])


def test_teacher_logits_cli(tmp_path, data_file, tiny_teacher_path, capsys):
    from training.teacher_logits import INDEX, TeacherLogits, main

    out = tmp_path / "logits"
    args = ["--teacher", f"hf:{tiny_teacher_path}", "--data", str(data_file), "--out", str(out), "--k", "8",
            "--no-progress"]
    assert main(args) == 0
    printed = _json_tail(capsys.readouterr().out)
    store = TeacherLogits(out)
    assert store.k == 8 and len(store) == printed["items"] == 4
    assert printed["bytes_per_token"] == store.bytes_per_token and printed["tokens"] == store.num_tokens
    index = (out / INDEX).read_text()

    # Stored logits are never replaced by accident.
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / INDEX).read_text() == index
    assert main([*args, "--force", "--k", "4"]) == 0
    assert TeacherLogits(out).k == 4

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    assert main(["--teacher", f"hf:{tiny_teacher_path}", "--data", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert f"{bad}:1" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_fidelity(tmp_path, shared_data_dir, data_file, tiny_model_path, tiny_teacher_path, capsys):
    from transformers import AutoTokenizer

    from training.fidelity import main, teacher_fidelity, teacher_targets

    items = small_items(shared_data_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    same = teacher_fidelity(tiny_model_path, tiny_model_path, items, tokenizer, batch_size=3)
    assert same.items == 4 and same.tokens > 0
    assert same.kl == pytest.approx(0.0, abs=1e-6) and same.top1_agreement == 1.0
    assert same.student_nll == pytest.approx(same.teacher_nll)
    other = teacher_fidelity(tiny_model_path, tiny_teacher_path, items, tokenizer, batch_size=2)
    assert other.tokens == same.tokens and other.kl > 0 and 0 <= other.top1_agreement <= 1
    # The teacher's side computed once and reused gives the same figures.
    targets = teacher_targets(tiny_teacher_path, items, tokenizer, batch_size=2)
    reused = teacher_fidelity(tiny_model_path, targets)
    assert reused.tokens == other.tokens and reused.kl == pytest.approx(other.kl, rel=1e-5)
    assert reused.top1_agreement == other.top1_agreement

    assert main(["--student", str(tiny_model_path), "--teacher", str(tiny_teacher_path), "--data", str(data_file),
                 "--limit", "2"]) == 0
    printed = _json_tail(capsys.readouterr().out)
    assert printed["items"] == 2 and printed["kl"] > 0
    assert main(["--student", str(tiny_model_path), "--teacher", str(tmp_path / "missing"), "--data", str(data_file)]) == 2
    assert "error:" in capsys.readouterr().err
