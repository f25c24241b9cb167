"""The run report (report.md, self-contained report.html, plots/*.png) and eval compare, from a fixture
run directory laid out as the loop writes it (docs/run_dir.md), with outputs made by the real metrics."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import yaml

from data.records import MCQItem, atomic_write_json, write_jsonl
from data.run_layout import MARKER, STAGE_DIRS
from eval.__main__ import main
from eval.compare import compare, load_scored
from eval.mcq import assign_nodes
from eval.metrics import MetricsConfig, paired_summary, write_metrics
from data.records import Reply
from eval.report import ReportError, load_run, report_blocks, to_html, to_markdown, write_report
from tree import AbilityTree

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _items() -> list[MCQItem]:
    items = []
    for i in range(60):
        sub = ["anatomy", "cardiology", "pharmacology"][i % 3]
        n_opt = 4 if sub != "pharmacology" else 5
        items.append(MCQItem(id=f"mmlu-{i}", question=f"Q{i}?", options={chr(65 + k): f"o{k}" for k in range(n_opt)},
                             answer_idx="A", meta_info="mmlu:x", ability_path=["clinical medicine", sub]))
    items += [MCQItem(id=f"pubmedqa-{i}", question=f"P{i}?", options={"A": "yes", "B": "no", "C": "maybe"},
                      answer_idx="B", meta_info="pubmedqa:x") for i in range(30)]
    return items


def _replies(items: list[MCQItem], p_right: float, seed: int) -> list[Reply]:
    rng = random.Random(seed)
    out = []
    for it in items:
        right = rng.random() < p_right
        pick = it.answer_idx if right else next(k for k in it.options if k != it.answer_idx)
        out.append(Reply(id=it.id, prompt="p", output=f"{pick}=-0.1", parsed_answer=pick, key=it.answer_idx, correct=right,
                         source=it.source, n_options=len(it.options)))
    return out


def make_run_dir(root: Path, iterations: int = 2) -> Path:
    """A run directory with every stage's marker and the evaluate stage's files, as the loop leaves them."""
    items = _items()
    tree = AbilityTree.from_items(items)
    config = {"domain": "clinical", "teacher": "smollm2", "student": "smollm2?layers=15", "iterations": iterations,
              "probe_size": 96, "budget": 32}
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    before = assign_nodes(_replies(items, 0.25, seed=0), items, tree)
    for it in range(1, iterations + 1):
        after = assign_nodes(_replies(items, 0.25 + 0.1 * it, seed=it), items, tree)
        summaries = {
            "infer": {"n": 96, "correct": 20 + 5 * it, "accuracy": (20 + 5 * it) / 96, "items_per_s": 20.0},
            "analyze": {"nodes": 5 + it, "diagnosed_nodes": 2,
                        "weakest": [{"node": "clinical/pharmacology", "accuracy": 0.125}, {"node": "clinical/anatomy", "accuracy": 0.25}],
                        "new_abilities": [f"clinical/pharmacology/drug interactions {it}"]},
            "generate": {"requested": 32, "candidates": 32, "parsed": 20 + it, "failed_attempts": 3, "nodes": 4},
            "validate": {"candidates": 20 + it, "accepted": 3 + it, "rejected": 29 - it,
                         "rejected_by_stage": {"parse": 12 - it, "schema": 2, "near_duplicate": 10, "verifier": it - 1, "solver": 5},
                         "verifier": None if it == 1 else {"name": "v:f", "right": 10, "wrong": 4, "unknown": 2, "passed": 10,
                                                           "rekeyed": 3, "rejected": 1, "kept_unknown": 2}},
            "label": {"items": 35 + it, "generated": 3 + it, "replay": 32},
            "train": {"train_loss": 1.0},
        }
        ev = root / f"iteration_{it}" / STAGE_DIRS["evaluate"]
        write_jsonl(ev / "before.jsonl", before)
        write_jsonl(ev / "after.jsonl", after)
        paired = paired_summary(before, after, items, tree)
        write_metrics(ev, paired)
        summaries["evaluate"] = {"n": len(items), "chance": paired["chance"], "before": paired["before"], "after": paired["after"],
                                 **{k: paired[k] for k in ("delta", "delta_ci95", "gained", "lost", "bootstrap_p", "mcnemar_p")},
                                 "items_per_s": 31.5}
        for k, (stage, summary) in enumerate(summaries.items()):
            atomic_write_json(root / f"iteration_{it}" / STAGE_DIRS[stage] / MARKER,
                              {"fingerprint": "f", "summary": {**summary, "seconds": 10.0 * (k + 1)}})
        before = after
    return root


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_renders_from_a_run_dir(tmp_path):
    run = make_run_dir(tmp_path / "run")
    html_path = write_report(run)
    plots = sorted(p.name for p in (run / "plots").iterdir())
    assert plots == ["acceptance.png", "accuracy_by_iteration.png", "nodes_before_after.png", "stage_time.png"]
    for name in plots:
        w, h = png_size(run / "plots" / name)
        assert 300 < w < 2000 and 150 < h < 2000, (name, w, h)
    import matplotlib.image

    assert matplotlib.image.imread(run / "plots" / "nodes_before_after.png").ndim == 3  # decodes as an image

    page = html_path.read_text()
    assert page.startswith("<!doctype html>") and page.count('src="data:image/png;base64,') == 4
    assert "<script" not in page and "http" not in page  # self-contained: nothing fetched
    md = (run / "report.md").read_text()
    for name in plots:
        assert f"(plots/{name})" in md
    # The iteration table, the chance level beside the figures, the paired test of the whole run.
    assert md.count("\n| 1 |") == 4 and md.count("\n| 2 |") == 4  # iterations, ability tree, generated data and time tables
    assert "| 2 | 7 | 2 | pharmacology 12%; anatomy 25% | drug interactions 2 (under pharmacology) |" in md  # the tree filling in
    assert "chance level" in md and "McNemar" in md and "| pubmedqa | 30 | 33.3% |" in md
    assert "anatomy" in md and "pharmacology" in md
    assert "iterations finished: 2 of 2" in md
    # what judged the keys besides the agents: nothing in iteration 1, the verifier in iteration 2
    assert "| parse 11, schema 2, near_duplicate 10, solver 5 | no verifier (the agents alone) |" in md
    assert "verifier 1, solver 5 | v:f: 10 right, 4 wrong (3 re-keyed, 1 rejected), 2 unknown |" in md


def test_report_figures_follow_the_data(tmp_path):
    run = load_run(make_run_dir(tmp_path / "run", iterations=1))
    blocks = report_blocks(run, MetricsConfig(resamples=500))
    names = [v.name for k, v in blocks if k == "figure"]
    assert names == ["accuracy_by_iteration.png", "nodes_before_after.png", "acceptance.png", "stage_time.png"]
    # A run that has not reached evaluate has no accuracy or node figures, but still a report.
    for stage in ("evaluate", "train", "label", "validate"):
        (tmp_path / "run" / "iteration_1" / STAGE_DIRS[stage] / MARKER).unlink()
    blocks = report_blocks(load_run(tmp_path / "run"), MetricsConfig(resamples=500))
    assert [v.name for k, v in blocks if k == "figure"] == ["stage_time.png"]
    assert "iterations finished: 0 of 1" in to_markdown(blocks)
    assert to_html(blocks).count("<table>") == 3  # iterations, ability tree (analyze has run), time


def test_report_errors_name_the_file(tmp_path, capsys):
    with pytest.raises(ReportError, match="not a run directory"):
        load_run(tmp_path)
    run = make_run_dir(tmp_path / "run", iterations=1)
    marker = run / "iteration_1" / STAGE_DIRS["validate"] / MARKER
    marker.write_text("{not json")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(marker) in err and "line 1" in err and not (run / "report.html").exists()


def test_report_cli_and_markdown_escaping(tmp_path, capsys):
    run = make_run_dir(tmp_path / "run", iterations=1)
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--resamples", "1000"]) == 0
    assert (tmp_path / "rep" / "report.html").is_file() and not (run / "report.html").exists()
    assert "1000 resamples" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["report", str(run), "--resamples", "5"]) == 2
    assert "resamples must be >= 100" in capsys.readouterr().err


def test_compare_resolves_runs_iterations_and_eval_dirs(tmp_path, capsys):
    run = make_run_dir(tmp_path / "run")
    a, b = load_scored(run / "iteration_1"), load_scored(run)
    assert a.path == run / "iteration_1" / "G_eval" / "after.jsonl" and b.path == run / "iteration_2" / "G_eval" / "after.jsonl"
    summary = compare(a, b, MetricsConfig(resamples=2000))
    metrics = json.loads((run / "iteration_2" / "G_eval" / "metrics.json").read_text())
    # The same pairs as the loop's own evaluate stage of iteration 2 (before = iteration 1's after).
    for key in ("n", "gained", "lost", "delta", "mcnemar_p"):
        assert summary[key] == metrics[key], key
    assert summary["after"]["by_node"]["clinical medicine/cardiology"]["n"] == 20

    assert main(["compare", str(run / "iteration_1"), str(run), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "pubmedqa" in out and "cardiology" in out and "p McNemar" in out and "33.3%" in out
    assert json.loads((tmp_path / "cmp" / "metrics.json").read_text())["b"]["path"].endswith("iteration_2/G_eval/after.jsonl")


def test_compare_errors(tmp_path, capsys):
    run = make_run_dir(tmp_path / "run", iterations=1)
    other = tmp_path / "other.jsonl"
    write_jsonl(other, [Reply(id="zzz", prompt="p", output="o", parsed_answer="A", key="A", correct=True, n_options=4)])
    assert main(["compare", str(run), str(other)]) == 2
    assert "share no item ids" in capsys.readouterr().err
    assert main(["compare", str(run), str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["compare", str(run), str(tmp_path)]) == 2
    assert "holds no per_item.jsonl" in capsys.readouterr().err


def test_report_survives_missing_or_old_eval_files(tmp_path, caplog):
    """A run whose eval files are gone or predate the per-item fields still gets a report: the stored
    summaries stand in, and the start-vs-now section is left out with a warning."""
    run = make_run_dir(tmp_path / "run")
    (run / "iteration_2" / STAGE_DIRS["evaluate"] / "after.jsonl").unlink()
    write_report(run)
    md = (run / "report.md").read_text()
    assert "## Iterations" in md and "Start of the run" not in md and "nodes_before_after.png" not in md
    assert "using the stored evaluate summary" in caplog.text and "no comparison of the run's start" in caplog.text
    stored = json.loads((run / "iteration_2" / STAGE_DIRS["evaluate"] / MARKER).read_text())["summary"]
    assert f"{100 * stored['after']['accuracy']:.1f}%" in md.split("\n| 2 |")[1].split("\n")[0]


def test_compare_refuses_different_keys(tmp_path, capsys):
    run = make_run_dir(tmp_path / "run", iterations=1)
    replies = [json.loads(line) for line in (run / "iteration_1" / "G_eval" / "after.jsonl").read_text().splitlines()]
    replies[0]["key"] = "C"
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in replies))
    assert main(["compare", str(run), str(other)]) == 2
    assert "has answer key" in capsys.readouterr().err
