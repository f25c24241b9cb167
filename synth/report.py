"""The generate + validate report as tables a person reads: per node, per rejection reason, answer positions."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from data.run_layout import REJECTION_STAGES


def _short(node: str) -> str:
    return node.rsplit("/", 1)[-1]


def node_table(report: dict[str, Any]) -> Table:
    """Per target node: requested, parsed, candidates validated, accepted, acceptance rate, rejections."""
    gen = report.get("generation", {}).get("per_node", {})
    val = report["validation"]["per_node"]
    table = Table(title="generated items per node")
    for col in ("node", "requested", "parsed", "validated", "accepted", "rate", "rejected by stage"):
        table.add_column(col, justify="left" if col in ("node", "rejected by stage") else "right")
    for node in [*gen, *(n for n in val if n not in gen)]:
        g, v = gen.get(node, {}), val.get(node, {"candidates": 0, "accepted": 0, "rejected": {}})
        rate = f"{v['accepted'] / v['candidates']:.0%}" if v["candidates"] else "–"
        rejected = ", ".join(f"{stage} {n}" for stage, n in sorted(v["rejected"].items(), key=lambda kv: REJECTION_STAGES.index(kv[0])))
        table.add_row(_short(node), str(g.get("requested", "–")), str(g.get("parsed", "–")), str(v["candidates"]),
                      str(v["accepted"]), rate, rejected or "–")
    return table


def reason_table(report: dict[str, Any]) -> Table:
    """Rejections per reason over everything requested or added, with the share of the whole."""
    val = report["validation"]
    counts = {"parse": report.get("unparsed_requests", 0), **val["rejected_by_stage"]}
    total = counts["parse"] + val["candidates"]
    table = Table(title=f"rejected, by reason (of {total} requested or added)")
    for col in ("reason", "items", "share"):
        table.add_column(col, justify="left" if col == "reason" else "right")
    for stage in REJECTION_STAGES:
        n = counts.get(stage, 0)
        table.add_row(stage, str(n), f"{n / total:.0%}" if total else "–")
    table.add_row("[bold]accepted[/]", f"[bold]{val['accepted']}[/]", f"{val['accepted'] / total:.0%}" if total else "–")
    return table


def positions_table(report: dict[str, Any]) -> Table | str:
    """Key letters of the accepted items before and after rebalancing, with χ² against uniform."""
    pos = report["validation"]["answer_positions"]
    before, after = pos["before"], pos["after"]
    if not before["n"]:
        return "answer positions: no accepted items"

    def test(b: dict[str, Any]) -> str:
        return "–" if b["p_value"] is None else f"χ²={b['chi2']:.2f}, df={b['df']}, p={b['p_value']:.3g}"

    table = Table(title=f"answer positions of accepted items ({pos['moved']} moved, {pos['position_bound']} position-bound kept)")
    for col in ("", *before["counts"]):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("expected", *(f"{v:.1f}" for v in before["expected"].values()))
    table.add_row(f"as written  ({test(before)})", *map(str, before["counts"].values()))
    table.add_row(f"rebalanced  ({test(after)})", *map(str, after["counts"].values()))
    return table


def summary_line(report: dict[str, Any]) -> str:
    val, sec, ipm = report["validation"], report["seconds"], report["items_per_minute"]
    requested = report.get("generation", {}).get("requested")
    head = f"requested {requested}, " if requested is not None else ""
    v = val.get("verifier")
    checked = (f"; verifier {v['name']}: {v['right']} keys right, {v['wrong']} wrong ({v['rekeyed']} re-keyed), {v['unknown']} unknown"
               if v else "; no verifier: keys judged by the agents alone")
    return (
        f"{head}candidates {val['candidates']}, accepted {val['accepted']} ({val['acceptance_rate']:.0%} of candidates); "
        f"{sec['total']:.0f} s (generate {sec.get('generate', 0):.0f} s, validate {sec['validate']:.0f} s): "
        f"{ipm['candidates']:.1f} candidates/min, {ipm['accepted']:.1f} accepted/min{checked}"
    )


__all__ = ["node_table", "reason_table", "positions_table", "summary_line"]
