"""Every entry point against the same families of bad input, as a new user would give them.

Each probe calls the command's ``main(argv)`` in-process and asserts: exit code 2; no traceback; the
error is one line (the last one; argparse's usage may stand before it) that names the file and line,
or the option; and nothing in the test's folder (inputs, outputs, the working directory) was written,
changed or removed. The families: a missing input file, an empty one, an invalid JSON line, a record
missing a field, a field of the wrong type, an unknown option, a value out of range, an output that
cannot be written (its parent is a file).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

GOOD_MCQ = {"question": "Which nerve supplies the deltoid?", "options": {"A": "Axillary", "B": "Radial", "C": "Ulnar", "D": "Median"},
            "answer_idx": "A", "ability_path": ["clinical medicine", "anatomy"]}


def mcq_line(i: int, **extra) -> str:
    return json.dumps({"id": f"q{i}", **GOOD_MCQ, "question": f"{GOOD_MCQ['question']} ({i})", **extra})


def generated_line(i: int, **extra) -> str:
    return mcq_line(i, target_node="clinical medicine/anatomy", **extra)


def text_line(i: int, **extra) -> str:
    return json.dumps({"text": f"a sentence about topic {i % 2} number {i}", "label": f"c{i % 2}", **extra})


# Per record kind: (a good line, a line with the field dropped, a line with it of the wrong type), and the field.
KINDS: dict[str, tuple[Callable[..., str], str, object]] = {
    "mcq": (mcq_line, "question", ["not", "a", "string"]),
    "generated": (generated_line, "question", ["not", "a", "string"]),
    "text": (text_line, "label", ["not", "a", "label"]),
}
FILE_FAMILIES = ("missing file", "empty file", "invalid JSON line", "missing field", "wrong type")
OPTION_FAMILIES = ("unknown option", "value out of range", "unwritable output")


def write_input(path: Path, kind: str, family: str | None) -> tuple[str, ...]:
    """Write the input for ``family`` (None: a good one); returns what the error must name."""
    line, missing, wrong = KINDS[kind]
    good = [line(i) for i in range(1, 5)]
    if family == "missing file":
        return (str(path),)
    if family == "empty file":
        path.write_text("")
        return (str(path),)
    if family == "invalid JSON line":
        path.write_text(good[0] + '\n{"id": "q2", "question": \n' + "\n".join(good[2:]) + "\n")
        return (f"{path}:2",)
    if family in ("missing field", "wrong type"):
        row = json.loads(good[1])
        if family == "missing field":
            del row[missing]
        else:
            row[missing] = wrong
        path.write_text("\n".join([good[0], json.dumps(row), *good[2:]]) + "\n")
        return (f"{path}:2", missing)
    path.write_text("\n".join(good) + "\n")
    return ()


@dataclass
class Entry:
    """One command: its main, the argv of a good call, the record kind it reads (None: no input file),
    and the options that put a value out of range."""

    module: str
    argv: Callable[[dict], list[str]]
    kind: str | None
    out_of_range: list[str]
    out_option: str | None
    needs: tuple[str, ...] = ()  # fixtures the argv uses: tiny_model, tiny_teacher, tiny_encoder
    names: dict[str, str] = field(default_factory=dict)  # family -> what the error must name, where not the file


def _loop(p: dict) -> list[str]:
    domain = p["dir"] / "domain.yaml"
    if not domain.exists():
        (p["dir"] / "eval.jsonl").write_text("\n".join(mcq_line(i) for i in range(50, 54)) + "\n")
        (p["dir"] / "dev.jsonl").write_text("\n".join(mcq_line(i) for i in range(60, 64)) + "\n")
        domain.write_text(f"name: probe\nroot: clinical medicine\nseed_files: [{p['data']}]\neval_files: [eval.jsonl]\ndev_files: [dev.jsonl]\n")
    return ["--domain", str(domain), "--teacher", f"hf:{p['tiny_teacher']}", "--student", f"hf:{p['tiny_model']}",
            "--engine", "transformers", "--run-dir", str(p["out"])]


ENTRIES: dict[str, Entry] = {
    "agents.loop": Entry("agents.loop", _loop, "mcq", ["--iterations", "0"], "--run-dir", ("tiny_model", "tiny_teacher")),
    "tree build": Entry("tree.__main__", lambda p: ["build", "--data", str(p["data"]), "-o", str(p["out"] / "tree.json")], "mcq",
                        ["--root", ""], "--output"),
    "eval mcq": Entry("eval.__main__", lambda p: ["mcq", "--model", f"hf:{p['tiny_model']}", "--engine", "transformers",
                                                  "--data", str(p["data"]), "--out", str(p["out"])], "mcq", ["--batch-size", "0"], "--out", ("tiny_model",)),
    "synth validate": Entry("synth.__main__", lambda p: ["validate", "--candidates", str(p["data"]), "--teacher", f"hf:{p['tiny_teacher']}",
                                                         "--engine", "transformers", "--out", str(p["out"])], "generated",
                            ["--batch-size", "0"], "--out", ("tiny_teacher",)),
    "training.distill": Entry("training.distill", lambda p: ["--student", str(p["tiny_model"]), "--data", str(p["data"]),
                                                             "--output_dir", str(p["out"]), "--alpha", "0"], "mcq",
                              ["--alpha", "1.5"], "--output_dir", ("tiny_model",)),
    "training.teacher_logits": Entry("training.teacher_logits", lambda p: ["--teacher", f"hf:{p['tiny_teacher']}", "--data", str(p["data"]),
                                                                           "--out", str(p["out"])], "mcq", ["--k", "0"], "--out", ("tiny_teacher",)),
    "training.teacher_kv": Entry("training.teacher_kv", lambda p: ["--teachers", str(p["tiny_teacher"]), "--data", str(p["data"]),
                                                                   "--out", str(p["out"]), "--student", str(p["tiny_model"])], "mcq",
                                 ["--batch-size", "0"], "--out", ("tiny_model", "tiny_teacher")),
    "training.fidelity": Entry("training.fidelity", lambda p: ["--student", str(p["tiny_model"]), "--teacher", str(p["tiny_teacher"]),
                                                               "--data", str(p["data"])], "mcq", ["--batch-size", "0"], None, ("tiny_model", "tiny_teacher")),
    "training.embedding distill": Entry("training.embedding.cli", lambda p: ["distill", "--teacher", str(p["tiny_encoder"]), "--data", str(p["data"]),
                                                                             "--out", str(p["out"])], "mcq", ["--batch_size", "1"], "--out", ("tiny_encoder",)),
    "training.trajectory experts": Entry("training.trajectory.cli", lambda p: ["experts", "--data", str(p["data"]), "--out", str(p["out"]),
                                                                               "--model", f"head:{p['tiny_encoder']}"], "text",
                                         ["--experts", "0"], "--out", ("tiny_encoder",)),
    "scratch build": Entry("scratch.__main__", lambda p: ["build", "--out", str(p["out"])], None, ["--batch-size", "0"], "--out"),
    "data.arithmetic.build": Entry("data.arithmetic.build", lambda p: ["--out", str(p["out"])], None, ["--seed-per-skill", "0"], "--out"),
}

CASES = [(name, family) for name, e in ENTRIES.items()
         for family in (FILE_FAMILIES if e.kind else ()) + OPTION_FAMILIES if not (family == "unwritable output" and not e.out_option)]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a hash of its bytes (folders as such)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}


def call(module: str, argv: list[str]) -> int:
    main = importlib.import_module(module).main
    try:
        return main(argv)
    except SystemExit as e:  # argparse: usage and one error line, exit 2
        return e.code if isinstance(e.code, int) else 1


def spellings(option: str) -> set[str]:
    """How an error may name an option: as typed, or as its field."""
    bare = option.lstrip("-")
    return {option, bare, bare.replace("-", "_"), bare.replace("_", "-")}


@pytest.mark.parametrize(("name", "family"), CASES, ids=[f"{n}: {f}" for n, f in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, family, tmp_path, monkeypatch, capsys, request):
    entry = ENTRIES[name]
    paths: dict = {"dir": tmp_path, "out": tmp_path / "out", "data": tmp_path / "data.jsonl"}
    for fixture in entry.needs:
        paths[fixture] = request.getfixturevalue(f"{fixture}_path")
    monkeypatch.chdir(tmp_path)
    if family == "unwritable output":
        (tmp_path / "a_file").write_text("a file, not a folder\n")
        paths["out"] = tmp_path / "a_file" / "out"
    if entry.kind:
        write_input(paths["data"], entry.kind, None)
    argv = entry.argv(paths)  # writes whatever else a good call needs (the loop's domain files)
    must_name: list[set[str]] = []
    if family in FILE_FAMILIES:
        paths["data"].unlink()
        must_name = [{n} for n in write_input(paths["data"], entry.kind, family)]
    elif family == "unknown option":
        argv, must_name = [*argv, "--no-such-option", "1"], [{"--no-such-option"}]
    elif family == "value out of range":
        argv, must_name = [*argv, *entry.out_of_range], [spellings(entry.out_of_range[0])]
    else:
        must_name = [spellings(entry.out_option), {str(tmp_path / "a_file")}]
    before = snapshot(tmp_path)
    capsys.readouterr()  # what making the fixtures printed is not the command's
    code = call(entry.module, argv)
    captured = capsys.readouterr()
    output = captured.err + captured.out
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, output:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert lines, "no error message"
    last = lines[-1]
    assert "error" in last.lower(), f"the last line is not the error: {last!r}\n{output[-2000:]}"
    for choices in must_name:
        assert any(c in last for c in choices), f"none of {sorted(choices)} named in the error line {last!r}"
    assert snapshot(tmp_path) == before, "something was written, changed or removed"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a filesystem where nothing can be created)")
def test_a_run_dir_on_a_filesystem_that_refuses_folders_is_one_line(capsys):
    """/proc refuses mkdir even to root, with ENOENT: the pre-flight's check must create, not just stat."""
    assert call("agents.loop", ["--domain", "clinical", "--run-dir", "/proc/atkd_x"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["error: --run-dir: cannot create /proc/atkd_x (No such file or directory in /proc); choose another --run-dir"]


@pytest.mark.parametrize("name", ["agents.loop", "training.distill", "training.embedding distill", "training.trajectory experts"])
def test_a_config_file_that_is_not_yaml_is_one_line_naming_its_line(name, tmp_path, monkeypatch, capsys, request):
    entry = ENTRIES[name]
    paths: dict = {"dir": tmp_path, "out": tmp_path / "out", "data": tmp_path / "data.jsonl"}
    for fixture in entry.needs:
        paths[fixture] = request.getfixturevalue(f"{fixture}_path")
    monkeypatch.chdir(tmp_path)
    write_input(paths["data"], entry.kind, None)
    bad = tmp_path / "recipe.yaml"
    bad.write_text("seed: 1\nlearning_rate: [0.1, 0.2\n")  # the list is never closed
    argv = [*entry.argv(paths), "--config", str(bad)]
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert call(entry.module, argv) == 2
    output = capsys.readouterr()
    lines = [line for line in (output.err + output.out).splitlines() if line.strip()]
    assert "Traceback" not in output.err and lines[-1].startswith("error: ") and f"{bad}:" in lines[-1] and "not valid YAML" in lines[-1], lines[-3:]
    assert snapshot(tmp_path) == before


def test_resume_of_a_run_whose_config_yaml_is_broken_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("domain: clinical\nbudget: [32\n")
    before = snapshot(tmp_path)
    assert call("agents.loop", ["--run-dir", str(run), "--resume"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --resume: {run / 'config.yaml'}:") and "not valid YAML" in lines[0], lines
    assert snapshot(tmp_path) == before
    (run / "config.yaml").write_text("domain: clinical\nno_such_option: 1\n")
    before = snapshot(tmp_path)
    assert call("agents.loop", ["--run-dir", str(run), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --resume: {run / 'config.yaml'}: unknown option(s) no_such_option (written by another version?)"
    assert snapshot(tmp_path) == before
