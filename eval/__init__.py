"""MCQ evaluation: batched scoring (option log-probs or generation), metrics with bootstrap intervals and
paired tests, comparisons, and the report of a loop run (docs/eval.md)."""

from prompts.extract import extract_answer
from eval.mcq import ScoreResult, assign_nodes, score_items
from eval.metrics import (
    MetricsConfig,
    bootstrap_interval,
    node_results,
    paired_bootstrap,
    paired_summary,
    summarize,
    wilson_interval,
    write_metrics,
)
from data.records import Reply

__all__ = [
    "MetricsConfig",
    "Reply",
    "ScoreResult",
    "assign_nodes",
    "bootstrap_interval",
    "extract_answer",
    "node_results",
    "paired_bootstrap",
    "paired_summary",
    "score_items",
    "summarize",
    "wilson_interval",
    "write_metrics",
]
