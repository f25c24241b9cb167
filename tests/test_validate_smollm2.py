"""End to end on the real SmolLM2-135M-Instruct: generate for 2 nodes, then validate (solver + critic).

Small budget (2 nodes x 2 items, greedy, one round) so it runs in a couple of minutes on a busy CPU.
The seed pool is left out of the duplicate gates on purpose: SmolLM2 mostly copies its exemplar, and
the point here is that real outputs flow through every stage, the real agents included.
"""

from __future__ import annotations

import pytest

from data.domains import get_domain
from synth.generate import NodeBrief, SynthConfig, generate_items
from synth.validate import STAGES, ValidationConfig, validate_items


@pytest.mark.slow
def test_generate_then_validate_with_real_smollm2():
    from engines import EngineConfig, load_engine

    domain = get_domain("clinical")
    seeds = domain.seed_items()
    by_node: dict[str, list] = {}
    for item in seeds:
        if item.ability_path:
            by_node.setdefault(item.ability_path[-1], []).append(item)
    nodes = {
        "medical genetics": NodeBrief("medical genetics", "medical genetics", "", ("misreads modes of inheritance",), ("clinical medicine", "medical genetics")),
        "nutrition": NodeBrief("nutrition", "nutrition", "", ("confuses fat-soluble and water-soluble vitamins",), ("clinical medicine", "health", "nutrition")),
    }
    engine = load_engine("smollm2", EngineConfig(engine="transformers"))
    try:
        generated = generate_items(
            engine, {"medical genetics": 2, "nutrition": 2}, nodes, by_node,
            SynthConfig(temperature=0.0, rounds=1, max_new_tokens=200, domain="clinical medicine"), iteration=1,
        )
        assert generated.report["requested"] == 4
        assert len(generated.items) + len(generated.rejected) == 4
        assert all(r["stage"] == "parse" and r["raw"] for r in generated.rejected)
        assert generated.items, f"no real SmolLM2 output parsed: {[r['reason'] for r in generated.rejected]}"
        # Under the schema every reply that ends before max_new_tokens is a valid item.
        assert all(r["code"] in ("truncated", "schema") for r in generated.rejected)  # cut by the budget, or e.g. a blank question
        for item in generated.items:
            assert item.id.startswith("gen-1-") and item.generator == "smollm2" and item.target_node in nodes

        result = validate_items(
            generated.items, solver=engine, critic=engine, seed_pool=(), eval_items=domain.eval_items(),
            config=ValidationConfig(domain="clinical medicine"),
        )
    finally:
        engine.close()
    assert len(result.accepted) + len(result.rejected) == len(generated.items)
    assert {r["stage"] for r in result.rejected} <= set(STAGES)
    for decision in result.decisions:  # what the real agents said, for every item that reached them
        (vote,) = decision["solver_votes"]
        assert vote["pick"] in "ABCDE" and 0.0 <= vote["prob_key"] <= 1.0 and vote["solver"] == "smollm2"
        # The transformers engine enforces the critic's JSON schema (xgrammar): always a parsed verdict.
        assert decision["critic_parsed"] and decision["critic_raw"].startswith('{"verdict": "')
    assert result.report["candidates"] == len(generated.items)
