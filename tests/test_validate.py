"""synth.validate and synth.dedup: every gate triggered by a planted item, acceptance rules, shuffling.

The solver and critic are scripted engines: they only decide what the agents "said" so that control
flow (which gate fires, what reaches the agents, one batched call each) can be checked exactly.
"""

from __future__ import annotations

import math

import pytest

from data.text import normalize_text, word_tokens
from synth.dedup import ContaminationIndex, DuplicateIndex, exact_key, jaccard, ngrams
from data.records import GeneratedItem, MCQItem
from synth.validate import ValidationConfig, shuffle_options, solve_blind, solver_verdict, validate_items
from tests.fixtures.scripted_engine import ScriptedEngine, shown_options, user_text


def gen(id_: str, question: str, options: list[str], key: str = "A", node: str = "n1") -> GeneratedItem:
    return GeneratedItem(
        id=id_, question=question, options={chr(65 + i): t for i, t in enumerate(options)},
        answer_idx=key, target_node=node, generator="teacher",
    )


SEEDS = [
    MCQItem(id="seed-0", question="Which nerve innervates the deltoid muscle in the shoulder region?",
            options={"A": "Axillary nerve", "B": "Radial nerve", "C": "Median nerve", "D": "Ulnar nerve"}, answer_idx="A"),
    MCQItem(id="seed-1", question="Which vitamin deficiency causes scurvy?",
            options={"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K"}, answer_idx="B"),
]
EVAL = [
    MCQItem(id="eval-7", question="A 45-year-old woman presents with fatigue, weight gain, cold intolerance and dry skin over the last six months; which laboratory test is most appropriate first?",
            options={"A": "TSH", "B": "Cortisol", "C": "Glucose", "D": "Ferritin"}, answer_idx="A"),
]

GOOD = gen("g-good", "Which organ produces insulin?", ["Pancreas", "Liver", "Spleen", "Kidney"], "A")
GOOD5 = gen("g-good5", "Which blood cells carry oxygen to tissues?", ["Erythrocytes", "Neutrophils", "Platelets", "Lymphocytes", "Monocytes"], "A", node="n2")
SOLVER_NO = gen("g-solver", "What is the normal adult resting heart rate range?", ["60-100 bpm", "20-40 bpm", "120-160 bpm", "180-220 bpm"], "B", node="n2")
CRITIC_NO = gen("g-critic", "Which bone is the longest in the human body?", ["Femur", "Tibia", "Humerus", "Fibula"], "A")
PLANTED = {
    "schema_3_options": gen("g-three", "Which gas do lungs exhale mostly?", ["CO2", "O2", "N2"], "A"),
    "schema_same_texts": gen("g-same", "Which drug is an NSAID?", ["Aspirin", "aspirin.", "Insulin", "Heparin"], "A"),
    "schema_dict": {"id": "g-dict", "question": "Q?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "A"},
    "batch_duplicate": gen("g-copy", "which organ produces INSULIN", ["Kidney", "Spleen", "Liver", "Pancreas"], "D"),
    "seed_exact": gen("g-seed-exact", SEEDS[1].question, ["Vitamin K", "Vitamin D", "Vitamin C", "Vitamin A"], "C"),
    "seed_near": gen("g-seed-near", "So, which nerve innervates the deltoid muscle in the shoulder region?",
                     ["Axillary nerve", "Radial nerve", "Median nerve", "Ulnar nerve"], "A"),
    "contaminated": gen("g-contam", "In clinic, fatigue, weight gain, cold intolerance and dry skin over the last six months suggest which diagnosis?",
                        ["Hypothyroidism", "Cushing syndrome", "Diabetes", "Anaemia"], "A"),
}
CANDIDATES = [GOOD, *PLANTED.values(), SOLVER_NO, CRITIC_NO, GOOD5]
HEART = gen("g-x", "Which chamber of the heart pumps blood to the aorta?", ["Left ventricle", "Right atrium", "Left atrium", "Right ventricle"], "A")


def solver_pick(prompt) -> str:
    """The solver picks the key's text, except for SOLVER_NO where it picks option A's text."""
    text = user_text(prompt)
    for item in CANDIDATES:
        if isinstance(item, GeneratedItem) and item.question in text:
            return item.options["A"] if item is SOLVER_NO else item.options[item.answer_idx]
    raise AssertionError(f"solver saw an unexpected item: {text[:80]}")


def critic_reply(prompt) -> str:
    """Continues the prefill '{"verdict": "'."""
    if CRITIC_NO.question in user_text(prompt):
        return 'reject", "reason": "Two options could be correct."}'
    return 'accept", "reason": "Clear single best answer."}'


def run(candidates=CANDIDATES, config: ValidationConfig | None = None, critic=None):
    solver = ScriptedEngine(pick=solver_pick, name="solver")
    critic = critic or ScriptedEngine(reply=critic_reply, name="critic")
    result = validate_items(candidates, solver=solver, critic=critic, seed_pool=SEEDS, eval_items=EVAL, config=config)
    return result, solver, critic


def test_every_gate_fires_on_its_planted_item():
    result, solver, critic = run()
    stage = {r["id"]: r["stage"] for r in result.rejected}
    assert stage == {
        "g-three": "schema", "g-same": "schema", "g-dict": "schema",
        "g-copy": "duplicate", "g-seed-exact": "duplicate", "g-seed-near": "near_duplicate",
        "g-contam": "contamination", "g-solver": "solver", "g-critic": "critic",
    }
    reason = {r["id"]: r["reason"] for r in result.rejected}
    assert "3 options" in reason["g-three"]
    assert "A, B have the same text" in reason["g-same"]
    assert "target_node" in reason["g-dict"]
    assert reason["g-copy"] == "exact duplicate of g-good (batch)"
    assert reason["g-seed-exact"] == "exact duplicate of seed-1 (seed pool)"
    assert reason["g-seed-near"].startswith("near duplicate of seed-0 (seed pool): ROUGE-L 0.9")
    assert "eval-7" in reason["g-contam"] and "13-gram" in reason["g-contam"]
    assert reason["g-solver"] == "solver votes for the key B: 0 of 1 (needs 1; picks A)"
    assert reason["g-critic"] == "Two options could be correct."
    assert [it.id for it in result.accepted] == ["g-good", "g-good5"]
    rejected = {r["id"]: r for r in result.rejected}
    assert rejected["g-solver"]["solver_votes"] == [{"solver": "solver", "pick": "A", "prob_key": pytest.approx(math.exp(-4) / (math.exp(-0.1) + 3 * math.exp(-4)), abs=1e-4), "order": rejected["g-solver"]["solver_votes"][0]["order"], "raw": rejected["g-solver"]["solver_votes"][0]["raw"]}]
    raw = rejected["g-solver"]["solver_votes"][0]["raw"].split()  # each shown letter's log-prob, for the audit
    assert [r[0] for r in raw] == list("ABCD") and sum(r.endswith(":-0.100") for r in raw) == 1


def test_agents_see_only_survivors_in_one_batched_call_each():
    result, solver, critic = run()
    survivors = ["g-good", "g-solver", "g-critic", "g-good5"]
    assert [c[0] for c in solver.calls] == ["choice_logprobs"]
    assert [c[0] for c in critic.calls] == ["generate"]
    _, solver_prompts, letters = solver.calls[0]
    assert letters == tuple("ABCDE")  # widest item in the batch has 5 options
    assert len(solver_prompts) == len(critic.calls[0][1]) == len(survivors)
    assert [d["id"] for d in result.decisions] == survivors
    # Blind: the solver's prompt holds neither the key nor the word "Key", and ends in the answer prefix.
    assert all("Key" not in user_text(p) and p[-1]["role"] == "assistant" for p in solver_prompts)
    assert "Key: A" in user_text(critic.calls[0][1][0])
    assert critic.calls[0][2].json_schema["properties"]["verdict"]["enum"] == ["accept", "reject"]


def test_report_counts_per_node_and_stage():
    result, _, _ = run()
    report = result.report
    assert report["candidates"] == len(CANDIDATES) and report["accepted"] == 2
    assert report["acceptance_rate"] == pytest.approx(2 / len(CANDIDATES))
    assert report["rejected_by_stage"] == {"schema": 3, "duplicate": 2, "near_duplicate": 1, "contamination": 1, "verifier": 0, "solver": 1, "critic": 1}
    assert report["per_node"]["n2"] == {"candidates": 2, "accepted": 1, "rejected": {"solver": 1}, "acceptance_rate": 0.5}
    assert report["reached_agents"] == 4 and report["solver_passed"] == 3 and report["critic_accepted"] == 3
    positions = report["answer_positions"]
    assert positions["before"]["counts"] == {"A": 2, "B": 0, "C": 0, "D": 0, "E": 0}
    assert max(positions["after"]["counts"].values()) == 1 and positions["moved"] == 1
    assert positions["after"]["chi2"] < positions["before"]["chi2"]
    assert sum(r["candidates"] for r in report["per_node"].values()) == len(CANDIDATES)


@pytest.mark.parametrize(
    "rule, solver_agrees, critic_accepts, kept, stage",
    [
        ("both", True, True, True, None),
        ("both", True, False, False, "critic"),
        ("both", False, True, False, "solver"),
        ("both", False, False, False, "solver"),
        ("solver", True, False, True, None),
        ("solver", False, True, False, "solver"),
        ("critic", False, True, True, None),
        ("critic", True, False, False, "critic"),
    ],
)
def test_acceptance_rules(rule, solver_agrees, critic_accepts, kept, stage):
    item = HEART
    solver = ScriptedEngine(pick=lambda p: "Left ventricle" if solver_agrees else "Right atrium")
    verdict = "accept" if critic_accepts else "reject"
    critic = ScriptedEngine(reply=lambda p: f'{verdict}", "reason": "scripted {verdict}"}}')
    result = validate_items([item], solver=solver, critic=critic, config=ValidationConfig(acceptance=rule))
    assert (len(result.accepted) == 1) is kept
    if not kept:
        assert result.rejected[0]["stage"] == stage
        if rule == "both" and not solver_agrees and not critic_accepts:
            assert "critic: scripted reject" in result.rejected[0]["reason"]
    # Only the agents a rule needs are asked.
    assert bool(solver.calls) is (rule in ("both", "solver"))
    assert bool(critic.calls) is (rule in ("both", "critic"))


def test_a_rule_without_its_engine_is_an_error():
    with pytest.raises(ValueError, match="needs a critic"):
        validate_items([GOOD], solver=ScriptedEngine(pick=solver_pick), critic=None)
    result = validate_items([GOOD], solver=ScriptedEngine(pick=solver_pick), critic=None, config=ValidationConfig(acceptance="solver"))
    assert [it.id for it in result.accepted] == ["g-good"]


@pytest.mark.parametrize("policy, kept", [("reject", False), ("accept", True)])
def test_unparseable_critic_output_is_a_defined_outcome(policy, kept):
    critic = ScriptedEngine(reply=lambda p: "This question looks great to me!")
    result, _, _ = run([GOOD], ValidationConfig(critic_unparseable=policy), critic=critic)
    assert (len(result.accepted) == 1) is kept
    assert result.decisions[0]["critic_parsed"] is False
    assert result.decisions[0]["critic_reason"].startswith("critic output unparseable:")
    if not kept:
        assert result.rejected[0]["stage"] == "critic"
        assert result.rejected[0]["reason"].startswith("critic output unparseable: truncated")
    assert result.report["critic_unparseable"] == 1


def test_shuffle_is_deterministic_and_maps_back():
    options = {"A": "one", "B": "two", "C": "three", "D": "four", "E": "five"}
    orders = set()
    for seed in range(20):
        shown, order = shuffle_options(options, f"{seed}:item-1")
        assert (shown, order) == shuffle_options(options, f"{seed}:item-1")
        assert sorted(order) == list(options) and list(shown) == list("ABCDE")
        assert all(shown[chr(65 + i)] == options[orig] for i, orig in enumerate(order))
        orders.add(tuple(order))
    assert len(orders) > 5  # the seed matters


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_solver_pick_is_mapped_back_to_original_letters(seed):
    items = [gen(f"g{i}", f"Question number {i} about organs?", [f"opt{i}-{j}" for j in range(4)], key) for i, key in enumerate("ABCDDCBA")]
    solver = ScriptedEngine(pick=lambda p: next(it.options[it.answer_idx] for it in items if it.question in user_text(p)))
    votes = solve_blind(solver, items, seed)
    assert [len(v) for v in votes] == [1] * len(items)
    assert [v[0].pick for v in votes] == [it.answer_idx for it in items]
    assert all(v[0].prob_key > 0.9 and v[0].solver == "scripted" for v in votes)
    prompts = solver.calls[0][1]
    assert any(shown_options(p) != dict(it.options) for p, it in zip(prompts, items))  # really shuffled


def test_dedup_primitives():
    assert normalize_text("  Vitamin-C, (ascorbic)  ACID! ") == "vitamin c ascorbic acid"
    assert word_tokens("Na_Cl 5mg") == ["na", "cl", "5mg"]
    assert ngrams(["a", "b"], 3) == {("a", "b")} and ngrams([], 3) == set()
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert exact_key("Q?", {"A": "x", "B": "y"}) == exact_key("q", {"A": "Y", "B": "x."})
    index = DuplicateIndex(n=3, threshold=0.7)
    index.add_items(SEEDS)
    assert index.nearest(SEEDS[0].question, SEEDS[0].options).score == 1.0
    assert index.nearest("Completely unrelated text about renal physiology", {"A": "x", "B": "y"}) is None
    with pytest.raises(ValueError):
        DuplicateIndex(threshold=0.0)
    contamination = ContaminationIndex(EVAL, n=13)
    assert contamination.match("weight gain, cold intolerance and dry skin over the last six months", {}) is None  # 12 words
    short = ContaminationIndex([MCQItem(id="e", question="Short one?", options={"A": "x", "B": "y"}, answer_idx="A")])
    assert short.match("short one", {"A": "X", "B": "Y"}) == ("e", "short one x y")


def first_shown(prompt) -> str:
    """A solver with a pure position bias: it always picks whatever option is shown first."""
    return shown_options(prompt)["A"]


def test_samples_are_rotations_so_each_option_is_shown_first_once():
    solver = ScriptedEngine(pick=first_shown)
    votes = solve_blind(solver, [HEART], seed=3, samples=4)[0]
    assert len(solver.calls) == 1 and len(solver.calls[0][1]) == 4  # 4 presentations, one batched call
    assert sorted(v.pick for v in votes) == list("ABCD")  # the position-biased solver picks each once
    assert len({v.as_dict()["order"] for v in votes}) == 4


@pytest.mark.parametrize(
    "samples, min_votes, kept, reason",
    [
        (1, 0, None, None),  # 1 vote, shuffled: whether the first shown is the key depends on the shuffle
        (4, 0, False, "1 of 4 (needs 4"),  # unanimous: a pure position bias never passes
        (4, 2, False, "1 of 4 (needs 2"),
        (4, 1, True, None),  # k=1 of n=4: any one presentation picking the key is enough
    ],
)
def test_k_of_n_solver_samples(samples, min_votes, kept, reason):
    config = ValidationConfig(acceptance="solver", solver_samples=samples, solver_min_votes=min_votes)
    result = validate_items([HEART], solver=ScriptedEngine(pick=first_shown), critic=None, config=config)
    votes = result.decisions[0]["solver_votes"]
    assert len(votes) == samples
    if kept is None:
        kept = votes[0]["pick"] == "A"
    assert (len(result.accepted) == 1) is kept
    if reason:
        assert reason in result.rejected[0]["reason"]


@pytest.mark.parametrize("min_votes, kept", [(0, False), (1, True), (2, False)])
def test_several_solver_models_pool_their_votes(min_votes, kept):
    right = ScriptedEngine(pick=lambda p: "Left ventricle", name="family-a")
    wrong = ScriptedEngine(pick=lambda p: "Right atrium", name="family-b")
    config = ValidationConfig(acceptance="solver", solver_min_votes=min_votes)
    result = validate_items([HEART], solver=[right, wrong], critic=None, config=config)
    assert (len(result.accepted) == 1) is kept
    assert [v["solver"] for v in result.decisions[0]["solver_votes"]] == ["family-a", "family-b"]
    assert len(right.calls) == len(wrong.calls) == 1
    if not kept:
        assert result.rejected[0]["reason"].startswith(f"solver votes for the key A: 1 of 2 (needs {min_votes or 2}")


def test_more_votes_required_than_there_are_is_an_error():
    config = ValidationConfig(acceptance="solver", solver_samples=2, solver_min_votes=3)
    with pytest.raises(ValueError, match="solver_min_votes=3 exceeds the 2 votes"):
        validate_items([HEART], solver=ScriptedEngine(pick=first_shown), critic=None, config=config)


def test_critic_gets_no_prefill_from_an_engine_that_enforces_the_schema():
    critic = ScriptedEngine(reply=lambda p: '{"verdict": "reject", "reason": "Key is wrong."}')
    critic.enforces_json_schema = True
    result = validate_items([HEART], solver=None, critic=critic, config=ValidationConfig(acceptance="critic"))
    assert critic.calls[0][1][0][-1]["role"] == "user"  # no assistant prefill to continue
    assert result.rejected[0]["reason"] == "Key is wrong."


def test_accepted_answer_positions_are_rebalanced_without_changing_the_items():
    items = [gen(f"g{i}", f"Question {i} on cardiac physiology?", [f"right {i}", f"w{i}1", f"w{i}2", f"w{i}3"], "A") for i in range(8)]
    bound = gen("g-bound", "Which are cardiac chambers?", ["Atria", "Ventricles", "Valves", "Both A and B"], "D")
    solver = ScriptedEngine(pick=lambda p: next(it.options[it.answer_idx] for it in [*items, bound] if it.question in user_text(p)))
    result = validate_items([*items, bound], solver=solver, critic=None, config=ValidationConfig(acceptance="solver"))
    by_id = {it.id: it for it in result.accepted}
    assert by_id["g-bound"] == bound  # its options refer to positions: untouched
    for original in items:
        moved = by_id[original.id]
        assert moved.options[moved.answer_idx] == original.options["A"]  # the key's text is still the key
        assert sorted(moved.options.values()) == sorted(original.options.values())
    positions = result.report["answer_positions"]
    assert positions["before"]["counts"] == {"A": 8, "B": 0, "C": 0, "D": 1}
    assert sorted(positions["after"]["counts"].values()) == [2, 2, 2, 3]
    assert positions["before"]["p_value"] < 0.001 < 0.9 < positions["after"]["p_value"]
    assert positions["position_bound"] == 1 and positions["moved"] == 8 - positions["after"]["counts"]["A"]
    moved_decisions = [d for d in result.decisions if "answer_moved" in d]
    assert len(moved_decisions) == positions["moved"] and all(d["answer_moved"].startswith("A -> ") for d in moved_decisions)
    off = validate_items([*items, bound], solver=solver, critic=None, config=ValidationConfig(acceptance="solver", rebalance=False))
    assert off.report["answer_positions"]["moved"] == 0 and [it.answer_idx for it in off.accepted] == ["A"] * 8 + ["D"]


@pytest.mark.parametrize(
    "kwargs",
    [{"acceptance": "either"}, {"solver_samples": 0}, {"solver_min_votes": -1}, {"near_dup_metric": "cosine"}, {"min_options": 5, "max_options": 4}, {"near_dup_threshold": 1.5},
     {"critic_unparseable": "maybe"}, {"contamination_ngram": 0}, {"critic_temperature": -1}],
)
def test_config_range_checks(kwargs):
    with pytest.raises(ValueError):
        ValidationConfig(**kwargs)


def test_generate_mode_solver_reads_worked_replies_and_maps_letters_back():
    """A generate-mode domain's solver: one generate call over all presentations; a reply stating an
    option's text votes for it (in the item's own letters), one stating nothing votes for nothing."""
    items = [gen(f"g{i}", f"What is {i} plus {i}?", [str(2 * i), str(2 * i + 1), str(2 * i + 10), str(2 * i + 100)], key)
             for i, key in zip(range(1, 5), "ABCD")]

    def reply(prompt):
        i = next(k for k in range(1, 5) if f"What is {k} plus {k}?" in user_text(prompt))
        return "I am not sure." if i == 4 else f"{i} + {i} = {2 * i}. The answer is {2 * i}."

    solver = ScriptedEngine(reply=reply)
    votes = solve_blind(solver, items, seed=3, samples=2, mode="generate", max_new_tokens=64)
    assert len(solver.calls) == 1 and solver.calls[0][0] == "generate" and len(solver.calls[0][1]) == 8
    assert solver.calls[0][2].max_new_tokens == 64 and solver.calls[0][2].temperature == 0.0
    picks = [[v.pick for v in own] for own in votes]
    assert picks == [["A", "A"]] * 3 + [["", ""]]  # the stated sum is option A of each item, however shown
    assert [v.prob_key for v in votes[0]] == [1.0, 1.0] and [v.prob_key for v in votes[1]] == [0.0, 0.0]  # keys A, B
    assert solver_verdict(votes[0], "A", 0)[0] and not solver_verdict(votes[3], "D", 1)[0]


def test_solver_mode_is_checked():
    with pytest.raises(ValueError, match="solver_mode"):
        ValidationConfig(solver_mode="letters")


# ------------------------------------------------------------------------------- self-consistency


def vote(pick: str) -> "object":
    from synth.validate import SolverVote

    return SolverVote("s", pick, 0.0, list("ABCD"))


@pytest.mark.parametrize("picks, min_votes, min_share, passes", [
    ("AAAAA", 0, 0.0, True),   # default: every vote
    ("AAAAB", 0, 0.0, False),
    ("AAABB", 3, 0.0, True),   # 3 of 5
    ("AAABB", 0, 0.5, True),   # a share: ceil(0.5 x 5) = 3
    ("AABBC", 0, 0.4, False),  # 2 votes reach the share, but the key ties B: the majority is not the key
    ("AA-B-", 0, 0.4, True),   # unread replies vote for nothing; the key is the plurality answer
    ("ABCDB", 1, 0.0, True),   # k of n as asked: one vote is enough
    ("ABCDB", 0, 0.2, False),  # a share of 1 in 5, but B has more
])
def test_self_consistency_needs_votes_and_the_plurality(picks, min_votes, min_share, passes):
    votes = [vote("" if p == "-" else p) for p in picks]
    assert solver_verdict(votes, "A", min_votes, min_share)[0] is passes


def test_sampled_logprob_votes_follow_the_tempered_distribution_and_are_seeded():
    solver = ScriptedEngine(pick=lambda p: HEART.options["A"])  # the key at -0.1, the others at -4
    greedy = solve_blind(solver, [HEART], seed=1, samples=26)[0]
    assert all(v.pick == "A" for v in greedy)
    hot = solve_blind(solver, [HEART], seed=1, samples=26, temperature=4.0)[0]
    assert 0 < sum(v.pick != "A" for v in hot) < 26  # at T = 4 the others get ~0.38 of the mass between them
    again = solve_blind(solver, [HEART], seed=1, samples=26, temperature=4.0)[0]
    assert [v.pick for v in hot] == [v.pick for v in again]
    assert hot[0].raw.count(":") == 4 and "-0.100" in hot[0].raw  # each shown letter's log-prob, for the audit


def test_sampled_generate_votes_keep_every_raw_reply():
    items = [gen("g1", "What is 2 plus 2?", ["4", "5", "14", "104"], "A")]
    replies = iter(["2 + 2 = 4. The answer is 4.", "2 + 2 = 5. The answer is 5.", "no idea"])
    solver = ScriptedEngine(reply=lambda p: next(replies), name="t")
    config = ValidationConfig(acceptance="solver", solver_mode="generate", solver_samples=3, solver_temperature=0.7,
                              solver_min_share=0.3, rebalance=False)
    result = validate_items(items, solver=solver, critic=None, config=config)
    params = solver.calls[0][2]
    assert params.temperature == 0.7 and params.seed == config.seed
    (decision,) = result.decisions
    assert [v["raw"] for v in decision["solver_votes"]] == ["2 + 2 = 4. The answer is 4.", "2 + 2 = 5. The answer is 5.", "no idea"]
    assert [v["pick"] for v in decision["solver_votes"]] == ["A", "B", ""]
    assert not decision["accepted"]  # one vote each for A and B: no majority for the key
    assert "needs 1 and the most votes; picks A,B,-" in result.rejected[0]["reason"]


def test_the_critic_sees_the_explanation_only_when_asked():
    explained = GOOD.model_copy(update={"explanation": "Insulin comes from the beta cells of the pancreas."})
    for sees in (False, True):
        seen = []
        critic = ScriptedEngine(reply=lambda p: seen.append(user_text(p)) or 'accept", "reason": "ok"}')
        validate_items([explained], solver=None, critic=critic, config=ValidationConfig(acceptance="critic", critic_sees_explanation=sees))
        assert ("Explanation: Insulin comes from" in seen[0]) is sees
