"""synth.positions: χ² against uniform answer positions, and rebalancing that keeps every item's meaning."""

from __future__ import annotations

import math

import pytest

from synth.positions import answer_balance, chi2_sf, is_position_bound, move_key, rebalance_answers
from data.records import MCQItem


@pytest.mark.parametrize(
    "x, df, p",
    [  # critical values of the chi-square distribution (any statistics table)
        (3.841458820694124, 1, 0.05), (6.6348966010212145, 1, 0.01), (5.991464547107979, 2, 0.05),
        (7.814727903251178, 3, 0.05), (11.344866730144373, 3, 0.01), (9.487729036781154, 4, 0.05),
        (0.7107230213973241, 4, 0.95), (18.307038053275146, 10, 0.05), (0.0, 3, 1.0),
    ],
)
def test_chi2_survival_matches_tables(x, df, p):
    assert chi2_sf(x, df) == pytest.approx(p, rel=1e-9, abs=1e-12)


def test_chi2_survival_closed_form_for_two_degrees_of_freedom():
    for x in (0.1, 1.0, 4.0, 30.0, 200.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)


def item(id_: str, options: list[str], key: str = "A") -> MCQItem:
    return MCQItem(id=id_, question=f"Question {id_}?", options={chr(65 + i): t for i, t in enumerate(options)}, answer_idx=key)


def test_balance_of_mixed_option_counts():
    items = [item("a", ["1", "2", "3", "4"]), item("b", ["1", "2", "3", "4"]), item("c", ["1", "2", "3", "4", "5"], "E")]
    balance = answer_balance(items)
    assert balance["counts"] == {"A": 2, "B": 0, "C": 0, "D": 0, "E": 1}
    assert balance["expected"] == {"A": 0.7, "B": 0.7, "C": 0.7, "D": 0.7, "E": 0.2}
    expected = {"A": 0.7, "B": 0.7, "C": 0.7, "D": 0.7, "E": 0.2}
    chi2 = sum((balance["counts"][k] - e) ** 2 / e for k, e in expected.items())
    assert balance["chi2"] == pytest.approx(chi2, abs=1e-4) and balance["df"] == 4
    assert balance["p_value"] == pytest.approx(chi2_sf(chi2, 4), rel=1e-3)
    assert answer_balance([])["p_value"] is None


@pytest.mark.parametrize(
    "options, bound",
    [
        (["Atria", "Ventricles", "Valves", "All of the above"], True),
        (["Atria", "Ventricles", "Both A and B", "Neither"], True),
        (["x", "y", "A, B and C", "none"], True),
        (["x", "y", "Option C", "z"], True),
        (["x", "y", "None of these", "z"], True),
        (["Vitamin A and D", "Vitamin K", "Iron", "Zinc"], True),  # read as a reference: kept in place, harmless
        (["Type A personality", "Hepatitis B", "a dog and a cat", "Vitamin K"], False),
        (["A-B", "x", "y", "z"], False),
        (["Hepatitis E and F", "x", "y", "z"], False),  # E and F are not options of a four-option item
    ],
)
def test_position_bound_options(options, bound):
    assert is_position_bound(item("x", options)) is bound


def test_move_key_swaps_two_texts_and_keeps_the_rest():
    original = item("x", ["right", "w1", "w2", "w3"])
    moved = move_key(original, "C")
    assert moved.options == {"A": "w2", "B": "w1", "C": "right", "D": "w3"} and moved.answer_idx == "C"
    assert original.answer_idx == "A"  # a copy
    with pytest.raises(ValueError, match="no option 'E'"):
        move_key(original, "E")


def test_rebalance_evens_out_and_is_deterministic():
    items = [item(f"i{n}", [f"r{n}", f"a{n}", f"b{n}", f"c{n}"]) for n in range(20)]
    out, moves = rebalance_answers(items, seed=7)
    assert [it.id for it in out] == [it.id for it in items]
    counts = answer_balance(out)["counts"]
    assert sorted(counts.values()) == [5, 5, 5, 5]
    assert len(moves) == 15 and all(src == "A" for src, _ in moves.values())
    for before, after in zip(items, out):
        assert after.options[after.answer_idx] == before.options[before.answer_idx]
    assert rebalance_answers(items, seed=7) == (out, moves)
    assert rebalance_answers(items, seed=8)[1] != moves  # the seed decides which items move


def test_rebalance_moves_nothing_that_is_already_balanced():
    items = [item(f"i{n}", ["p", "q", "r", "s"], "ABCD"[n % 4]) for n in range(8)]
    out, moves = rebalance_answers(items, seed=0)
    assert moves == {} and out == items
