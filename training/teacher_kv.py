"""Store KV teachers' keys and values offline: ``python -m training.teacher_kv``.

    python -m training.teacher_kv --teachers smollm2,minilm --student "smollm2?layers=6" \
        --data ../shared/data/clinical/mmlu_dev.jsonl --out kv/

Each teacher reads every item's conversation its own way (its tokenizer, its chat template); the K/V of
the layers that ``--layer-map`` reads for the student's layer count are written as float16 safetensors
shards with an ``index.json`` written last as the commit point (``training.kv.store``). Train from them
with ``python -m training.distill --kv-dir kv/ ...`` (same student layer count and layer map): no
teacher stays in memory during training. Prints the bytes stored per teacher token.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.teacher_kv",
        description="Store KV teachers' keys/values (float16 safetensors shards + index.json) for "
        "`python -m training.distill --kv-dir DIR`.",
    )
    parser.add_argument("--teachers", required=True, help="teacher specs or folders, comma-separated (smollm2,minilm)")
    parser.add_argument("--data", required=True, nargs="+", help="MCQ JSONL file(s) (MCQItem or GeneratedItem lines)")
    parser.add_argument("--out", required=True, help="output folder (refused if it holds K/V, unless --force)")
    parser.add_argument("--student", help="student spec or folder: its layer count decides the layers stored")
    parser.add_argument("--student-layers", type=int, help="the student's decoder layer count, instead of --student")
    parser.add_argument("--layer-map", default="ratio", help="ratio, uniform, skip or pairs 's:t,...' (default ratio)")
    parser.add_argument("--queries", action="store_true", help="store queries too (needed for kv_gamma > 0)")
    parser.add_argument("--lm-head", action="store_true", help="store decoder teachers' token NLL (for kv_fusion mince/avgce)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per teacher forward (default 8)")
    parser.add_argument("--items-per-shard", type=int, default=64, help="items per shard file (default 64)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="teacher dtype (default float32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--force", action="store_true", help="replace K/V already stored in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _student_layers(args: argparse.Namespace) -> int:
    if args.student_layers:
        if args.student_layers < 1:
            raise ValueError("--student-layers must be >= 1")
        return args.student_layers
    if not args.student:
        raise ValueError("give --student (or --student-layers): the layers stored depend on the student's layer count")
    from transformers import AutoConfig

    from training.distill import resolve_model_path

    return int(AutoConfig.from_pretrained(resolve_model_path(args.student)).num_hidden_layers)


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from data.records import DataError, check_writable
    from engines.smollm2 import ModelNotFoundError
    from engines.spec import SpecError
    from training.kv.align import layer_map, teacher_layers_used
    from training.kv.errors import KVSetupError
    from training.kv.store import INDEX, extract_teacher_kv
    from training.kv.teachers import load_kv_teacher, teacher_specs
    from training.mcq_data import mcq_conversation, read_training_items

    out = Path(args.out)
    try:
        if (out / INDEX).exists() and not args.force:
            raise ValueError(f"{out / INDEX} exists: these K/V would be replaced; pass --force or choose another --out")
        if args.batch_size < 1 or args.items_per_shard < 1:
            raise ValueError("--batch-size and --items-per-shard must be >= 1")
        specs = teacher_specs(args.teachers)
        if not specs:
            raise ValueError("--teachers names no teacher")
        items = read_training_items(args.data)
        check_writable(out, "--out")
        n_student = _student_layers(args)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        dtype = getattr(torch, args.dtype)
        teachers = [load_kv_teacher(spec, dtype=dtype, device=device, lm_head=args.lm_head) for spec in specs]
        layers = []
        for teacher in teachers:
            try:
                layers.append(teacher_layers_used(layer_map(args.layer_map, n_student, teacher.layout.num_layers)))
            except ValueError as e:
                raise ValueError(f"--layer-map for teacher {teacher.spec}: {e}") from None
    except (ValueError, DataError, OSError, ModelNotFoundError, SpecError, KVSetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats = extract_teacher_kv(
        teachers, [(item.id, mcq_conversation(item)) for item in items], layers, out, queries=args.queries,
        items_per_shard=args.items_per_shard, batch_size=args.batch_size, progress=not args.no_progress,
    )
    for teacher in stats["teachers"]:
        print(f"{teacher['name']}: layers {teacher['layers']}, {teacher['tokens']} tokens, "
              f"{teacher['bytes_per_token']} bytes/token")
    print(json.dumps({"out": str(out), "student_layers": n_student, "layer_map": args.layer_map, **stats}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
