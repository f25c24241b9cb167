"""Sparse top-k teacher log-probs: extracted once through an engine, stored as shards, read back by id.

A logits folder holds ``shard-NNNNN.safetensors`` files and an ``index.json`` written last (the commit
point: a folder without it holds no logits). Each shard has, for the completion positions of its items
in order (label != -100, from position 1 on):

    ids       (n, k) int32    the teacher's top-k token ids, by log-prob descending
    logprobs  (n, k) float16  their log-probs at T = 1
    tokens    (n,)   int32    the token actually at that position, to check alignment with the student

Row j is the teacher's distribution of the token at its position given the tokens before it. The index
lists every item (id, shard, offset, length, sequence length and a hash of all its tokens) plus k, the
tokenizer, and the bytes stored per token (k = 32: 4 * 32 + 2 * 32 + 4 = 196 bytes in the shards).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.records import (
    DataError,
    MCQItem,
    atomic_write_bytes,
    atomic_write_json,
    read_index,
)
from training.mcq_data import tokenize_items

logger = logging.getLogger(__name__)

FORMAT = "atkd-topk-v1"
INDEX = "index.json"


def sequence_hash(input_ids: Sequence[int]) -> str:
    """A short hash of a whole token sequence: the teacher's distribution depends on all of the context."""
    return hashlib.sha1(np.asarray(input_ids, dtype=np.int32).tobytes()).hexdigest()[:16]


def completion_positions(labels: Sequence[int]) -> np.ndarray:
    """Positions t >= 1 whose label is not -100: the tokens a causal LM is trained to predict."""
    labels = np.asarray(labels)
    return np.nonzero(labels[1:] != -100)[0] + 1


class RoutedTopK:
    """The ``topk_logprobs`` of ``engine``, except for the sequences in ``route`` (``sequence_hash``es),
    whose top-k come from ``other``: e.g. the previous student's distribution on rehearsal items
    (learning without forgetting: the KD term on them keeps the student where it was) and the teacher's
    on the rest. Both must share one tokenizer, like any source of stored logits."""

    def __init__(self, engine: Any, other: Any, route: set[str]) -> None:
        mine, theirs = getattr(engine, "tokenizer", None), getattr(other, "tokenizer", None)
        if mine is None or theirs is None or mine.get_vocab() != theirs.get_vocab():
            raise ValueError(f"{getattr(other, 'name', other)!r} does not share the tokenizer of {getattr(engine, 'name', engine)!r}; "
                             "stored logits from both need one vocabulary")
        self.engine, self.other, self.route, self.tokenizer = engine, other, set(route), mine
        self.name = f"{getattr(engine, 'name', engine)} (and {getattr(other, 'name', other)} on {len(self.route)} sequences)"

    def topk_logprobs(self, sequences: Sequence[Sequence[int]], k: int) -> list:
        routed = [sequence_hash(s) in self.route for s in sequences]
        own = iter(self.engine.topk_logprobs([s for s, r in zip(sequences, routed) if not r], k) if not all(routed) else [])
        other = iter(self.other.topk_logprobs([s for s, r in zip(sequences, routed) if r], k) if any(routed) else [])
        return [next(other) if r else next(own) for r in routed]


def _tokenizer_of(engine: Any, tokenizer: Any) -> Any:
    if tokenizer is None:
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                f"engine {getattr(engine, 'name', engine)!r} exposes no tokenizer; pass tokenizer= (the student's "
                "tokenizer or its folder), which the teacher must share"
            )
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return tokenizer


def _shard_arrays(rows: list[dict[str, Any]], results: list, k: int, engine_name: str):
    """Keep each item's completion rows of the engine's ``(L - 1, k)`` output, in storage dtypes."""
    if len(results) != len(rows):
        raise RuntimeError(f"engine {engine_name} returned {len(results)} results for {len(rows)} sequences")
    ids_parts, lp_parts, tok_parts, lengths = [], [], [], []
    for row, (ids, logprobs) in zip(rows, results):
        ids, logprobs = np.asarray(ids), np.asarray(logprobs, dtype=np.float32)
        expected = (len(row["input_ids"]) - 1, k)
        if ids.shape != expected or logprobs.shape != expected:
            raise RuntimeError(
                f"engine {engine_name} returned top-k of shapes {ids.shape} / {logprobs.shape} for item {row['id']}, "
                f"expected {expected}"
            )
        if np.isnan(logprobs).any():
            raise RuntimeError(f"engine {engine_name} returned NaN log-probs for item {row['id']}")
        rows_at = completion_positions(row["labels"]) - 1  # row t - 1 predicts the token at t
        ids_parts.append(ids[rows_at].astype(np.int32))
        # Clamp into float16's range: a log-prob below -65504 is probability 0 either way, and -inf would read
        # back as a dropped slot.
        lp_parts.append(np.maximum(logprobs[rows_at], np.finfo(np.float16).min).astype(np.float16))
        tok_parts.append(np.asarray(row["input_ids"], dtype=np.int32)[rows_at + 1])
        lengths.append(len(rows_at))
    arrays = {
        "ids": np.concatenate(ids_parts).reshape(-1, k),
        "logprobs": np.concatenate(lp_parts).reshape(-1, k),
        "tokens": np.concatenate(tok_parts),
    }
    return arrays, lengths


def extract_teacher_logits(
    engine: Any,
    items: Sequence[MCQItem],
    out_dir: str | os.PathLike,
    k: int = 32,
    *,
    tokenizer: Any = None,
    items_per_shard: int = 256,
) -> dict[str, Any]:
    """Store the teacher's top-k log-probs for the completion tokens of ``items`` in ``out_dir``.

    ``engine`` implements ``topk_logprobs`` (engines.base.Engine) and shares the student's tokenizer;
    ``tokenizer`` defaults to ``engine.tokenizer``. Each shard is one engine call over
    ``items_per_shard`` sequences, so memory stays bounded and the engine batches. Returns
    ``{"tokens", "bytes", "bytes_per_token", "k", "shards"}``.
    """
    from safetensors.numpy import save

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if items_per_shard < 1:
        raise ValueError(f"items_per_shard must be >= 1, got {items_per_shard}")
    tokenizer = _tokenizer_of(engine, tokenizer)
    engine_name = str(getattr(engine, "name", type(engine).__name__))
    rows = tokenize_items(items, tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The index is the commit point: drop an old one first, so shards being rewritten are never read
    # through an index that describes other contents (a killed run leaves a folder without logits).
    (out_dir / INDEX).unlink(missing_ok=True)

    index_items: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    for start in range(0, len(rows), items_per_shard):
        chunk = rows[start : start + items_per_shard]
        results = engine.topk_logprobs([r["input_ids"] for r in chunk], k)
        arrays, lengths = _shard_arrays(chunk, results, k, engine_name)
        name = f"shard-{len(shards):05d}.safetensors"
        data = save(arrays, metadata={"format": FORMAT, "k": str(k)})
        atomic_write_bytes(out_dir / name, data)
        offset = 0
        for row, length in zip(chunk, lengths):
            index_items.append(
                {
                    "id": row["id"],
                    "shard": len(shards),
                    "offset": offset,
                    "length": length,
                    "seq_len": len(row["input_ids"]),
                    "seq_hash": sequence_hash(row["input_ids"]),
                }
            )
            offset += length
        shards.append({"file": name, "items": len(chunk), "tokens": offset, "bytes": len(data)})

    num_tokens = sum(s["tokens"] for s in shards)
    index = {
        "format": FORMAT,
        "k": k,
        "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "engine": engine_name,
        "num_items": len(index_items),
        "num_tokens": num_tokens,
        "bytes": 0,
        "bytes_per_token": 0.0,
        "shards": shards,
        "items": index_items,
    }
    # Count the index itself too; filling in the two numbers changes its size by a few bytes at most.
    for _ in range(2):
        total = sum(s["bytes"] for s in shards) + len(json.dumps(index, indent=2, ensure_ascii=False)) + 1
        index["bytes"] = total
        index["bytes_per_token"] = round(total / max(num_tokens, 1), 2)
    atomic_write_json(out_dir / INDEX, index)
    keep = {s["file"] for s in shards}
    for stale in out_dir.glob("shard-*.safetensors"):
        if stale.name not in keep:
            stale.unlink()
    logger.info(
        "stored top-%d teacher log-probs for %d items, %d tokens, %.1f bytes/token in %s",
        k, len(index_items), num_tokens, index["bytes_per_token"], out_dir,
    )
    return {"tokens": num_tokens, "bytes": total, "bytes_per_token": index["bytes_per_token"], "k": k, "shards": len(shards)}


@dataclass(frozen=True)
class TeacherRows:
    """The stored rows of one item (torch tensors; see the module docstring)."""

    ids: Any  # (n, k) int32
    logprobs: Any  # (n, k) float16
    tokens: Any  # (n,) int32
    seq_len: int
    seq_hash: str


class TeacherLogits:
    """Read-only access to a logits folder; shards are memory-mapped and opened on first use."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        index = read_index(self.path / INDEX, FORMAT, "stored teacher logits")
        self.k: int = index["k"]
        self.vocab_size: int = index["vocab_size"]
        self.tokenizer_name: str = index["tokenizer"]
        self.num_tokens: int = index["num_tokens"]
        self.bytes_per_token: float = index["bytes_per_token"]
        self._shards = [s["file"] for s in index["shards"]]
        self._items = {item["id"]: item for item in index["items"]}
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def _handle(self, shard: int) -> Any:
        if shard not in self._handles:
            from safetensors import safe_open

            file = self.path / self._shards[shard]
            if not file.is_file():
                raise DataError(f"{file}: shard listed in {self.path / INDEX} is missing")
            self._handles[shard] = safe_open(str(file), framework="pt")
        return self._handles[shard]

    def rows(self, item_id: str) -> TeacherRows:
        entry = self._items.get(item_id)
        if entry is None:
            raise DataError(f"{self.path}: no stored teacher logits for item {item_id!r}")
        handle = self._handle(entry["shard"])
        rows = slice(entry["offset"], entry["offset"] + entry["length"])
        return TeacherRows(
            ids=handle.get_slice("ids")[rows],
            logprobs=handle.get_slice("logprobs")[rows],
            tokens=handle.get_slice("tokens")[rows],
            seq_len=entry["seq_len"],
            seq_hash=entry["seq_hash"],
        )

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get a copy without open file handles; each reopens its shards.
        return {**self.__dict__, "_handles": {}}


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.teacher_logits --teacher SPEC --data FILE.jsonl... --out DIR [--k 32]``."""
    import argparse
    import sys

    from data.cli import add_dataclass_options, dataclass_from_args

    parser = argparse.ArgumentParser(
        prog="python -m training.teacher_logits",
        description="Store a teacher's top-k log-probs for the completion tokens of MCQ items (safetensors shards "
        "+ index.json), for `python -m training.distill --logits DIR`. The teacher must share the student's tokenizer.",
    )
    parser.add_argument("--teacher", required=True, help="teacher model spec: smollm2, hf:PATH, vllm:PATH (prompt_logprobs)")
    parser.add_argument("--data", required=True, nargs="+", help="MCQ JSONL file(s) (MCQItem or GeneratedItem lines)")
    parser.add_argument("--out", required=True, help="output folder (refused if it holds logits, unless --force)")
    parser.add_argument("--k", type=int, default=32, help="log-probs kept per token (default 32: 196 bytes/token)")
    parser.add_argument("--tokenizer", help="tokenizer folder if the engine has none (default: the teacher's)")
    parser.add_argument("--items-per-shard", type=int, default=256, help="items per shard file and engine call (default 256)")
    parser.add_argument("--force", action="store_true", help="replace logits already stored in --out")
    from engines import EngineConfig

    add_dataclass_options(parser, EngineConfig, skip=("api_key_env", "concurrency", "timeout_s", "max_retries"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from data.records import check_writable
    from engines import load_engine
    from engines.smollm2 import ModelNotFoundError
    from training.mcq_data import read_training_items

    out = Path(args.out)
    try:
        if (out / INDEX).exists() and not args.force:
            raise ValueError(f"{out / INDEX} exists: these logits would be replaced; pass --force or choose another --out")
        if args.k < 1 or args.items_per_shard < 1:
            raise ValueError("--k and --items-per-shard must be >= 1")
        items = read_training_items(args.data)
        check_writable(out, "--out")
        # vLLM (also when --engine auto picks it) must be started able to return k log-probs; others ignore it.
        config = dataclass_from_args(EngineConfig, args, max_logprobs=max(args.max_logprobs, args.k))
        engine = load_engine(args.teacher, config)
    except (ValueError, DataError, OSError, ModelNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        stats = extract_teacher_logits(engine, items, out, args.k, tokenizer=args.tokenizer, items_per_shard=args.items_per_shard)
    finally:
        engine.close()
    print(json.dumps({"items": len(items), **stats, "out": str(out)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
