"""tree diff: P(B > A) against a float64 Monte Carlo reference, verdicts, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from tree import AbilityTree
from tree.__main__ import main
from tree.diff import diff_trees
from tree.posterior import prob_greater


@pytest.mark.parametrize("cb, nb, ca, na", [(0, 0, 0, 0), (3, 5, 2, 5), (40, 50, 25, 50), (1, 10, 9, 10), (7, 7, 0, 3), (120, 400, 100, 400)])
def test_prob_greater_matches_monte_carlo(cb, nb, ca, na):
    rng = np.random.default_rng(0)
    draws = 2_000_000
    b = rng.beta(1 + cb, 1 + nb - cb, draws)
    a = rng.beta(1 + ca, 1 + na - ca, draws)
    assert prob_greater(cb, nb, ca, na) == pytest.approx(float(np.mean(b > a)), abs=2e-3)


def test_prob_greater_symmetry_and_checks():
    assert prob_greater(5, 10, 5, 10) == pytest.approx(0.5, abs=1e-12)
    assert prob_greater(8, 10, 3, 10) + prob_greater(3, 10, 8, 10) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="correct"):
        prob_greater(6, 5, 0, 1)


def two_iterations() -> AbilityTree:
    t = AbilityTree("med")
    for node in ("med/cardio", "med/renal", "med/derm"):
        t.add_ability(node)
    results_1 = [(f"c{i}", "med/cardio", i < 10) for i in range(40)] + [(f"r{i}", "med/renal", i < 30) for i in range(40)]
    results_1 += [(f"d{i}", "med/derm", i < 1) for i in range(2)]
    results_2 = [(f"c{i}", "med/cardio", i < 30) for i in range(40)] + [(f"r{i}", "med/renal", i < 10) for i in range(40)]
    results_2 += [(f"d{i}", "med/derm", i < 2) for i in range(2)]
    t.record(results_1, iteration=1)
    t.record(results_2, iteration=2)
    return t


def test_diff_verdicts():
    t = two_iterations()
    other = AbilityTree("med")
    other.add_ability("med/cardio")
    other.add_ability("med/neuro")
    changes = {c.node: c for c in diff_trees(t, t, iteration_a=1, iteration_b=2)}
    assert changes["med/cardio"].verdict == "improved" and changes["med/cardio"].delta > 0.4
    assert changes["med/renal"].verdict == "fell"
    assert changes["med/derm"].verdict == "unclear"  # 1/2 → 2/2 is not evidence
    order = [c.node for c in diff_trees(t, t, iteration_a=1, iteration_b=2)]
    assert order[0] == "med/cardio" and order[-1] == "med/renal"
    across = {c.node: c.verdict for c in diff_trees(t, other)}
    assert across["med/neuro"] == "added" and across["med/renal"] == "removed"
    with pytest.raises(ValueError, match="confidence"):
        diff_trees(t, t, confidence=0.4)


def test_cli_diff(tmp_path, capsys):
    t = two_iterations()
    t.save(tmp_path / "t.json")
    assert main(["diff", str(tmp_path / "t.json"), str(tmp_path / "t.json"), "--iteration-a", "1", "--iteration-b", "2"]) == 0
    out = capsys.readouterr().out
    assert "improved" in out and "fell" in out and "+47.6 pt" in out  # posterior means 11/42 → 31/42
    assert "1 improved, 1 fell" in out
    assert main(["diff", str(tmp_path / "t.json"), str(tmp_path / "missing.json")]) == 2
