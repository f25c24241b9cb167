"""MCQ evaluation: batched scoring (option log-probs or generation), answer extraction, metrics with CIs."""

from prompts.extract import extract_answer
from eval.mcq import ScoreResult, score_items
from eval.metrics import node_results, paired_summary, summarize, wilson_interval, write_metrics
from eval.records import Reply

__all__ = [
    "Reply",
    "ScoreResult",
    "extract_answer",
    "node_results",
    "paired_summary",
    "score_items",
    "summarize",
    "wilson_interval",
    "write_metrics",
]
