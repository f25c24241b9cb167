"""MCQ scoring on a real tiny model: letter log-probs, batching per letter set, forced answers, generate mode."""

from __future__ import annotations

import json

import pytest
import torch

from data.records import MCQItem, read_items, read_jsonl
from tree import AbilityTree
from eval.__main__ import evaluate_files, main
from prompts.extract import extract_answer
from eval.mcq import score_items
from data.records import Reply
from prompts.mcq import mcq_messages, mcq_user_text
from tests.test_eval_local_engine import LocalHFEngine, force_tokens


def make_item(i: int, n_options: int, key: str) -> MCQItem:
    options = {chr(ord("A") + k): f"option {k} of question {i}" for k in range(n_options)}
    return MCQItem(id=f"t-{i}", question=f"Question number {i}: which option is right?", options=options,
                   answer_idx=key, meta_info=f"src{i % 2}:x")


@pytest.fixture(scope="module")
def mixed_items() -> list[MCQItem]:
    # 3, 4 and 5 options, interleaved, so grouping by letter set must restore the item order.
    return [make_item(0, 4, "B"), make_item(1, 3, "A"), make_item(2, 5, "E"), make_item(3, 4, "C"), make_item(4, 3, "B")]


@pytest.fixture()
def engine(tiny_model_path) -> LocalHFEngine:
    return LocalHFEngine(tiny_model_path)


def manual_letter_logprobs(engine: LocalHFEngine, item: MCQItem) -> dict[str, float]:
    """One unpadded forward of the tiny model on the item's prompt; letters with or without a space."""
    text = engine.render(mcq_messages(item.question, item.options))
    ids = engine.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(ids, logits_to_keep=1).logits[0, -1].float(), -1)
    out = {}
    for letter in item.options:
        cands = [engine.tokenizer.encode(v, add_special_tokens=False)[0] for v in (letter, " " + letter)]
        out[letter] = max(float(logp[c]) for c in cands)
    return out


def test_logprob_mode_equals_manual_forward_and_batches_per_letter_set(engine, mixed_items):
    result = score_items(engine, mixed_items)
    assert [r.id for r in result.replies] == [it.id for it in mixed_items]
    assert engine.calls == [("choice_logprobs", 2), ("choice_logprobs", 2), ("choice_logprobs", 1)]
    for reply, item in zip(result.replies, mixed_items):
        manual = manual_letter_logprobs(engine, item)
        assert list(reply.logprobs) == list(item.options)
        for letter in item.options:
            assert reply.logprobs[letter] == pytest.approx(manual[letter], abs=1e-4)
        assert reply.parsed_answer == max(manual, key=manual.get)
        assert reply.correct == (reply.parsed_answer == item.answer_idx)
        assert reply.prompt == mcq_user_text(item.question, item.options)
        assert reply.key == item.answer_idx and reply.mode == "logprob"
    assert result.unparsed == 0 and result.items_per_s > 0


def test_batch_size_splits_calls(engine, mixed_items):
    score_items(engine, mixed_items, batch_size=1)
    assert engine.calls == [("choice_logprobs", 1)] * len(mixed_items)


def test_forced_letter_is_the_answer(engine, mixed_items):
    force_tokens(engine, ["B", " B"])
    result = score_items(engine, mixed_items)
    assert [r.parsed_answer for r in result.replies] == ["B"] * len(mixed_items)
    assert [r.correct for r in result.replies] == [it.answer_idx == "B" for it in mixed_items]
    assert result.accuracy == pytest.approx(2 / 5)


def test_generate_mode_reads_the_generated_letter(engine, mixed_items):
    force_tokens(engine, ["C"])
    result = score_items(engine, mixed_items, mode="generate", max_new_tokens=1)
    assert engine.calls == [("generate", len(mixed_items))]
    assert [r.output for r in result.replies] == ["C"] * 5
    assert [r.parsed_answer for r in result.replies] == ["C", "C", "C", "C", "C"]
    assert [r.correct for r in result.replies] == [False, False, False, True, False]


def test_generate_mode_on_random_model_counts_unparsed(engine, mixed_items):
    result = score_items(engine, mixed_items[:3], mode="generate", max_new_tokens=4)
    for reply, item in zip(result.replies, mixed_items):
        assert reply.parsed_answer == extract_answer(reply.output, item.options)
    assert result.unparsed == sum(r.parsed_answer is None for r in result.replies)


def test_shots_come_from_same_letter_set_and_never_the_item(engine, mixed_items):
    from eval.mcq import _shots_for

    shots = _shots_for(mixed_items[0], mixed_items, 2)
    assert [q for q, _, _ in shots] == [mixed_items[3].question]  # the only other 4-option item
    result = score_items(engine, mixed_items, shots=1)
    assert len(result.replies) == 5


def test_bad_arguments(engine, mixed_items):
    for kwargs in ({"mode": "vibes"}, {"shots": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            score_items(engine, mixed_items, **kwargs)


def test_evaluate_files_writes_outputs(engine, shared_data_dir, tmp_path):
    items = read_items([shared_data_dir / "mmlu_dev.jsonl"])[:4] + read_items([shared_data_dir / "pubmedqa_dev.jsonl"])[:3]
    result, summary = evaluate_files(engine, items, out=tmp_path)
    replies = read_jsonl(tmp_path / "per_item.jsonl", Reply)
    assert [r.id for r in replies] == [it.id for it in items]
    # Each record can be summarised without the data files: source, option count and node ride along.
    tree = AbilityTree.from_items(items)
    assert [(r.source, r.n_options, r.node) for r in replies] == [(it.source, len(it.options), tree.node_of(it)) for it in items]
    assert replies[0].node == "clinical medicine/" + "/".join(items[0].ability_path[1:])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["by_source"]) == {"mmlu", "pubmedqa"}
    assert metrics["by_source"]["pubmedqa"]["chance"] == pytest.approx(1 / 3)
    assert metrics["by_node"]["clinical medicine"]["n"] == 7
    assert (tmp_path / "per_node.csv").read_text().startswith("node,depth,n,correct,accuracy")
    assert summary["items_per_s"] == result.items_per_s


def test_cli_bad_data_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x-1", "question": "Q", "options": {"A": "a"}, "answer_idx": "A"}\n')
    assert main(["mcq", "--model", "smollm2", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and "options" in err and "Traceback" not in err


def test_cli_end_to_end(tiny_model_path, shared_data_dir, tmp_path, capsys):
    import engines

    if not hasattr(engines, "load_engine"):
        pytest.skip("engines.load_engine is not in this checkout yet")
    data = [str(shared_data_dir / "mmlu_dev.jsonl"), str(shared_data_dir / "medqa_dev.jsonl")]
    code = main(["mcq", "--model", f"hf:{tiny_model_path}", "--engine", "transformers", "--data", *data,
                 "--limit", "3", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "mmlu" in out and "medqa" in out and "items/s" in out and "25.0%" in out  # 4 options: chance 25%
    assert len(read_jsonl(tmp_path / "per_item.jsonl", Reply)) == 6
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 6
