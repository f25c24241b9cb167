r"""``python -m training.embedding {distill,eval,export}``: multi-stage distillation of a sentence encoder.

    python -m training.embedding distill --teacher minilm --stages 2,3,4 --bottleneck 128 --keep 3 \
        --repeat 1 --loss mcl --data ../shared/data/clinical/medmcqa_dev.jsonl --out runs/enc
    python -m training.embedding eval --student runs/enc/student --teacher minilm \
        --data ../shared/data/clinical/medmcqa_dev.jsonl
    python -m training.embedding export --student runs/enc/student --data ...   # ONNX + int8, re-measured

``distill`` takes every field of ``EncoderDistillConfig`` as an option (or ``--config recipe.yaml``);
``eval`` prints fidelity, MSE x 100, recall@1, size and speed of one or more students beside the teacher,
on the same held-out split; ``export`` writes ``model.onnx`` and ``model_int8.onnx`` into ``<student>/onnx``
(or ``--out``) and prints the torch, ONNX and int8 rows. Bad input is one line naming the file (and
line) and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

COMMANDS = ("distill", "eval", "export")


def _user_errors() -> tuple[type[BaseException], ...]:
    from data.records import DataError
    from training.embedding.errors import EmbeddingDataError, EmbeddingSetupError

    return (EmbeddingSetupError, EmbeddingDataError, DataError, FileNotFoundError)


def distill_parser():
    """TRL's parser (as ``python -m training.distill`` uses): every config field, and ``--config FILE.yaml``
    with command-line values winning over the file's."""
    from trl import TrlParser

    from training.embedding.config import EncoderDistillConfig

    return TrlParser(EncoderDistillConfig, prog="python -m training.embedding distill", description="Multi-stage distillation of a sentence encoder (bottleneck, recurrence, pairs).")


def eval_parser(export: bool = False) -> argparse.ArgumentParser:
    if export:
        p = argparse.ArgumentParser(prog="python -m training.embedding export", description="ONNX and int8 ONNX of a student, with fidelity measured again after export.")
        p.add_argument("--student", required=True, help="student folder (sentence-transformers), or a spec such as st:<folder>")
        p.add_argument("--out", help="folder of the ONNX files (default <student>/onnx)")
    else:
        p = argparse.ArgumentParser(prog="python -m training.embedding eval", description="Fidelity, MSE, recall@1, size and speed of students beside their teacher (held-out split).")
        p.add_argument("--student", required=True, nargs="+", help="student folder(s) (sentence-transformers), or specs such as st:<folder>")
    p.add_argument("--teacher", default="minilm", help="teacher spec or folder (default minilm)")
    p.add_argument("--data", nargs="*", default=[], help="MCQ JSONL file(s); default: the --domain seed pool")
    p.add_argument("--domain", default="clinical", help="domain whose seed pool is the data when --data is not given")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="held-out fraction, as in distill (default 0.1)")
    p.add_argument("--max-seq-length", type=int, default=128, help="token limit per sentence (default 128)")
    p.add_argument("--no-speed", action="store_true", help="skip the throughput measurement")
    p.add_argument("--device", default="cpu", help="device (default cpu: throughput is a CPU figure)")
    return p


def run_distill(argv: Sequence[str]) -> int:
    from data.cli import trl_parse
    from training.embedding.distill import distill_encoder
    from training.embedding.errors import EmbeddingSetupError

    try:
        (cfg,) = trl_parse(distill_parser(), argv)
    except ValueError as e:  # TRL's refusal of unknown keys in a --config file, our own range checks
        raise EmbeddingSetupError(str(e)) from None
    from data.records import check_writable

    check_writable(cfg.out, "--out")  # before the teacher loads; the folder itself is made once the data is read
    distill_encoder(cfg)
    return 0


def run_eval(argv: Sequence[str], export: bool = False) -> int:
    from pathlib import Path

    from training.embedding.config import EncoderDistillConfig
    from training.embedding.distill import load_data
    from training.embedding.encoders import encoder_path, load_encoder
    from training.embedding.evaluate import (
        STEncoder,
        embed_texts,
        eval_texts,
        evaluate_encoder,
        print_table,
    )

    args = eval_parser(export).parse_args(argv)
    if export and args.out:
        from data.records import check_writable

        check_writable(args.out, "--out")
    cfg = EncoderDistillConfig(out="-", data=args.data, domain=args.domain, dev_fraction=args.dev_fraction, stages="3")
    data = load_data(cfg)
    teacher = load_encoder(args.teacher, args.device, args.max_seq_length)
    texts = eval_texts(data.dev_pairs, data.dev_items)
    teacher_embed = embed_texts(STEncoder(teacher), texts)
    speed_texts = None if args.no_speed else texts[:512]
    rows = [evaluate_encoder(f"teacher ({args.teacher})", STEncoder(teacher), teacher_embed, data.dev_pairs, data.dev_items, model=teacher, speed_texts=speed_texts, embed=teacher_embed)]
    for spec in [args.student] if export else args.student:
        model = load_encoder(spec, args.device, args.max_seq_length)
        rows.append(evaluate_encoder(spec, STEncoder(model), teacher_embed, data.dev_pairs, data.dev_items, model=model, speed_texts=speed_texts, teacher_speed=rows[0].sentences_per_s))
        if export:
            from training.embedding.export import OnnxEncoder, export_all

            files = export_all(model, Path(args.out) if args.out else encoder_path(spec) / "onnx")
            for kind, path in files.items():
                enc = OnnxEncoder(path, model.tokenizer, model.max_seq_length)
                rows.append(evaluate_encoder(f"{spec} {kind}", enc, teacher_embed, data.dev_pairs, data.dev_items, model=model, speed_texts=speed_texts, size_bytes=path.stat().st_size, teacher_speed=rows[0].sentences_per_s))
                print(f"{kind}: {path} (fidelity {rows[-1].fidelity - rows[1].fidelity:+.4f} against the torch model)")
    print_table(rows, f"held-out: {len(data.dev_pairs)} pairs, {len(data.dev_items)} items")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, rest = argv[0], argv[1:]
    try:
        return run_distill(rest) if command == "distill" else run_eval(rest, export=command == "export")
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
