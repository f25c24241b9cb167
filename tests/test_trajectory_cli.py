"""python -m training.trajectory: help, one-line errors with exit code 2 naming the file and line or
the option, and a whole run of the four commands on a tiny encoder."""

from __future__ import annotations

import json

import pytest

from tests.test_trajectory_pipeline import toy_rows, write_rows
from training.trajectory.cli import main


def test_help_and_unknown_commands(capsys):
    assert main(["--help"]) == 0
    assert "experts" in capsys.readouterr().out
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["distill", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--syn-steps" in out and "--unroll" in out and "adjoint" in out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, tiny_encoder_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\nnot json\n', encoding="utf-8")
    assert main(["experts", "--data", str(bad), "--out", str(tmp_path / "e"), "--model", f"head:{tiny_encoder_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{bad}:2:" in err and "\n" not in err
    assert not (tmp_path / "e").exists()  # nothing written
    assert main(["distill", "--experts", str(tmp_path / "none"), "--out", str(tmp_path / "s")]) == 2
    assert "holds no experts" in capsys.readouterr().err
    assert main(["distill", "--experts", "x", "--out", "y", "--unroll", "magic"]) == 2
    assert "--unroll must be one of exact, adjoint, tesla" in capsys.readouterr().err
    assert main(["experts", "--data", str(bad), "--out", "o", "--model", "minilm"]) == 2
    assert "--model takes head:<encoder> or backbone:<encoder>" in capsys.readouterr().err


def test_the_four_commands_end_to_end(tmp_path, capsys, tiny_encoder_path):
    from training.trajectory.cli import SHIPPED

    assert main(["benchmark", "--name", "clinical-source", "--items", str(SHIPPED / "seed.jsonl"), "--out", str(tmp_path / "bench")]) == 0
    assert json.loads((tmp_path / "bench" / "benchmark.json").read_text())["rows"]["test"] > 0
    train, test = write_rows(tmp_path / "train.jsonl", toy_rows(200, 0)), write_rows(tmp_path / "test.jsonl", toy_rows(80, 1))
    common = ["--progress", "false"]
    assert main(["experts", "--data", str(train), "--test", str(test), "--model", f"head:{tiny_encoder_path}", "--experts", "1", "--epochs", "3",
                 "--learning-rate", "0.3", "--max-length", "12", "--width", "8", "--out", str(tmp_path / "experts"), *common]) == 0
    assert "expert 0: test accuracy by epoch" in capsys.readouterr().out
    assert main(["distill", "--experts", str(tmp_path / "experts"), "--out", str(tmp_path / "syn"), "--per-class", "1", "--syn-steps", "2",
                 "--max-start-epoch", "1", "--iterations", "3", "--eval-every", "3", "--eval-steps", "5", *common]) == 0
    assert "synthetic set:" in capsys.readouterr().out
    assert main(["evaluate", "--synthetic", str(tmp_path / "syn"), "--data", str(test), "--seeds", "1", "--steps", "4", "--baselines", "random,expert", "--out", str(tmp_path / "t.csv"), *common]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "expert" in out and (tmp_path / "t.csv").is_file()
