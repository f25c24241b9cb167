"""Synthesis: the teacher writes MCQs for the weakest ability-tree nodes, two agents (a blind solver and a
critic) cross-validate them behind schema, duplicate, near-duplicate and contamination gates, and the
accepted items get their answer letters evened out. ``python -m synth generate | validate``."""

from synth.generate import GenerationResult, NodeBrief, SynthConfig, generate_items
from synth.targets import node_briefs, node_exemplars
from synth.validate import (
    ValidationConfig,
    ValidationResult,
    unparsed_requests,
    validate_items,
)

__all__ = [
    "GenerationResult",
    "NodeBrief",
    "SynthConfig",
    "ValidationConfig",
    "ValidationResult",
    "generate_items",
    "node_briefs",
    "node_exemplars",
    "unparsed_requests",
    "validate_items",
]
