"""``KDTrainer``: TRL's ``SFTTrainer`` with a knowledge-distillation loss.

Only the loss changes. ``compute_loss`` runs the student backbone itself (SFTTrainer's own forward
returns fused per-token log-probs, not a distribution to distil from), projects only the completion
positions through the LM head in float32, and mixes CE with KD against either an online teacher model
or sparse top-k teacher log-probs that the collator put in the batch (``teacher_topk_ids`` /
``teacher_topk_logprobs``, aligned with ``labels``). Datasets, collation, PEFT, logging, saving and
``accelerate launch`` all stay SFTTrainer's.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import SFTTrainer
from trl.models import prepare_deepspeed
from trl.models.utils import _ForwardRedirection

from training.kd_config import KDConfig
from training.losses.kd import combine_losses, cross_entropy_loss, kd_loss, topk_kd_loss

logger = logging.getLogger(__name__)

TEACHER_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs")


def _core(model: torch.nn.Module) -> PreTrainedModel:
    """The causal LM under a PEFT wrapper (LoRA layers are injected in place, so they stay active)."""
    return model.get_base_model() if is_peft_model(model) else model


def head_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits of ``hidden`` ``(N, H)`` in float32, outside autocast: never rounded to bf16."""
    head = model.get_output_embeddings()
    config = model.config.get_text_config()
    with torch.autocast(hidden.device.type, enabled=False):
        bias = None if head.bias is None else head.bias.float()
        logits = F.linear(hidden.to(head.weight.device).float(), head.weight.float(), bias)  # (N, V)
        scale = getattr(config, "logit_scale", None)
        if scale is not None:
            logits = logits * scale
        softcap = getattr(config, "final_logit_softcapping", None)
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
    return logits


def match_vocab(teacher_logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Teacher logits over the student's vocabulary: padded rows beyond it are dropped, missing rows get -inf."""
    width = teacher_logits.shape[-1]
    if width > vocab_size:
        return teacher_logits[..., :vocab_size]
    if width < vocab_size:
        return F.pad(teacher_logits, (0, vocab_size - width), value=float("-inf"))
    return teacher_logits


class KDTrainer(SFTTrainer):
    """
    Distillation trainer: `loss = alpha * KD + (1 - alpha) * CE` on the completion tokens.

    Args:
        model: the student, as for [`~trl.SFTTrainer`] (a path, a model or a PEFT model).
        args ([`KDConfig`]): training and distillation options. `args.lora_r > 0` builds the LoRA
            `peft_config` when none is passed.
        teacher_model: online teacher, a model or a local path (default `args.teacher_model`). It must share
            the student's tokenizer; a vocabulary only padded larger or smaller is aligned. Run in eval mode
            under `no_grad`.
        **kwargs: passed to [`~trl.SFTTrainer`] (`train_dataset`, `processing_class`, `peft_config`, ...).

    With `args.logits_dir` the batches get the stored top-k teacher log-probs from
    `training.collator.TopKCollator`, which needs a pre-tokenized dataset with an `id` column matching
    the stored items (see `training.mcq_data.build_dataset`). Logged per step: `ce_loss`, `kd_loss`,
    `total_loss` (token means of the micro-batches), besides SFTTrainer's `loss`, `mean_token_accuracy`
    and `num_tokens`.
    """

    _tag_names = ["trl", "sft", "kd", "atkd"]
    _name = "KD"

    def __init__(
        self,
        model: str | PreTrainedModel | torch.nn.Module,
        args: KDConfig | None = None,
        teacher_model: str | os.PathLike | PreTrainedModel | None = None,
        data_collator: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = KDConfig(output_dir=f"{os.path.basename(str(name).rstrip('/'))}-KD")
        if not isinstance(args, KDConfig):
            raise TypeError(f"args must be a KDConfig, got {type(args).__name__}")
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model
        if teacher_model is not None and args.logits_dir:
            raise ValueError("pass an online teacher_model or an offline logits_dir, not both")
        if args.logits_dir and (args.padding_free or args.packing):
            raise ValueError("stored teacher logits are aligned per example: padding_free and packing are not supported")
        if args.alpha > 0 and teacher_model is None and not args.logits_dir and data_collator is None:
            raise ValueError(
                "KD needs a teacher: pass teacher_model (online), set logits_dir (offline), or a data_collator that "
                "adds teacher_topk_ids / teacher_topk_logprobs; alpha=0 trains with CE only"
            )
        if peft_config is None:
            peft_config = args.lora_config()
        super().__init__(model, args=args, data_collator=data_collator, peft_config=peft_config, **kwargs)

        self._forward_redirection = _ForwardRedirection()
        self.student_vocab_size = _core(self.accelerator.unwrap_model(self.model)).get_output_embeddings().weight.shape[0]
        self.teacher_model = None
        if teacher_model is not None:
            self.teacher_model = self._prepare_teacher(teacher_model)
            logger.info("distilling from an online teacher (%s)", type(self.teacher_model).__name__)
        if args.logits_dir:
            from training.collator import TopKCollator
            from training.teacher_logits import TeacherLogits

            store = TeacherLogits(args.logits_dir)
            logger.info("distilling from stored top-%d logits of %d items in %s", store.k, len(store), store.path)
            self.data_collator = TopKCollator(self.data_collator, store, vocab_size=self.student_vocab_size, top_k=args.top_k)

    def _prepare_teacher(self, teacher: str | os.PathLike | PreTrainedModel) -> torch.nn.Module:
        if isinstance(teacher, (str, os.PathLike)):
            from training.collator import check_same_tokenizer

            check_same_tokenizer(self._tokenizer, AutoTokenizer.from_pretrained(teacher), "student", "teacher")
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32
            teacher = AutoModelForCausalLM.from_pretrained(teacher, dtype=dtype)
        teacher.eval()
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(teacher, self.accelerator)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.args.logits_dir and "id" not in self._signature_columns:
            # The collator looks up each example's stored teacher rows by its id.
            self._signature_columns = [*self._signature_columns, "id"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        teacher_topk = [inputs.pop(key, None) for key in TEACHER_KEYS]
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        model_inputs["use_cache"] = False

        # Through the wrapper's forward (DDP/FSDP/DeepSpeed hooks fire) although we call the backbone.
        unwrapped = self.accelerator.unwrap_model(model)
        ce, kd, logits, targets = self._forward_redirection(
            model, unwrapped, self._kd_forward, unwrapped, model_inputs, labels, teacher_topk, num_items_in_batch
        )
        loss = ce if kd is None else combine_losses(kd, ce, self.args.alpha)
        # As Trainer.compute_loss: num_items_in_batch counts every rank's tokens and DDP averages gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        self._log_step(mode, inputs, ce, kd, logits, targets, num_items_in_batch)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**model_inputs)
            return loss, outputs
        return loss

    def _kd_forward(
        self,
        unwrapped: torch.nn.Module,
        model_inputs: dict[str, Any],
        labels: torch.Tensor,
        teacher_topk: list[torch.Tensor | None],
        num_items_in_batch: int | torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """CE and KD on the completion positions: ``(ce, kd or None, student logits (N, V), targets (N,))``."""
        student = _core(unwrapped)
        hidden = student.base_model(**model_inputs).last_hidden_state  # (B, L, H)
        shift_labels = labels[:, 1:].to(hidden.device)  # position t predicts token t + 1
        mask = shift_labels != -100  # (B, L - 1)
        logits = head_logits(student, hidden[:, :-1][mask])  # (N, V)
        targets = shift_labels[mask]  # (N,)
        ce = cross_entropy_loss(logits, targets, num_items_in_batch=num_items_in_batch)

        ids, logprobs = teacher_topk
        kd_args = dict(
            loss_type=self.args.kd_loss_type,
            beta=self.args.beta,
            temperature=self.args.temperature,
            num_items_in_batch=num_items_in_batch,
        )
        if ids is not None and logprobs is not None:
            # Stored rows are aligned with labels: row t is the teacher's distribution of token t.
            kd = topk_kd_loss(logits, ids[:, 1:][mask], logprobs[:, 1:][mask], **kd_args)
        elif self.teacher_model is not None:
            teacher_logits = self._teacher_logits(model_inputs, mask)  # (N, V)
            if self.args.top_k > 0:
                top_logprobs, top_ids = torch.log_softmax(teacher_logits, dim=-1).topk(self.args.top_k, dim=-1)
                kd = topk_kd_loss(logits, top_ids, top_logprobs, **kd_args)
            else:
                kd = kd_loss(logits, teacher_logits, **kd_args)
        elif self.args.alpha > 0:
            raise ValueError(
                "the batch has no teacher_topk_ids / teacher_topk_logprobs and the trainer has no teacher_model"
            )
        else:
            kd = None
        return ce, kd, logits.detach(), targets

    @torch.no_grad()
    def _teacher_logits(self, model_inputs: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
        self.teacher_model.eval()
        unwrapped = self.accelerator.unwrap_model(self.teacher_model)
        teacher = _core(unwrapped)
        hidden = self._forward_redirection(self.teacher_model, unwrapped, teacher.base_model, **model_inputs)
        logits = head_logits(teacher, hidden.last_hidden_state[:, :-1][mask.to(hidden.last_hidden_state.device)])
        return match_vocab(logits, self.student_vocab_size)

    def _log_step(self, mode, inputs, ce, kd, logits, targets, num_items_in_batch) -> None:
        """Per-micro-batch token means of each component, as SFTTrainer logs its metrics."""
        n = targets.numel()
        # The losses are normalised by the accumulated batch's token count; undo that for a micro-batch mean.
        scale = 1.0 if num_items_in_batch is None else float(num_items_in_batch) / max(n, 1)
        gather = self.accelerator.gather_for_metrics
        components = {"ce_loss": ce.detach() * scale}
        if kd is not None:
            components["kd_loss"] = kd.detach() * scale
            components["total_loss"] = combine_losses(components["kd_loss"], components["ce_loss"], self.args.alpha)
        for name, value in components.items():
            self._metrics[mode][name].append(gather(value.reshape(1)).mean().item())

        num_valid = gather(torch.tensor([n], device=logits.device)).sum()
        num_correct = gather((logits.argmax(dim=-1) == targets).sum().reshape(1)).sum()
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = gather(inputs["attention_mask"].sum().reshape(1)).sum().item()
            else:
                tokens = gather(torch.tensor([inputs["input_ids"].numel()], device=logits.device)).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
