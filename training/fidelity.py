"""How close a student is to its teacher, token by token: KL(teacher || student) and top-1 agreement.

Measured on the completion tokens of MCQ items (the tokens distillation trains: the assistant answer
and its end-of-turn token), both models fed the same sequences, full vocabularies, T = 1:

    python -m training.fidelity --student runs/kd-student --teacher smollm2 --data dev.jsonl --limit 200

These are the quantities distillation optimises, so they show whether it worked before any accuracy
difference is measurable on a small model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from data.records import MCQItem

logger = logging.getLogger(__name__)


@dataclass
class Fidelity:
    items: int
    tokens: int
    kl: float  # mean over completion tokens of KL(teacher || student), nats
    top1_agreement: float  # share of completion tokens where both models' argmax is the same token
    student_nll: float  # mean -log p_student(actual token)
    teacher_nll: float


def _load(path_or_model: Any, device: str):
    import torch
    from transformers import AutoModelForCausalLM

    if not isinstance(path_or_model, (str, bytes, os.PathLike)):
        return path_or_model.to(device).eval()
    return AutoModelForCausalLM.from_pretrained(str(path_or_model), dtype=torch.float32).to(device).eval()


def _batches(rows: list[dict[str, Any]], batch_size: int, pad: int, device: str):
    """Right-padded ``(input_ids, attention_mask, shifted targets)`` per batch; targets are -100 off the completion."""
    import torch

    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for i, r in enumerate(chunk):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(r["labels"])
        yield ids.to(device), mask.to(device), labels[:, 1:].to(device)


def _completion_log_probs(model: Any, ids, mask, targets, vocab: int):
    """Log-probs ``(N, vocab)`` at the completion positions only (the head runs on those rows alone)."""
    from training.losses.base import tempered_log_probs
    from training.losses.fused import LinearHead

    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    return tempered_log_probs(LinearHead.of(model).logits(hidden[targets != -100], vocab), 1.0)


@dataclass
class TeacherTargets:
    """The teacher's log-probs at the completion tokens of a fixed list of items, computed once and
    reused to measure several students (``tokens x vocab`` float32 in memory)."""

    rows: list[dict[str, Any]]
    logprobs: list[Any]  # one (N_b, V) tensor per batch
    batch_size: int
    pad_id: int


def teacher_targets(teacher: Any, items: Sequence[MCQItem], tokenizer: Any, *, vocab_size: int | None = None,
                    batch_size: int = 8, device: str | None = None) -> TeacherTargets:
    """Run the teacher once over ``items``; ``vocab_size`` (the student's) cuts a padded teacher head."""
    import torch
    from tqdm.auto import tqdm

    from training.mcq_data import tokenize_items

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = _load(teacher, device)
    vocab = vocab_size or model.get_output_embeddings().weight.shape[0]
    rows = tokenize_items(items, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    with torch.inference_mode():
        for ids, mask, targets in tqdm(_batches(rows, batch_size, pad, device), total=-(-len(rows) // batch_size),
                                       desc="teacher", unit="batch", leave=False):
            out.append(_completion_log_probs(model, ids, mask, targets, vocab).cpu())
    return TeacherTargets(rows, out, batch_size, pad)


def teacher_fidelity(
    student: Any,
    teacher: Any,
    items: Sequence[MCQItem] | None = None,
    tokenizer: Any = None,
    *,
    batch_size: int = 8,
    device: str | None = None,
) -> Fidelity:
    """Compare ``student`` with ``teacher`` (models or folders) on the completion tokens of ``items``.

    ``teacher`` may be ``TeacherTargets`` from ``teacher_targets`` (then ``items`` and ``tokenizer`` are
    not needed and the teacher does not run again). Teacher and student must share the tokenizer; a
    teacher head padded wider is cut to the student's vocabulary (as in training).
    """
    import torch
    from tqdm.auto import tqdm

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = _load(student, device)
    vocab = model.get_output_embeddings().weight.shape[0]
    if not isinstance(teacher, TeacherTargets):
        if items is None or tokenizer is None:
            raise ValueError("items and tokenizer are needed unless teacher is precomputed TeacherTargets")
        teacher = teacher_targets(teacher, items, tokenizer, vocab_size=vocab, batch_size=batch_size, device=device)
    kl_sum = agree = s_nll = t_nll = 0.0
    tokens = 0
    batches = _batches(teacher.rows, teacher.batch_size, teacher.pad_id, device)
    with torch.inference_mode():
        for (ids, mask, targets), t_lp in tqdm(zip(batches, teacher.logprobs), total=len(teacher.logprobs),
                                               desc="student", unit="batch", leave=False):
            s_lp = _completion_log_probs(model, ids, mask, targets, vocab)
            t_lp = t_lp.to(s_lp.device)
            if t_lp.shape != s_lp.shape:
                raise ValueError(f"teacher log-probs {tuple(t_lp.shape)} do not match the student's {tuple(s_lp.shape)}")
            y = targets[targets != -100]
            kl_sum += (t_lp.exp() * (t_lp - s_lp)).sum().item()
            agree += (s_lp.argmax(-1) == t_lp.argmax(-1)).sum().item()
            s_nll -= s_lp.gather(-1, y[:, None]).sum().item()
            t_nll -= t_lp.gather(-1, y[:, None]).sum().item()
            tokens += len(y)
    n = max(tokens, 1)
    return Fidelity(len(teacher.rows), tokens, kl_sum / n, agree / n, s_nll / n, t_nll / n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.fidelity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="student model spec or folder (smollm2?layers=15, PATH)")
    parser.add_argument("--teacher", required=True, help="teacher model spec or folder (same tokenizer)")
    parser.add_argument("--data", required=True, nargs="+", help="MCQ JSONL file(s)")
    parser.add_argument("--limit", type=int, default=0, help="first N items only (0 = all)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from transformers import AutoTokenizer

    from data.records import DataError
    from engines.smollm2 import ModelNotFoundError
    from training.collator import check_same_tokenizer
    from training.distill import resolve_model_path
    from training.mcq_data import read_training_items

    try:
        if args.limit < 0 or args.batch_size < 1:
            raise ValueError(f"--limit must be >= 0 and --batch-size >= 1, got {args.limit} and {args.batch_size}")
        items = read_training_items(args.data)
        items = items[: args.limit] if args.limit else items
        student, teacher = resolve_model_path(args.student), resolve_model_path(args.teacher)
        tokenizer = AutoTokenizer.from_pretrained(student)
        check_same_tokenizer(tokenizer, AutoTokenizer.from_pretrained(teacher))
    except (ValueError, DataError, OSError, ModelNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = teacher_fidelity(student, teacher, items, tokenizer, batch_size=args.batch_size)
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
