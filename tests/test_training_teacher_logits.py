"""MCQ tokenization, top-k teacher-logit storage (round trip, size) and the aligned collator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.records import DataError, GeneratedItem, MCQItem, read_items


class TinyTopKEngine:
    """``Engine.topk_logprobs`` computed from a real Hugging Face model forward (the transformers engine's contract)."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"hf:{path}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.calls = 0

    @torch.no_grad()
    def topk_logprobs(self, sequences, k):
        self.calls += 1
        out = []
        for seq in sequences:
            logits = self.model(torch.tensor([list(seq)])).logits[0, :-1]  # (L - 1, V)
            logprobs, ids = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
            out.append((ids.numpy().astype(np.int32), logprobs.numpy()))
        return out


def small_items(shared_data_dir: Path, n: int = 4) -> list[MCQItem]:
    """The n shortest dev questions plus one generated item with an explanation (short sequences = fast)."""
    items = sorted(read_items([shared_data_dir / "medmcqa_dev.jsonl"]), key=lambda i: len(i.question) + sum(map(len, i.options.values())))
    base = items[0]
    generated = GeneratedItem(
        id="gen-1",
        question=base.question,
        options=base.options,
        answer_idx=base.answer_idx,
        explanation="It is the classic finding.",
        target_node="clinical medicine",
    )
    return [*items[: n - 1], generated]


@pytest.fixture(scope="module")
def items(shared_data_dir):
    return small_items(shared_data_dir)


@pytest.fixture(scope="module")
def engine(tiny_teacher_path):
    return TinyTopKEngine(tiny_teacher_path)


@pytest.fixture(scope="module")
def logits_dir(engine, items, tmp_path_factory):
    from training.teacher_logits import extract_teacher_logits

    out = tmp_path_factory.mktemp("logits")
    stats = extract_teacher_logits(engine, items, out, k=32, items_per_shard=3)
    return out, stats


def test_tokenize_item_masks_all_but_the_answer(engine, items):
    from training.mcq_data import tokenize_item

    tok = engine.tokenizer
    plain = tokenize_item(items[0], tok)
    completion = [t for t, l in zip(plain["input_ids"], plain["labels"]) if l != -100]
    assert tok.decode(completion) == f"The answer is {items[0].answer_idx}.<|im_end|>"
    assert plain["input_ids"][-1] == tok.eos_token_id  # nothing after the closing end-of-turn token
    prompt = tok.decode(plain["input_ids"][: plain["labels"].index(completion[0])])
    assert items[0].question in prompt and prompt.endswith("<|im_start|>assistant\n")

    gen = tokenize_item(items[-1], tok)
    completion = [t for t, l in zip(gen["input_ids"], gen["labels"]) if l != -100]
    assert tok.decode(completion) == f"The answer is {items[-1].answer_idx}. It is the classic finding.<|im_end|>"


def test_round_trip_and_size(engine, items, logits_dir):
    from training.mcq_data import tokenize_items
    from training.teacher_logits import TeacherLogits, completion_positions

    out, stats = logits_dir
    index = json.loads((out / "index.json").read_text())
    assert index["k"] == 32 and index["num_items"] == len(items) and len(index["shards"]) == 2 == stats["shards"]
    assert index["vocab_size"] == len(engine.tokenizer)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    # k = 32: 4 B ids + 2 B log-probs per entry and a 4 B token id, plus the index.
    assert 196 < stats["bytes_per_token"] <= 300
    total = sum(p.stat().st_size for p in out.iterdir())
    assert abs(stats["bytes"] - total) <= 8

    store = TeacherLogits(out)
    assert len(store) == len(items) and store.num_tokens == stats["tokens"]
    rows = tokenize_items(items, engine.tokenizer)
    fresh = engine.topk_logprobs([r["input_ids"] for r in rows], 32)
    for row, (ids, logprobs) in zip(rows, fresh):
        stored = store.rows(row["id"])
        pos = completion_positions(row["labels"])
        assert stored.ids.dtype == torch.int32 and stored.logprobs.dtype == torch.float16
        np.testing.assert_array_equal(stored.ids.numpy(), ids[pos - 1])
        np.testing.assert_array_equal(stored.logprobs.numpy(), logprobs[pos - 1].astype(np.float16))
        np.testing.assert_array_equal(stored.tokens.numpy(), np.asarray(row["input_ids"])[pos])


def test_collator_puts_rows_at_the_label_positions(engine, items, logits_dir):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from training.collator import TopKCollator
    from training.mcq_data import tokenize_items
    from training.teacher_logits import TeacherLogits, completion_positions

    store = TeacherLogits(logits_dir[0])
    rows = tokenize_items(items, engine.tokenizer)
    collator = TopKCollator(DataCollatorForLanguageModeling(pad_token_id=engine.tokenizer.pad_token_id), store, vocab_size=49152, top_k=8)
    batch = collator(rows[:2])
    assert batch["teacher_topk_ids"].shape == (*batch["labels"].shape, 8)
    for b, row in enumerate(rows[:2]):
        pos = completion_positions(row["labels"])
        stored = store.rows(row["id"])
        assert torch.equal(batch["teacher_topk_ids"][b, pos], stored.ids[:, :8].long())
        assert torch.equal(batch["teacher_topk_logprobs"][b, pos], stored.logprobs[:, :8].float())
        others = torch.ones(batch["labels"].shape[1], dtype=torch.bool)
        others[pos] = False
        assert torch.all(batch["teacher_topk_logprobs"][b, others] == 0)
        # Labels at the filled positions are exactly the tokens the rows were stored for.
        assert torch.equal(batch["labels"][b, pos], stored.tokens.long())

    # A student head narrower than some stored ids: those slots are dropped (-inf), never indexed.
    narrow = TopKCollator(collator.base, store, vocab_size=1000, top_k=8)(rows[:1])
    pos = completion_positions(rows[0]["labels"])
    stored = store.rows(rows[0]["id"]).ids[:, :8]
    dropped = stored >= 1000
    assert dropped.any()
    assert torch.all(narrow["teacher_topk_logprobs"][0, pos][dropped] == float("-inf"))
    assert torch.all(narrow["teacher_topk_ids"][0, pos] < 1000)


def test_alignment_errors(engine, items, logits_dir, tiny_model_path):
    from transformers import AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from training.collator import TeacherAlignmentError, TopKCollator, check_same_tokenizer
    from training.mcq_data import tokenize_items
    from training.teacher_logits import TeacherLogits

    store = TeacherLogits(logits_dir[0])
    collator = TopKCollator(DataCollatorForLanguageModeling(pad_token_id=0), store, vocab_size=49152)
    row = tokenize_items(items[:1], engine.tokenizer)[0]

    answer_at = row["labels"].index(next(l for l in row["labels"] if l != -100))
    swapped = {**row, "input_ids": list(row["input_ids"]), "labels": list(row["labels"])}
    swapped["input_ids"][answer_at + 3] = swapped["labels"][answer_at + 3] = 17  # a different answer token
    with pytest.raises(TeacherAlignmentError, match="tokenizers differ"):
        collator([swapped])

    prompt_changed = {**row, "input_ids": [5, *row["input_ids"][1:]]}
    with pytest.raises(TeacherAlignmentError, match="prompt tokens differ"):
        collator([prompt_changed])

    truncated = {**row, "input_ids": row["input_ids"][:-2], "labels": row["labels"][:-2]}
    with pytest.raises(TeacherAlignmentError, match="completion tokens"):
        collator([truncated])

    with pytest.raises(DataError, match="no stored teacher logits for item 'nope'"):
        collator([{**row, "id": "nope"}])
    assert TopKCollator(collator.base, store, vocab_size=49152, top_k=64).top_k == 32  # capped at what was stored

    other = AutoTokenizer.from_pretrained(tiny_model_path)
    check_same_tokenizer(engine.tokenizer, other)
    other.add_tokens(["<|not-in-the-teacher|>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_same_tokenizer(other, engine.tokenizer)


def test_bad_folders_and_engines(tmp_path, engine, items):
    from training.teacher_logits import TeacherLogits, extract_teacher_logits

    with pytest.raises(DataError, match="index.json: not found"):
        TeacherLogits(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        TeacherLogits(tmp_path)

    class NoTokenizer:
        name = "openai:http://x#m"

    with pytest.raises(ValueError, match="exposes no tokenizer"):
        extract_teacher_logits(NoTokenizer(), items, tmp_path / "a")

    class Truncating(TinyTopKEngine):
        def topk_logprobs(self, sequences, k):
            return [(ids[:-1], lp[:-1]) for ids, lp in super().topk_logprobs(sequences, k)]

    bad = Truncating.__new__(Truncating)
    bad.__dict__.update(engine.__dict__)
    with pytest.raises(RuntimeError, match="expected"):
        extract_teacher_logits(bad, items[:1], tmp_path / "b", k=4)
    assert not (tmp_path / "b" / "index.json").exists()
