"""Teacher K/V stored offline, so that training does not keep the teachers in memory.

A KV folder holds one subfolder per teacher (``t0/``, ``t1/``, ...) with its tokenizer files and shards
``shard-NNNNN.safetensors``, and an ``index.json`` written last (the commit point: a folder without it
holds no K/V). For the items of a shard, in order, each teacher's shard has, over the teacher's own
tokens of each item:

    ids        (n,)          int32    the teacher's tokens (checked against the tokens the collator renders)
    k.<layer>  (n, H, d)     float16  keys before rotary embedding (k_proj output) of a mapped layer
    v.<layer>  (n, H, d)     float16  values
    q.<layer>  (n, H_q, d)   float16  queries, when stored for the attention term
    nll        (n,)          float32  -log p(token | tokens before), causal LMs only (0 for the first token)

The index lists per teacher its spec, name, layout, rotary base, tokenizer fingerprint and layers, and
per item and teacher (shard, offset, length); plus bytes and bytes per teacher token. The layers stored
are those the layer map reads for the student's layer count, so the store belongs to that map.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from data.records import DataError, atomic_write_bytes, atomic_write_json, read_index
from training.kv.models import KVCapture, rope_theta, run_captured
from training.kv.teachers import KVTeacher, teacher_names, tokenizer_fingerprint

logger = logging.getLogger(__name__)

FORMAT = "atkd-kv-v1"
INDEX = "index.json"


@torch.no_grad()
def _teacher_rows(teacher: KVTeacher, capture: KVCapture, views: list, device, queries: bool) -> list[dict[str, np.ndarray]]:
    """One forward over a batch of one teacher's views; per item its arrays in storage dtypes."""
    width = max(len(v.input_ids) for v in views)
    pad = teacher.tokenizer.pad_token_id or 0
    ids = torch.full((len(views), width), pad, dtype=torch.long)
    mask = torch.zeros(len(views), width, dtype=torch.long)
    for b, v in enumerate(views):
        ids[b, : len(v.input_ids)] = torch.as_tensor(v.input_ids)
        mask[b, : len(v.input_ids)] = 1
    ids, mask = ids.to(device), mask.to(device)
    nll = run_captured(teacher.model, teacher.layout.kind, capture, ids, mask, need_nll=hasattr(teacher.model, "lm_head"))
    rows = []
    for b, v in enumerate(views):
        n = len(v.input_ids)
        row = {"ids": np.asarray(v.input_ids, dtype=np.int32)}
        for layer in capture.layers:
            row[f"k.{layer}"] = capture.keys[layer][b, :n].float().cpu().numpy().astype(np.float16)
            row[f"v.{layer}"] = capture.values[layer][b, :n].float().cpu().numpy().astype(np.float16)
            if queries:
                row[f"q.{layer}"] = capture.queries[layer][b, :n].float().cpu().numpy().astype(np.float16)
        if nll is not None:
            row["nll"] = nll[b, :n].cpu().numpy().astype(np.float32)
        rows.append(row)
    return rows


def extract_teacher_kv(
    teachers: Sequence[KVTeacher],
    conversations: Sequence[tuple[str, Sequence[dict[str, str]]]],
    layers: Sequence[Sequence[int]],
    out_dir: str | os.PathLike,
    *,
    queries: bool = False,
    items_per_shard: int = 64,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Store each teacher's K/V (and Q if ``queries``; NLL for causal LMs) at ``layers[i]`` for every item.

    ``conversations`` are ``(item_id, messages)``. Returns ``{"items", "teachers": [{name, tokens, bytes,
    bytes_per_token}], "bytes", "bytes_per_token"}``.
    """
    from safetensors.numpy import save
    from tqdm.auto import tqdm

    if items_per_shard < 1 or batch_size < 1:
        raise ValueError("items_per_shard and batch_size must be >= 1")
    ids_seen = [item_id for item_id, _ in conversations]
    if len(set(ids_seen)) != len(ids_seen):
        raise ValueError("item ids must be unique (stored K/V are looked up by id)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX).unlink(missing_ok=True)  # the commit point goes first: a killed run leaves no index
    names = teacher_names(teachers)
    index_teachers, items = [], {item_id: {} for item_id in ids_seen}
    total_bytes = 0
    for i, teacher in enumerate(teachers):
        folder = out / f"t{i}"
        folder.mkdir(exist_ok=True)
        teacher.tokenizer.save_pretrained(folder)
        capture = KVCapture(teacher.model, layers[i], queries=queries)
        device = next(teacher.model.parameters()).device
        shards, tokens, t_bytes = [], 0, 0
        bar = tqdm(total=len(conversations), desc=f"K/V of {names[i]}", disable=not progress, unit="item")
        try:
            for start in range(0, len(conversations), items_per_shard):
                chunk = conversations[start : start + items_per_shard]
                rows: list[dict[str, np.ndarray]] = []
                for b in range(0, len(chunk), batch_size):
                    views = [teacher.view(conv) for _, conv in chunk[b : b + batch_size]]
                    rows.extend(_teacher_rows(teacher, capture, views, device, queries))
                    bar.update(len(views))
                arrays = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
                name = f"shard-{len(shards):05d}.safetensors"
                data = save(arrays, metadata={"format": FORMAT})
                atomic_write_bytes(folder / name, data)
                offset = 0
                for (item_id, _), row in zip(chunk, rows):
                    items[item_id][str(i)] = [len(shards), offset, len(row["ids"])]
                    offset += len(row["ids"])
                shards.append(name)
                tokens += offset
                t_bytes += len(data)
        finally:
            bar.close()
            capture.remove()
        keep = set(shards)
        for stale in folder.glob("shard-*.safetensors"):
            if stale.name not in keep:
                stale.unlink()
        total_bytes += t_bytes
        index_teachers.append(
            {
                "name": names[i],
                "spec": teacher.spec,
                "layout": teacher.layout.as_dict(),
                "rope_theta": rope_theta(teacher.model) if teacher.layout.kind == "decoder" else None,
                "causal_lm": hasattr(teacher.model, "lm_head"),
                "chat": teacher.chat,
                "max_length": teacher.max_length,
                "tokenizer_fingerprint": tokenizer_fingerprint(teacher.tokenizer),
                "layers": sorted(set(layers[i])),
                "queries": queries,
                "shards": shards,
                "tokens": tokens,
                "bytes": t_bytes,
                "bytes_per_token": round(t_bytes / max(tokens, 1), 1),
            }
        )
    all_tokens = sum(t["tokens"] for t in index_teachers)
    index = {
        "format": FORMAT,
        "num_items": len(items),
        "bytes": total_bytes,
        "bytes_per_token": round(total_bytes / max(all_tokens, 1), 1),
        "teachers": index_teachers,
        "items": items,
    }
    atomic_write_json(out / INDEX, index)
    logger.info("stored K/V of %d teachers for %d items, %.1f bytes per teacher token, in %s", len(teachers), len(items), index["bytes_per_token"], out)
    return {
        "items": len(items),
        "teachers": [{k: t[k] for k in ("name", "tokens", "bytes", "bytes_per_token", "layers")} for t in index_teachers],
        "bytes": total_bytes,
        "bytes_per_token": index["bytes_per_token"],
    }


class TeacherKVStore:
    """Read-only access to a KV folder; shards are memory-mapped on first use."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        index = read_index(self.path / INDEX, FORMAT, "stored teacher K/V")
        self.index = index
        self.teacher_entries: list[dict[str, Any]] = index["teachers"]
        self._items: dict[str, dict[str, list[int]]] = index["items"]
        self._handles: dict[tuple[int, int], Any] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def teachers(self) -> list[KVTeacher]:
        """Offline stand-ins of the teachers: tokenizer and layout, no model."""
        from transformers import AutoTokenizer

        from training.kv.models import AttentionLayout

        out = []
        for i, entry in enumerate(self.teacher_entries):
            tokenizer = AutoTokenizer.from_pretrained(self.path / f"t{i}")
            if tokenizer_fingerprint(tokenizer) != entry["tokenizer_fingerprint"]:
                raise DataError(f"{self.path / f't{i}'}: the tokenizer does not match the one the K/V were stored with")
            out.append(
                KVTeacher(
                    spec=entry["spec"], path=str(self.path / f"t{i}"), model=None, tokenizer=tokenizer,
                    layout=AttentionLayout(**entry["layout"]), max_length=entry["max_length"],
                    stored=entry, name_override=entry["name"],
                )
            )
        return out

    def _handle(self, teacher: int, shard: int) -> Any:
        key = (teacher, shard)
        if key not in self._handles:
            from safetensors import safe_open

            file = self.path / f"t{teacher}" / self.teacher_entries[teacher]["shards"][shard]
            if not file.is_file():
                raise DataError(f"{file}: shard listed in {self.path / INDEX} is missing")
            self._handles[key] = safe_open(str(file), framework="pt")
        return self._handles[key]

    def rows(self, teacher: int, item_id: str) -> dict[str, torch.Tensor]:
        """The stored arrays of one item for one teacher (``ids``, ``k.<l>``, ``v.<l>``, ...)."""
        entry = self._items.get(item_id, {}).get(str(teacher))
        if entry is None:
            raise DataError(f"{self.path}: no stored K/V of teacher {teacher} for item {item_id!r}")
        shard, offset, length = entry
        handle = self._handle(teacher, shard)
        return {key: handle.get_slice(key)[offset : offset + length] for key in handle.keys()}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}
