"""``KDTrainer``: TRL's ``SFTTrainer`` with a knowledge-distillation loss and pluggable objectives.

Only the loss changes. ``compute_loss`` runs the student backbone itself (SFTTrainer's own forward
returns fused per-token log-probs, not a distribution to distil from) and hands the final hidden states
of the completion positions to ``training.losses.fused_linear_distillation``, which applies the LM head
and CE + KD chunk by chunk in float32 without ever holding the batch's logits. The teacher is an online
model (its hidden states, chunked the same way) or sparse top-k log-probs that the collator put in the
batch (``teacher_topk_ids`` / ``teacher_topk_logprobs``, aligned with ``labels``). Extra objectives
(``training.objectives``) add weighted terms. Datasets, collation, PEFT, logging, saving and
``accelerate launch`` all stay SFTTrainer's.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from typing import Any, Mapping, Sequence

import torch
from accelerate.utils import is_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import SFTTrainer
from trl.models import prepare_deepspeed
from trl.models.utils import _ForwardRedirection

from training.kd_config import KDConfig
from training.losses.fused import (
    DenseTeacher,
    LinearHead,
    TopKTeacher,
    compile_pays,
    fused_linear_distillation,
)
from training.losses.kd import get_divergence
from training.objectives import (
    HiddenStateObjective,
    LayerWeightObjective,
    Objective,
    ObjectiveInputs,
)

logger = logging.getLogger(__name__)

TEACHER_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs")
OBJECTIVES_FILE = "objectives.safetensors"


def _core(model: torch.nn.Module) -> PreTrainedModel:
    """The causal LM under a PEFT wrapper (LoRA layers are injected in place, so they stay active)."""
    return model.get_base_model() if is_peft_model(model) else model


class KDTrainer(SFTTrainer):
    """
    Distillation trainer: `loss = alpha * KD + (1 - alpha) * CE` on the completion tokens, plus weighted
    objectives.

    Args:
        model: the student, as for [`~trl.SFTTrainer`] (a path, a model or a PEFT model).
        args ([`KDConfig`]): training and distillation options. `args.lora_r > 0` builds the LoRA
            `peft_config` when none is passed; `args.hidden_loss_weight` / `args.weight_match_weight` add
            the built-in objectives.
        teacher_model: online teacher, a model or a local path (default `args.teacher_model`). It must share
            the student's tokenizer; a vocabulary only padded larger or smaller is aligned. Run in eval mode
            under `no_grad`.
        objectives: extra [`training.objectives.Objective`] modules (your own or built-in ones), each added
            as `objective.weight * value`; their parameters are trained with the student.
        kv_teachers: KV-cache teachers (specs, folders or loaded `training.kv.KVTeacher`s; default
            `args.kv_teachers`). Adds the `training.kv.KVDistillation` objective (named `kv`) and wraps the
            collator in `training.kv.KVCollator`, which renders each example's conversation for every
            teacher: from a `messages` column, or from `kv_conversations[example["id"]]`. With `alpha > 0`
            and no other teacher, the first KV teacher also gives the logits, if it shares the student's
            tokenizer.
        kv_conversations: item id -> messages (user turn(s) and the assistant answer), for datasets
            without a `messages` column (as `training.mcq_data.build_dataset` makes them).
        kv_tags: item id -> tag (a domain or task): `kv_fusion="domain"` routes by it, and the routing
            weights are also recorded per tag (`KVDistillation.tag_history`, the per-tag picture).
        **kwargs: passed to [`~trl.SFTTrainer`] (`train_dataset`, `processing_class`, `peft_config`, ...).

    With `args.logits_dir` the batches get the stored top-k teacher log-probs from
    `training.collator.TopKCollator`, which needs a pre-tokenized dataset with an `id` column matching
    the stored items (see `training.mcq_data.build_dataset`). Logged per step: `ce_loss`, `kd_loss`,
    `<objective>_loss` for each objective (unweighted) and `total_loss` (token means of the micro-batches),
    besides SFTTrainer's `loss`, `mean_token_accuracy` and `num_tokens`.

    Use this trainer for off-policy distillation on a fixed dataset (generated items, stored top-k
    logits, extra objectives); TRL's `DistillationTrainer` / `GKDTrainer` distil on-policy from prompts,
    sampling from the student during training.
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
        objectives: Sequence[Objective] = (),
        kv_teachers: Sequence[Any] | None = None,
        kv_conversations: Mapping[str, Sequence[dict[str, str]]] | None = None,
        kv_tags: Mapping[str, str] | None = None,
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
        kv_store = None
        if kv_teachers is None and args.kv_dir:
            from training.kv.store import TeacherKVStore

            kv_store = TeacherKVStore(args.kv_dir)
            kv_teachers = kv_store.teachers()
        self._kv_store = kv_store
        kv_teachers = list(kv_teachers if kv_teachers is not None else (args.kv_teachers or []))
        if args.alpha > 0 and teacher_model is None and not args.logits_dir and data_collator is None and not kv_teachers:
            raise ValueError(
                "KD needs a teacher: pass teacher_model (online), set logits_dir (offline), or a data_collator that "
                "adds teacher_topk_ids / teacher_topk_logprobs; alpha=0 trains with CE only"
            )
        self._kv_logits_from_teacher = bool(
            kv_teachers and args.alpha > 0 and teacher_model is None and not args.logits_dir and data_collator is None
        )
        if peft_config is None:
            peft_config = args.lora_config()
        super().__init__(model, args=args, data_collator=data_collator, peft_config=peft_config, **kwargs)

        self._forward_redirection = _ForwardRedirection()
        student = _core(self.accelerator.unwrap_model(self.model))
        self.student_vocab_size = student.get_output_embeddings().weight.shape[0]
        self.divergence = get_divergence(args.kd_loss_type, args.beta, args.skew)
        self.compile_loss = args.loss_compile if args.loss_compile is not None else compile_pays(self.student_vocab_size)
        self.teacher_model = None
        kv_objective = self._kv_objective(student, kv_teachers, kv_conversations, kv_tags) if kv_teachers else None
        if teacher_model is None and self._kv_logits_from_teacher:
            from training.kv.errors import KVSetupError

            try:
                teacher_model = self._logit_teacher_from_kv(kv_objective.teachers[0])
            except ValueError as e:
                raise KVSetupError(str(e)) from None
        if teacher_model is not None:
            self.teacher_model = self._prepare_teacher(teacher_model)
            logger.info("distilling from an online teacher (%s)", type(self.teacher_model).__name__)
        if args.logits_dir:
            from training.collator import TopKCollator
            from training.teacher_logits import TeacherLogits

            store = TeacherLogits(args.logits_dir)
            logger.info("distilling from stored top-%d logits of %d items in %s", store.k, len(store), store.path)
            from training.kv.collator import KVCollator

            if isinstance(self.data_collator, KVCollator):
                # Both look examples up by id: the stored logits go inside, and the KV collator hands it the ids.
                kv = self.data_collator
                kv.base = TopKCollator(kv.base, store, vocab_size=self.student_vocab_size, top_k=args.top_k)
                kv.forward_key = True
            else:
                self.data_collator = TopKCollator(self.data_collator, store, vocab_size=self.student_vocab_size, top_k=args.top_k)
        extra = [kv_objective] if kv_objective is not None else []
        self.objectives = torch.nn.ModuleList([*self._configured_objectives(student), *extra, *objectives])
        self._setup_objectives()

    # ------------------------------------------------------------------------------------ KV teachers

    def _kv_objective(self, student: PreTrainedModel, specs: Sequence[Any], conversations, tags=None) -> Objective:
        """Load the KV teachers, build the KV objective and put the teachers' tokens into every batch.

        Every refusal (no fast tokenizer, a layer map out of range, heads no adapter bridges, a phase without
        the teachers it needs) is a ``training.kv.errors.KVSetupError``, raised before the first step."""
        from training.kv.errors import KVSetupError

        try:
            return self._build_kv_objective(student, specs, conversations, tags)
        except KVSetupError:
            raise
        except ValueError as e:
            raise KVSetupError(str(e)) from None

    def _build_kv_objective(self, student: PreTrainedModel, specs: Sequence[Any], conversations, tags) -> Objective:
        from training.kv.collator import KVCollator
        from training.kv.objective import KVDistillation
        from training.kv.teachers import KVTeacher, load_kv_teacher

        if self.args.padding_free or self.args.packing:
            raise ValueError("KV teachers align tokens per example: padding_free and packing are not supported")
        settings = self.args.kv_settings()
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32
        lm_head = settings.needs_teacher_ce
        teachers = []
        for n, spec in enumerate(specs):
            if isinstance(spec, KVTeacher):
                teachers.append(spec)
            else:
                head = lm_head or (n == 0 and self._kv_logits_from_teacher)
                teachers.append(load_kv_teacher(str(spec), dtype=dtype, device=self.args.device, lm_head=head))
        phases, schedule = self.args.kv_curriculum()
        objective = KVDistillation(
            student, teachers, settings, weight=self.args.kv_loss_weight, phases=phases, schedule=schedule
        )
        if len(schedule) > 1:
            from training.kv.curriculum import PhaseCallback

            self.add_callback(PhaseCallback(objective, schedule))
        pad_ids = [t.tokenizer.pad_token_id or 0 for t in teachers]
        self.data_collator = KVCollator(
            self.data_collator, self._tokenizer, [t.view for t in teachers], conversations, pad_ids=pad_ids,
            store=self._kv_store, tags=tags,
        )
        objective.tag_names = self.data_collator.tag_names
        objective.student_tokenizer = self._tokenizer  # token labels of the alignment picture
        logger.info("KV distillation from %d teachers: %s", len(teachers), ", ".join(t.spec for t in teachers))
        return objective

    def _logit_teacher_from_kv(self, teacher: Any) -> PreTrainedModel:
        """The first KV teacher as the logit teacher (alpha > 0 and no other teacher), if it can be one."""
        from training.collator import check_same_tokenizer

        model = teacher.model
        if model is None:
            raise ValueError(
                f"alpha={self.args.alpha} distils logits, but the KV teachers are stored K/V (kv_dir) with no model: set "
                "alpha 0, give teacher_model, or logits_dir"
            )
        if not hasattr(model, "lm_head"):
            raise ValueError(
                f"alpha={self.args.alpha} distils logits, but the first KV teacher {teacher.spec} has no LM head (an "
                "encoder): set alpha 0 (KV and CE only), put a decoder sharing the student's tokenizer first, or give "
                "teacher_model"
            )
        try:
            check_same_tokenizer(self._tokenizer, teacher.tokenizer, "student", f"KV teacher {teacher.spec}")
        except ValueError as e:
            raise ValueError(
                f"{e}; alpha={self.args.alpha} distils logits from the first KV teacher: set alpha 0 or give teacher_model"
            ) from None
        return model

    def _prepare_teacher(self, teacher: str | os.PathLike | PreTrainedModel) -> torch.nn.Module:
        if isinstance(teacher, (str, os.PathLike)):
            from training.collator import check_same_tokenizer

            check_same_tokenizer(self._tokenizer, AutoTokenizer.from_pretrained(teacher), "student", "teacher")
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32
            teacher = AutoModelForCausalLM.from_pretrained(teacher, dtype=dtype)
        teacher.eval()
        teacher.requires_grad_(False)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(teacher, self.accelerator)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    # ------------------------------------------------------------------------------------ objectives

    def _configured_objectives(self, student: PreTrainedModel) -> list[Objective]:
        """The built-in objectives switched on by KDConfig weights."""
        args, found = self.args, []
        routed = bool(args.trajectory_checkpoints) and args.trajectory_loss_weight > 0
        if args.hidden_loss_weight == 0 and args.weight_match_weight == 0:
            return self._trajectory_objective(student, None) if routed else found
        if self.teacher_model is None:
            raise ValueError("hidden_loss_weight / weight_match_weight need an online teacher_model")
        teacher = _core(self.accelerator.unwrap_model(self.teacher_model))
        if args.hidden_loss_weight > 0:
            found.append(
                HiddenStateObjective.from_models(
                    student, teacher, args.hidden_layer_map, weight=args.hidden_loss_weight, loss_type=args.hidden_loss_type
                )
            )
        if args.weight_match_weight > 0:
            found.append(
                LayerWeightObjective.from_models(
                    student, teacher, args.weight_match_layer_map, modules=tuple(args.weight_match_modules),
                    weight=args.weight_match_weight,
                )
            )
        if routed:
            found += self._trajectory_objective(student, found[0] if args.hidden_loss_weight > 0 else None)
        return found

    def _trajectory_objective(self, student: PreTrainedModel, hidden: HiddenStateObjective | None) -> list[Objective]:
        """Route-constrained distillation to the teacher's checkpoints; shares the hidden-state
        objective's projections when that objective is on."""
        from training.trajectory.route import TrajectoryObjective, TrajectoryProgress, load_anchors

        args = self.args
        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32  # as the teacher is loaded
        anchors = [a.to(args.device) for a in load_anchors(args.trajectory_checkpoints, args.trajectory_points, student, self._tokenizer, dtype)]
        if hidden is None:
            hidden = HiddenStateObjective.from_models(student, anchors[-1], args.hidden_layer_map, weight=1.0, loss_type=args.hidden_loss_type)
        objective = TrajectoryObjective(anchors, hidden, weight=args.trajectory_loss_weight, share_projection=args.hidden_loss_weight > 0)
        self.add_callback(TrajectoryProgress(objective))
        return [objective]

    def _setup_objectives(self) -> None:
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be unique, got {names}")
        reserved = {"ce", "kd", "total"} & set(names)
        if reserved:
            raise ValueError(f"objective names {sorted(reserved)} are reserved for the logged KD components")
        for objective in self.objectives:
            if objective.needs_teacher and self.teacher_model is None:
                raise ValueError(f"objective {objective.name!r} needs an online teacher_model")
        self.objectives.to(self.args.device)
        if self.accelerator.num_processes > 1:
            # Objective parameters live outside the DDP-wrapped student: average their gradients by hand
            # (every micro-batch; all-reduce is linear, so accumulation stays exact).
            for param in self.objectives.parameters():
                param.register_post_accumulate_grad_hook(self._average_across_processes)
        for objective in self.objectives:
            logger.info("objective %s (weight %g, %d parameters)", objective.name, objective.weight,
                        sum(p.numel() for p in objective.parameters()))

    @staticmethod
    def _average_across_processes(param: torch.Tensor) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad /= dist.get_world_size()

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        # Trainer returns an existing optimizer unchanged: add only what it does not hold yet.
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self.objectives.parameters() if p.requires_grad and id(p) not in held]
        if params:
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        self._save_objectives(output_dir or self.args.output_dir)
        if self.args.should_save:
            for objective in self.objectives:
                objective.save_extra(output_dir or self.args.output_dir)

    def _save_objectives(self, output_dir: str) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in self.objectives.state_dict().items()}
        if state and self.args.should_save:
            from safetensors.torch import save_file

            save_file(state, os.path.join(output_dir, OBJECTIVES_FILE), metadata={"objectives": ",".join(o.name for o in self.objectives)})

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        file = os.path.join(resume_from_checkpoint, OBJECTIVES_FILE)
        if len(self.objectives) and os.path.isfile(file):
            from safetensors.torch import load_file

            self.objectives.load_state_dict(load_file(file, device=str(self.args.device)))

    # ------------------------------------------------------------------------------------------ loss

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        wanted = []
        if self.args.logits_dir or any(o.batch_prefix for o in self.objectives):
            # The collators look up each example's stored teacher rows (or its conversation) by its id.
            wanted.append("id")
        if any(o.batch_prefix for o in self.objectives):
            wanted.append("messages")
        self._signature_columns = [*self._signature_columns, *(c for c in wanted if c not in self._signature_columns)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        teacher_topk = [inputs.pop(key, None) for key in TEACHER_KEYS]
        prefixes = tuple(o.batch_prefix for o in self.objectives if o.batch_prefix)
        extras = {k: inputs.pop(k) for k in [k for k in inputs if prefixes and k.startswith(prefixes)]}
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        model_inputs["use_cache"] = False

        # Through the wrapper's forward (DDP/FSDP/DeepSpeed hooks fire) although we call the backbone.
        unwrapped = self.accelerator.unwrap_model(model)
        out, objective_values, n = self._forward_redirection(
            model, unwrapped, self._kd_forward, unwrapped, model_inputs, labels, teacher_topk, num_items_in_batch, extras
        )
        loss = out.loss
        if objective_values:
            # Objectives are micro-batch means: weight each by its share of the accumulated batch's loss
            # tokens, as the token sums above are, so accumulation steps add up to one batch.
            share = 1.0 if num_items_in_batch is None else n / max(float(num_items_in_batch), 1.0)
            for objective, value in zip(self.objectives, objective_values):
                loss = loss + objective.weight * share * value
        # As Trainer.compute_loss: num_items_in_batch counts every rank's tokens and DDP averages gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        self._log_step(mode, inputs, out, n, objective_values, labels.device)
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
        extras: dict[str, torch.Tensor] | None = None,
    ):
        """Fused CE + KD on the completion positions, and each objective's value: ``(output, values, n_tokens)``."""
        student = _core(unwrapped)
        need_states = any(o.needs_hidden_states for o in self.objectives)
        with ExitStack() as recording:
            for objective in self.objectives:
                recording.enter_context(objective.recording())
            backbone_out = student.base_model(**model_inputs, output_hidden_states=need_states)
        hidden = backbone_out.last_hidden_state  # (B, L, H)
        shift_labels = labels[:, 1:].to(hidden.device)  # position t predicts token t + 1
        mask = shift_labels != -100  # (B, L - 1)
        selected = hidden[:, :-1][mask]  # (N, H)
        targets = shift_labels[mask]  # (N,)

        ids, logprobs = teacher_topk
        teacher, teacher_states = None, None
        if ids is not None and logprobs is not None and self.args.alpha > 0:
            # Stored rows are aligned with labels: row t is the teacher's distribution of token t.
            teacher = TopKTeacher(ids[:, 1:][mask].to(hidden.device), logprobs[:, 1:][mask].to(hidden.device))
        elif self.teacher_model is not None and (self.args.alpha > 0 or need_states):
            t_hidden, teacher_states, t_head = self._teacher_forward(model_inputs, mask, need_states)
            if self.args.alpha > 0:
                teacher = DenseTeacher(t_hidden.to(hidden.device), t_head, top_k=self.args.top_k)
        elif self.args.alpha > 0:
            raise ValueError(
                "the batch has no teacher_topk_ids / teacher_topk_logprobs and the trainer has no teacher_model"
            )
        out = fused_linear_distillation(
            selected,
            LinearHead.of(student),
            targets,
            teacher,
            divergence=self.divergence if teacher is not None else None,
            alpha=self.args.alpha,
            temperature=self.args.temperature,
            num_items_in_batch=num_items_in_batch,
            chunk_size=self.args.loss_chunk_size,
            compile=self.compile_loss,
        )
        values = []
        if len(self.objectives):
            inputs = ObjectiveInputs(
                student=student,
                teacher=None if self.teacher_model is None else _core(self.accelerator.unwrap_model(self.teacher_model)),
                student_hidden_states=backbone_out.hidden_states if need_states else None,
                teacher_hidden_states=teacher_states,
                attention_mask=model_inputs.get("attention_mask", torch.ones_like(model_inputs["input_ids"])),
                extras=extras or {},
                input_ids=model_inputs.get("input_ids"),
            )
            values = [objective(inputs) for objective in self.objectives]
        return out, values, targets.numel()

    @torch.no_grad()
    def _teacher_forward(self, model_inputs: dict[str, Any], mask: torch.Tensor, need_states: bool):
        """The teacher's final hidden states at the loss positions ``(N, H_t)``, all its hidden states if
        asked, and its head cut to the student's vocabulary."""
        self.teacher_model.eval()
        unwrapped = self.accelerator.unwrap_model(self.teacher_model)
        teacher = _core(unwrapped)
        out = self._forward_redirection(
            self.teacher_model, unwrapped, teacher.base_model, **model_inputs, output_hidden_states=need_states
        )
        last = out.last_hidden_state
        return last[:, :-1][mask.to(last.device)], (out.hidden_states if need_states else None), LinearHead.of(teacher)

    def _log_step(self, mode, inputs, out, n, objective_values, device) -> None:
        """Each component of this micro-batch (all processes), as SFTTrainer logs its metrics."""
        gather = self.accelerator.gather_for_metrics
        # CE and KD: token means over every process's micro-batch (sums and counts gathered, not means).
        num_valid = gather(torch.tensor([n], device=device)).sum()
        denominator = num_valid.clamp(min=1).float()
        components = {"ce_loss": gather(out.ce_sum.detach().reshape(1).to(device)).sum() / denominator}
        if out.kd_sum is not None:
            components["kd_loss"] = gather(out.kd_sum.detach().reshape(1).to(device)).sum() / denominator
        total = (1.0 - self.args.alpha) * components["ce_loss"]
        if "kd_loss" in components:
            total = total + self.args.alpha * components["kd_loss"]
        for objective, value in zip(self.objectives, objective_values):
            mean = gather(value.detach().float().reshape(1).to(device)).mean()
            components[f"{objective.name}_loss"] = mean
            total = total + objective.weight * mean
            for key, figure in objective.metrics.items():
                components[f"{objective.name}_{key}"] = gather(torch.tensor([figure], device=device)).mean()
        if "kd_loss" in components or objective_values:
            components["total_loss"] = total
        for name, value in components.items():
            self._metrics[mode][name].append(value.item())

        num_correct = gather(out.num_correct.reshape(1).to(device)).sum()
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = gather(inputs["attention_mask"].sum().reshape(1)).sum().item()
            else:
                tokens = gather(torch.tensor([inputs["input_ids"].numel()], device=device)).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
