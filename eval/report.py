"""The report of a loop run: report.md, a self-contained report.html and plots/*.png.

Everything is read from the run directory (docs/run_dir.md), never from the loop's state, so
``python -m eval report RUN_DIR`` gives the same report as the loop's evaluate node, for a finished,
a running or a killed run. What it shows:

- per iteration: probe and eval accuracy with 95% intervals, the change and its p-values, data made
  and kept, seconds per stage, eval throughput; the ability tree's size, weakest nodes and the child
  nodes grown from the teacher's diagnoses;
- over the whole run (the student before iteration 1 against the newest one, on the same eval items):
  accuracy per source and per ability-tree node, before and after, with intervals and the chance level;
- figures: eval accuracy by iteration (with intervals and chance), per-node before/after, acceptance of
  generated items by rejection reason, time per stage.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from data.records import (
    DataError,
    Reply,
    atomic_write_bytes,
    atomic_write_text,
    read_jsonl,
    yaml_error,
)
from data.run_layout import MARKER, REJECTION_STAGES, STAGE_DIRS
from eval.metrics import MetricsConfig, accuracy_interval, outcomes, paired_outcomes

logger = logging.getLogger(__name__)

REASON_COLOURS = (  # one per data.run_layout.REJECTION_STAGES entry
    "0.6", "tab:brown", "tab:pink", "tab:olive", "tab:purple", "tab:cyan", "tab:orange", "tab:red")


class ReportError(DataError):
    """The folder is not a run directory, or one of its files cannot be read (the message names it)."""


@dataclass
class Iteration:
    """One iteration folder: the summary each finished stage stored in its marker (``seconds`` included)."""

    number: int
    path: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self, stage: str) -> dict[str, Any]:
        return self.stages.get(stage, {})


@dataclass
class RunResults:
    root: Path
    config: dict[str, Any]
    iterations: list[Iteration]

    @property
    def evaluated(self) -> list[Iteration]:
        return [it for it in self.iterations if "evaluate" in it.stages]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e


def load_run(root: str | Path) -> RunResults:
    """The finished stages of every iteration of the run in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such run directory")
    numbered = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := re.fullmatch(r"iteration_(\d+)", p.name))]
    config_file = root / "config.yaml"
    if not numbered and not config_file.is_file():
        raise ReportError(f"{root}: not a run directory (no config.yaml, no iteration_N folders)")
    config: dict[str, Any] = {}
    if config_file.is_file():
        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ReportError(str(yaml_error(config_file, e))) from None
    iterations = []
    for number, path in sorted(numbered):
        it = Iteration(number, path)
        for stage, folder in STAGE_DIRS.items():
            marker = path / folder / MARKER
            if marker.is_file():
                it.stages[stage] = _read_json(marker).get("summary", {})
        iterations.append(it)
    return RunResults(root, config, iterations)


# ------------------------------------------------------------------------------------------ figures


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _interval(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def fmt_change(x: float | None, ci: Sequence[float] | None = None) -> str:
    """A difference of accuracies in points, with its interval: ``+6.5 pt [-1.5, +14.4]``."""
    if x is None:
        return "–"
    text = f"{100 * x:+.1f} pt"
    return text + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")


def fmt_p(p: float | None) -> str:
    """None: not computed (the bootstrap p needs enough changed items; McNemar's is the test there)."""
    return "–" if p is None else ("<0.001" if p < 1e-3 else f"{p:.3f}")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    return Figure(figsize=(width, height), layout="constrained")


def _errors(values: Sequence[float], intervals: Sequence[Sequence[float]]) -> list[list[float]]:
    """Error-bar lengths below and above; clipped at 0 (an interval's float rounding may pass the value)."""
    return [[max(0.0, v - ci[0]) for v, ci in zip(values, intervals)], [max(0.0, ci[1] - v) for v, ci in zip(values, intervals)]]


def accuracy_figure(run: RunResults, config: MetricsConfig, evals: dict[int, dict[str, Any]]) -> bytes | None:
    """Eval accuracy of the student entering iteration 1 and after each iteration, with intervals."""
    evaluated = run.evaluated
    if not evaluated:
        return None
    ys, lo, hi = [], [], []
    first = evals[evaluated[0].number]["before"]
    # The student the run goes on with: the trained one where the gate adopted it, else the one before.
    points = [first] + [evals[it.number]["after" if adopted(it) else "before"] for it in evaluated]
    xs = [evaluated[0].number - 1] + [it.number for it in evaluated]
    for block in points:
        ys.append(block["accuracy"])
        lo.append(block["ci95"][0])
        hi.append(block["ci95"][1])
    fig = _figure(6.4, 3.8)
    ax = fig.add_subplot()
    ax.fill_between(xs, lo, hi, color="tab:blue", alpha=0.18, linewidth=0, label="95% interval")
    ax.plot(xs, ys, "o-", color="tab:blue", label=f"eval accuracy (n={first['n']})")
    rejected = [(it.number, evals[it.number]["after"]["accuracy"]) for it in evaluated if not adopted(it)]
    if rejected:
        ax.plot([x for x, _ in rejected], [y for _, y in rejected], "x", color="tab:red", markersize=9, mew=2,
                label="trained, rejected by the gate")
    probe = [(it.number - 1, it.summary("infer")) for it in run.iterations if it.summary("infer").get("n")]
    pci: list[tuple[float, float, str]] = []
    if probe:
        px = [x for x, _ in probe]
        py = [s["accuracy"] for _, s in probe]
        pci = [accuracy_interval(s["correct"], s["n"], config) for x, s in probe]
        ax.errorbar(px, py, yerr=_errors(py, pci),
                    fmt="s--", color="tab:orange", capsize=3, alpha=0.8, label=f"probe accuracy (n={probe[0][1]['n']})")
    if first.get("chance") is not None:
        ax.axhline(first["chance"], color="tab:red", linestyle=":", label=f"chance ({fmt_pct(first['chance'])})")
    ax.set_xticks(xs, ["start" if x == xs[0] else f"after {x}" for x in xs])
    ax.set_ylabel("accuracy")
    top = max([1e-9, *hi, first.get("chance") or 0.0, *(c[1] for c in pci)])
    ax.set_ylim(0, min(1.05, top * 1.15))
    ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    ax.set_title("Student accuracy by iteration")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def nodes_figure(paired: dict[str, Any], max_nodes: int = 24, max_depth: int = 2) -> bytes | None:
    """Per tree node: accuracy before (grey) and after (blue) with intervals, and the node's chance level."""
    before, after = paired["before"].get("by_node", {}), paired["after"].get("by_node", {})
    nodes = [n for n, blk in after.items() if blk["depth"] <= max_depth and n in before]
    if not nodes:
        return None
    if len(nodes) > max_nodes:  # keep the most populated, in tree order
        keep = set(sorted(nodes, key=lambda n: -after[n]["n"])[:max_nodes])
        nodes = [n for n in nodes if n in keep]
    fig = _figure(7.5, 0.8 + 0.32 * len(nodes))
    ax = fig.add_subplot()
    ys = list(range(len(nodes)))[::-1]
    for offset, blocks, color, label in ((0.15, before, "0.55", "before"), (-0.15, after, "tab:blue", "after")):
        acc = [blocks[n]["accuracy"] for n in nodes]
        err = _errors(acc, [blocks[n]["ci95"] for n in nodes])
        ax.errorbar(acc, [y + offset for y in ys], xerr=err, fmt="o", color=color, capsize=2, markersize=4, label=label)
    ax.scatter([after[n]["chance"] for n in nodes], ys, marker="|", s=160, color="tab:red", label="chance", zorder=3)
    labels = [f"{'· ' * after[n]['depth']}{n.rsplit('/', 1)[-1]} (n={after[n]['n']})" for n in nodes]
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    ax.set_xlabel("accuracy (95% interval)")
    ax.set_title("Accuracy per ability node: start of the run vs now")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def acceptance_figure(run: RunResults) -> bytes | None:
    """Generated items per iteration: accepted, and rejected by reason (in pipeline order)."""
    rows = [(it.number, it.summary("validate")) for it in run.iterations if "validate" in it.stages]
    if not rows:
        return None
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    xs = [n for n, _ in rows]
    accepted = [s.get("accepted", 0) for _, s in rows]
    ax.bar(xs, accepted, color="tab:green", label="accepted")
    bottom = [float(a) for a in accepted]
    for reason, colour in zip(REJECTION_STAGES, REASON_COLOURS):
        counts = [s.get("rejected_by_stage", {}).get(reason, 0) for _, s in rows]
        if any(counts):
            ax.bar(xs, counts, bottom=bottom, color=colour, label=f"rejected: {reason}")
            bottom = [b + c for b, c in zip(bottom, counts)]
    for x, a, total in zip(xs, accepted, bottom):
        ax.annotate(f"{a}/{total:.0f} kept", (x, total), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [f"iteration {x}" for x in xs])
    ax.set_ylabel("generated items")
    ax.set_ylim(0, max(bottom + [1]) * 1.15)
    ax.set_title("Generated items: accepted and rejected by reason")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def time_figure(run: RunResults) -> bytes | None:
    """Seconds per stage, stacked per iteration."""
    rows = [it for it in run.iterations if it.stages]
    if not rows:
        return None
    from matplotlib import colormaps

    fig = _figure(6.4, 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]
    left = [0.0] * len(rows)
    colours = colormaps["tab10"]
    for i, stage in enumerate(STAGE_DIRS):
        secs = [float(it.summary(stage).get("seconds", 0.0)) for it in rows]
        ax.barh(ys, secs, left=left, color=colours(i), label=stage)
        left = [a + b for a, b in zip(left, secs)]
    for y, total in zip(ys, left):
        ax.annotate(f"{total:.0f} s", (total, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(ys, [f"iteration {it.number}" for it in rows])
    ax.set_xlabel("seconds (as measured when each stage ran)")
    ax.set_xlim(0, max(left + [1]) * 1.12)
    ax.set_title("Time per stage")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


# ------------------------------------------------------------------------------------------ content


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str  # file name in plots/
    png: bytes
    caption: str


Block = tuple[str, Any]  # ("h2" | "p" | "list", text or items) or ("table", Table) or ("figure", Figure)


def _stage_file(it: Iteration, name: str) -> Path:
    return it.path / STAGE_DIRS["evaluate"] / name


def adopted(it: Iteration) -> bool:
    """Whether the iteration's trained student was adopted (runs made before the gate: always)."""
    return bool(it.summary("gate").get("adopted", it.summary("evaluate").get("adopted", True)))


def gate_cell(it: Iteration) -> str:
    """The gate's decision and its dev evidence, for the iteration table."""
    g = it.summary("gate")
    if not g:
        return "–"
    if g.get("rule") == "off" or g.get("before") is None:
        return "adopted (no gate)" if g.get("rule") == "off" else "adopted (no dev split)"
    verdict = "adopted" if g["adopted"] else "REJECTED"
    return f"{verdict}: dev {fmt_pct(g['before'])} → {fmt_pct(g['after'])} (n={g['n']})"


def evaluations(run: RunResults, config: MetricsConfig) -> dict[int, dict[str, Any]]:
    """Each evaluated iteration's paired summary, recomputed from G_eval/before.jsonl and after.jsonl
    with ``config`` (so every figure of the report uses the same method); the stored summary where the
    files are from an older version."""
    out = {}
    for it in run.evaluated:
        try:
            before, after = (read_jsonl(_stage_file(it, f), Reply) for f in ("before.jsonl", "after.jsonl"))
            out[it.number] = paired_outcomes(outcomes(before), outcomes(after), config)
        except (ValueError, OSError) as e:
            logger.warning("iteration %d: using the stored evaluate summary (%s)", it.number, e)
            out[it.number] = it.summary("evaluate")
    return out


def run_paired(run: RunResults, config: MetricsConfig) -> dict[str, Any] | None:
    """Student before iteration 1 vs the newest student, paired on the eval items (nodes of the newest tree)."""
    evaluated = run.evaluated
    if not evaluated:
        return None
    try:
        before = read_jsonl(_stage_file(evaluated[0], "before.jsonl"), Reply)
        last = evaluated[-1]  # the student the run ends with: the last one the gate adopted
        after = read_jsonl(_stage_file(last, "after.jsonl" if adopted(last) else "before.jsonl"), Reply)
        node = {r.id: r.node for r in after}
        before = [r.model_copy(update={"node": node.get(r.id)}) for r in before]
        return paired_outcomes(outcomes(before), outcomes(after), config)
    except (ValueError, OSError) as e:  # a missing file, replies of an older version, or another eval set
        logger.warning("no comparison of the run's start and its newest student: %s", e)
        return None


def iteration_table(run: RunResults, evals: dict[int, dict[str, Any]] | None = None) -> Table:
    """One row per iteration; evaluation figures from ``evals`` (see ``evaluations``), else as stored."""
    headers = ["iter", "probe acc", "eval before [95% CI]", "eval after [95% CI]", "change [95% CI]", "p (bootstrap / McNemar)",
               "gate", "generated / parsed / accepted", "train items", "eval items/s", "time"]
    rows = []
    for it in run.iterations:
        ev = (evals or {}).get(it.number) or it.summary("evaluate")
        gen, val = it.summary("generate"), it.summary("validate")
        infer = it.summary("infer")
        rows.append([
            str(it.number),
            fmt_pct(infer.get("accuracy")),
            fmt_pct(ev.get("before", {}).get("accuracy")) + _interval(ev.get("before", {}).get("ci95")),
            fmt_pct(ev.get("after", {}).get("accuracy")) + _interval(ev.get("after", {}).get("ci95")),
            fmt_change(ev.get("delta"), ev.get("delta_ci95")),
            f"{fmt_p(ev.get('bootstrap_p'))} / {fmt_p(ev.get('mcnemar_p'))}" if "mcnemar_p" in ev else "–",
            gate_cell(it),
            f"{gen.get('requested', '–')} / {gen.get('parsed', '–')} / {val.get('accepted', '–')}",
            str(it.summary("label").get("items", "–")),
            f"{it.summary('evaluate')['items_per_s']:.1f}" if it.summary("evaluate").get("items_per_s") else "–",
            f"{sum(float(s.get('seconds', 0)) for s in it.stages.values()):.0f} s",
        ])
    return Table(headers, rows)


def data_table(run: RunResults) -> Table:
    """Per iteration: items asked for, parsed, accepted (and the share of those asked), rejections by reason."""
    rows = []
    for it in run.iterations:
        if "validate" not in it.stages:
            continue
        gen, val = it.summary("generate"), it.summary("validate")
        asked, accepted = gen.get("requested"), val.get("accepted", 0)
        by_reason = val.get("rejected_by_stage", {})
        rows.append([str(it.number), str(asked if asked is not None else "–"), str(gen.get("parsed", "–")), str(accepted),
                     fmt_pct(accepted / asked, 0) if asked else "–",
                     ", ".join(f"{r} {by_reason[r]}" for r in REJECTION_STAGES if by_reason.get(r)) or "–",
                     key_check(val)])
    return Table(["iter", "asked", "parsed", "accepted", "accepted / asked", "rejected by reason", "keys checked by"], rows)


def training_table(run: RunResults) -> Table | None:
    """Per iteration and node: the items the student was trained on, by part (generated by the teacher,
    targeted replay of weak nodes, rehearsal over all nodes), from E_teacher_logits/composition.json."""
    rows = []
    for it in run.iterations:
        path = it.path / STAGE_DIRS["label"] / "composition.json"
        if not path.is_file():
            continue
        for node, parts in _read_json(path).items():
            rows.append([str(it.number), node.split("/", 1)[-1] if "/" in node else node,
                         str(parts.get("generated", 0)), str(parts.get("replay", 0)), str(parts.get("rehearsal", 0))])
    return Table(["iter", "node", "generated", "targeted replay", "rehearsal"], rows) if rows else None


def key_check(validate_summary: dict) -> str:
    """What judged the keys besides the agents: the domain's verifier and its verdicts, or that none did
    (runs made before verifiers existed have no entry: "–")."""
    if "verifier" not in validate_summary:
        return "–"
    v = validate_summary["verifier"]
    if not v:
        return "no verifier (the agents alone)"
    return (f"{v['name']}: {v['right']} right, {v['wrong']} wrong ({v['rekeyed']} re-keyed, "
            f"{v['rejected']} rejected), {v['unknown']} unknown")


def tree_table(run: RunResults) -> Table | None:
    """Per iteration, the ability tree the analyze stage built from the probe replies: its size, the nodes
    the teacher diagnosed, the weakest nodes by probe accuracy and the child nodes its diagnoses grew."""
    rows = []
    for it in run.iterations:
        a = it.summary("analyze")
        if not a:
            continue
        weakest = "; ".join(f"{w['node'].rsplit('/', 1)[-1]} {fmt_pct(w.get('accuracy'), 0)}" for w in (a.get("weakest") or [])[:3])
        grown = "; ".join(f"{n.rsplit('/', 1)[-1]} (under {n.rsplit('/', 2)[-2]})" if n.count("/") >= 1 else n
                          for n in a.get("new_abilities") or [])
        rows.append([str(it.number), str(a.get("nodes", "–")), str(a.get("diagnosed_nodes", "–")), weakest or "–", grown or "–"])
    if not rows:
        return None
    return Table(["iter", "nodes", "diagnosed", "weakest at the probe", "child nodes grown (under)"], rows)


def time_table(run: RunResults) -> Table:
    rows = [[str(it.number), *(f"{it.stages[s]['seconds']:.1f}" if s in it.stages else "–" for s in STAGE_DIRS)]
            for it in run.iterations]
    return Table(["iter", *(f"{s} s" for s in STAGE_DIRS)], rows)


def _paired_rows(paired: dict[str, Any], group: str, names: Sequence[str], label: Any) -> list[list[str]]:
    rows = []
    for name in names:
        b, a, d = paired["before"][group][name], paired["after"][group][name], paired[group][name]
        rows.append([label(name), str(a["n"]), fmt_pct(a["chance"]), fmt_pct(b["accuracy"]) + _interval(b["ci95"]),
                     fmt_pct(a["accuracy"]) + _interval(a["ci95"]), fmt_change(d["delta"], d["delta_ci95"]),
                     f"{fmt_p(d['bootstrap_p'])} / {fmt_p(d['mcnemar_p'])}"])
    return rows


PAIRED_HEADERS = ["{}", "n", "chance", "start [95% CI]", "now [95% CI]", "change [95% CI]", "p (bootstrap / McNemar)"]


def report_blocks(run: RunResults, config: MetricsConfig = MetricsConfig(), max_depth: int = 2) -> list[Block]:
    """The report's content, rendered by ``to_markdown`` and ``to_html``."""
    c = run.config
    blocks: list[Block] = [("h1", f"atkd run: {run.root.name}")]
    facts = [f"domain `{c['domain']}`, teacher `{c.get('teacher')}`, student `{c.get('student')}`" if "domain" in c else None,
             f"iterations finished: {len(run.evaluated)} of {c.get('iterations', '?')}; probe {c.get('probe_size', '?')} items, "
             f"budget {c.get('budget', '?')} generated items per iteration" if c else None,
             f"intervals: {int(100 * config.confidence)}% "
             + (f"percentile bootstrap ({config.resamples} resamples, seed {config.seed}); Wilson score intervals for blocks "
                f"of fewer than {config.min_bootstrap_n} items or all right/all wrong" if config.interval == "bootstrap" else "Wilson score")
             + ("; p-values: paired bootstrap (– where fewer than " + f"{config.min_discordant} items changed) and exact McNemar"
                if config.interval == "bootstrap" else "; p-values: exact McNemar")
             + ", on the same items; chance = mean of 1/(number of options)"]
    blocks.append(("list", [f for f in facts if f]))
    if not run.iterations:
        blocks.append(("p", "No iteration has started yet."))
        return blocks
    evals = evaluations(run, config)
    blocks += [("h2", "Iterations"), ("table", iteration_table(run, evals))]
    chance = next((it.summary("evaluate").get("chance") for it in run.evaluated), None)
    if chance is not None:
        blocks.append(("p", f"Eval set: {run.evaluated[-1].summary('evaluate').get('n')} items, chance level {fmt_pct(chance)}. "
                            "Probe accuracy is on seed items (the probe set), measured at the start of each iteration."))
    if (png := accuracy_figure(run, config, evals)) is not None:
        blocks.append(("figure", Figure("accuracy_by_iteration.png", png,
                                        "Eval accuracy at the start and after each iteration (band: 95% interval); probe accuracy; chance (dotted).")))
    paired = run_paired(run, config)
    if paired is not None:
        first, last = run.evaluated[0].number, run.evaluated[-1].number
        blocks += [("h2", f"Start of the run vs after iteration {last}"),
                   ("p", f"The student entering iteration {first} and the student after iteration {last}, on the same "
                         f"{paired['n']} eval items: change {fmt_change(paired['delta'], paired['delta_ci95'])}, "
                         f"{paired['gained']} items gained and {paired['lost']} lost, p = {fmt_p(paired['bootstrap_p'])} "
                         f"(paired bootstrap) / {fmt_p(paired['mcnemar_p'])} (McNemar)."),
                   ("table", Table([h.format("source") for h in PAIRED_HEADERS],
                                   _paired_rows(paired, "by_source", list(paired["by_source"]), str)))]
        nodes = [n for n, blk in paired["by_node"].items() if blk["depth"] <= max_depth and n in paired["before"]["by_node"]]
        if nodes:
            blocks += [("h3", "Per ability node"),
                       ("table", Table([h.format("node") for h in PAIRED_HEADERS],
                                       _paired_rows(paired, "by_node", nodes,
                                                    lambda n: "· " * n.count("/") + n.rsplit("/", 1)[-1])))]
            if (png := nodes_figure(paired, max_depth=max_depth)) is not None:
                blocks.append(("figure", Figure("nodes_before_after.png", png,
                                                "Accuracy per node at the start (grey) and now (blue), 95% intervals; red tick: chance.")))
    if (tree := tree_table(run)) is not None:
        blocks += [("h2", "Ability tree"),
                   ("p", ("Built at the start of each iteration from the student's probe replies; the teacher diagnoses the "
                          "nodes the student misses, and a diagnosis that names a narrower skill grows a child node. "
                          "The tree of iteration N, as a picture: `iteration_N/B_student_tree/tree.html`.")),
                   ("table", tree)]
    if (png := acceptance_figure(run)) is not None:
        blocks += [("h2", "Generated data"), ("table", data_table(run)),
                   ("figure", Figure("acceptance.png", png, "Items the teacher was asked for: accepted, and rejected at each gate."))]
    if (training := training_table(run)) is not None:
        blocks += [("h2", "Training data per node"),
                   ("p", "What the student was trained on in each iteration, per node of the tree: items the teacher "
                         "generated and validation accepted, seed items replayed for the weakest nodes, and rehearsal "
                         "items spread over every node (after the teacher's worked solutions that miss the key are set aside)."),
                   ("table", training)]
    blocks += [("h2", "Time"), ("table", time_table(run))]
    if (png := time_figure(run)) is not None:
        blocks.append(("figure", Figure("stage_time.png", png, "Seconds per stage, as measured when each stage ran (resumed stages keep their first time).")))
    blocks.append(("p", "The gate: a trained student is adopted only where the dev split (model selection only) finds it "
                        "no worse than the student before it (the rule: the run's --gate options); a rejected one stays on "
                        "disk in F_student_model and the next iteration starts from the student before it."))
    blocks.append(("p", "Stage outputs are in `iteration_N/A_student_reply` … `G_eval` (see docs/run_dir.md)."))
    return blocks


# ------------------------------------------------------------------------------------------ rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: Sequence[Block]) -> str:
    lines: list[str] = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + value, ""]
        elif kind == "p":
            lines += [value, ""]
        elif kind == "list":
            lines += [f"- {v}" for v in value] + [""]
        elif kind == "table":
            lines += ["| " + " | ".join(map(_md_cell, value.headers)) + " |", "|" + "---|" * len(value.headers)]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in value.rows] + [""]
        elif kind == "figure":
            lines += [f"![{value.caption}](plots/{value.name})", "", f"*{value.caption}*", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only markup the blocks use)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left;white-space:pre}img{max-width:100%}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}code{background:#f3f3f3;padding:0 3px}"""


def to_html(blocks: Sequence[Block]) -> str:
    """One file, images embedded as data URIs: it opens offline and can be mailed or attached."""
    title = next((v for k, v in blocks if k == "h1"), "atkd report")
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_inline(value)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(value)}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(v)}</li>" for v in value) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in value.headers)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in value.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode(value.png).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(value.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(value.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, config: MetricsConfig = MetricsConfig()) -> Path:
    """Write report.md, report.html and plots/*.png for the run in ``run_dir`` (into ``out_dir``, default the run)."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.root
    blocks = report_blocks(run, config)
    for kind, value in blocks:
        if kind == "figure":
            atomic_write_bytes(out / "plots" / value.name, value.png)
    atomic_write_text(out / "report.md", to_markdown(blocks))
    path = atomic_write_text(out / "report.html", to_html(blocks))
    logger.info("wrote %s, report.md and %d plots", path, sum(k == "figure" for k, _ in blocks))
    return path
