"""The ability tree: build it from items, record per-node accuracy, allocate generation, export it."""

from tree.ability_tree import AbilityTree, NodeStats, TreeError, split_path
from tree.allocate import AllocationConfig, allocate
from tree.diagnose import DiagnoseConfig, diagnose, parse_diagnoses
from tree.export import export, write_graphml
from tree.posterior import Posterior, beta_cdf, beta_posterior, beta_ppf, expected_shortfall

__all__ = [
    "AbilityTree",
    "AllocationConfig",
    "DiagnoseConfig",
    "NodeStats",
    "Posterior",
    "TreeError",
    "allocate",
    "beta_cdf",
    "beta_posterior",
    "beta_ppf",
    "diagnose",
    "export",
    "parse_diagnoses",
    "expected_shortfall",
    "split_path",
    "write_graphml",
]
