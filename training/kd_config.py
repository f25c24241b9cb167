"""``KDConfig``: the options of knowledge-distillation training, on top of TRL's ``SFTConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from trl import SFTConfig

from training.kv.adapters import HEAD_MIXING
from training.kv.fusion import ENTROPY_MODES, KV_FUSIONS, PROTOTYPES, ROUTERS, SIMILARITIES
from training.losses.kd import KD_LOSS_TYPES



def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or (xpu is not None and xpu.is_available())
        or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    )


@dataclass
class KDConfig(SFTConfig):
    r"""
    Configuration for [`training.KDTrainer`]: every [`~trl.SFTConfig`] option plus the distillation ones.

    The loss is `alpha * KD + (1 - alpha) * CE`, both averaged over the completion tokens, plus optional
    objectives with their own weights (`hidden_loss_weight`, `weight_match_weight`; see
    `training.objectives`). KD compares the student with an online teacher model (`teacher_model`) or with
    sparse top-k teacher log-probs stored on disk (`logits_dir`, written by
    `training.teacher_logits.extract_teacher_logits`).

    Differences from [`~trl.SFTConfig`]: `bf16` and `gradient_checkpointing` default to whether CUDA is
    available (both on with a GPU, both off on CPU, where bf16 autocast is slow and checkpointing only
    costs time); an explicit value is always kept. Without any accelerator `use_cpu` is set, so several
    launched CPU processes train data-parallel instead of each training alone. `kd_loss_type` is not `loss_type`: SFTConfig's
    `loss_type` ("nll"/"dft") still names the CE variant that SFTTrainer validates.
    """

    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the KD term: loss = alpha * KD + (1 - alpha) * CE. 1 is pure distillation, 0 plain SFT."},
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "KD temperature T: both distributions are softened by T and the KD term is scaled by T^2."},
    )
    kd_loss_type: str = field(
        default="forward_kl",
        metadata={
            "help": "Divergence: forward_kl = KL(teacher||student), reverse_kl = KL(student||teacher), jsd = "
            "generalized JSD with weight beta.",
            "choices": list(KD_LOSS_TYPES),
        },
    )
    beta: float = field(
        default=0.5,
        metadata={"help": "JSD interpolation weight (kd_loss_type=jsd): 0 is forward KL, 1 reverse KL."},
    )
    skew: float = field(
        default=0.1,
        metadata={
            "help": "Skew weight lambda in [0, 1) for kd_loss_type skew_forward_kl = KL(p_t || lambda p_t + (1 - lambda) p_s) "
            "and skew_reverse_kl; 0 is plain KL."
        },
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per chunk of the fused LM head + loss: the student's (and an online teacher's) logits exist "
            "for this many tokens at a time, never for the whole batch. Default: from the vocabulary size and the "
            "device (training.losses.auto_chunk_size). 0 = one chunk (still never kept for backward)."
        },
    )
    loss_compile: bool | None = field(
        default=None,
        metadata={
            "help": "Run each chunk's softmaxes, divergence and gradient through torch.compile (a few fused loops instead "
            "of one pass per operation; same formulas). Default: on when the student's vocabulary has at least 8192 "
            "entries (training.losses.fused.compile_pays: below that the elementwise work is small next to "
            "compiling). Falls back to eager, with a warning, where compilation fails."
        },
    )
    top_k: int = field(
        default=32,
        metadata={
            "help": "Teacher log-probs kept per token (plus one tail bucket). Offline: the first top_k of the stored "
            "ones (all of them if fewer were stored). Online: the teacher is truncated the same way, so online and offline "
            "runs train on the same signal; 0 uses the full teacher distribution (online only)."
        },
    )
    teacher_model: str | None = field(
        default=None,
        metadata={
            "help": "Online teacher: a local model folder (the CLI also takes a model spec such as smollm2). "
            "Mutually exclusive with logits_dir.",
            "aliases": ["--teacher"],
        },
    )
    logits_dir: str | None = field(
        default=None,
        metadata={
            "help": "Offline teacher: folder of stored sparse top-k log-probs (index.json + safetensors shards).",
            "aliases": ["--logits"],
        },
    )
    hidden_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of hidden-state distillation (needs an online teacher): projected student hidden states match "
            "the teacher's at hidden_layer_map. 0 = off."
        },
    )
    hidden_layer_map: str = field(
        default="auto",
        metadata={
            "help": "Student:teacher hidden-state indices, e.g. '2:4,4:8' (0 = embeddings, n = last layer), or 'auto' "
            "(every student layer to the teacher layer at the same relative depth)."
        },
    )
    hidden_loss_type: str = field(
        default="mse",
        metadata={"help": "Hidden-state distance: mse (normalised by the teacher's mean square) or cosine.", "choices": ["mse", "cosine"]},
    )
    weight_match_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of layer-weight distillation (needs an online teacher): the student's attention weights "
            "(weight_match_modules) are pulled to the teacher's at weight_match_layer_map. 0 = off."
        },
    )
    weight_match_layer_map: str = field(
        default="auto",
        metadata={"help": "Student:teacher decoder layers (0-based), e.g. '0:0,7:14', or 'auto' (same relative depth)."},
    )
    weight_match_modules: list[str] = field(
        default_factory=lambda: ["self_attn.q_proj", "self_attn.o_proj"],
        metadata={"help": "Modules of each decoder layer whose weights are matched (attention query and output by default)."},
    )
    trajectory_checkpoints: list[str] | None = field(
        default=None,
        metadata={
            "help": "Route-constrained distillation (training.trajectory.route): the teacher's own fine-tuning checkpoints, "
            "in training order (folders of causal LMs with the student's tokenizer). The student's projected hidden states "
            "are pulled to the anchor of the current training stage. Off when unset.",
        },
    )
    trajectory_loss_weight: float = field(
        default=0.3,
        metadata={"help": "Weight of the trajectory term (the seed's 0.3); used only with trajectory_checkpoints."},
    )
    trajectory_points: int = field(
        default=3,
        metadata={"help": "Anchors spread evenly over trajectory_checkpoints (the last is the final one); the seed used 3."},
    )
    kv_teachers: list[str] | None = field(
        default=None,
        metadata={
            "help": "KV-cache distillation from these teachers (model specs or folders, comma-separated: smollm2,minilm). "
            "Each reads the text through its own tokenizer and chat template; their keys/values at mapped layers are "
            "aligned to the student's tokens, projected into its heads and fused (training.kv). Off when unset.",
            "aliases": ["--kv-teachers"],
        },
    )
    kv_dir: str | None = field(
        default=None,
        metadata={
            "help": "Offline KV teachers: a folder written by python -m training.teacher_kv (index.json + shards); no "
            "teacher model is loaded. Replaces kv_teachers.",
            "aliases": ["--kv-dir"],
        },
    )
    kv_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the KV objective in the total loss (logged unweighted as kv_loss)."})
    kv_layer_map: str = field(
        default="ratio",
        metadata={
            "help": "Teacher layers to student layers: ratio (teacher layer l goes to student layer round(l * L_s / L_t), "
            "several averaged), uniform (same relative depth, interpolated), skip (one teacher layer each) or pairs "
            "'s:t,s:t' (0-based)."
        },
    )
    kv_lambda_k: float = field(default=1.0, metadata={"help": "Weight of the keys' normalised MSE."})
    kv_lambda_v: float = field(default=1.0, metadata={"help": "Weight of the values' normalised MSE."})
    kv_beta: float = field(default=0.0, metadata={"help": "Weight of 1 - cos between student and teacher K and V (per head)."})
    kv_gamma: float = field(
        default=0.0,
        metadata={"help": "Weight of KL(teacher || student) between head-averaged attention maps, the teacher's mapped through the token alignment."},
    )
    kv_fusion: str = field(
        default="fixed",
        metadata={
            "help": "How teachers are combined: fixed (kv_weights), similarity (to teacher prototypes), learnable "
            "(a router on the student's hidden states), mince / avgce (FuseLLM: per sequence the teacher with the "
            "lowest CE per character / softmax(-CE)), domain (each item to the teacher owning its tag).",
            "choices": list(KV_FUSIONS),
            "aliases": ["--fusion"],
        },
    )
    kv_weights: list[float] | None = field(default=None, metadata={"help": "Fixed fusion weights, one per teacher (default equal)."})
    kv_teacher_domains: list[str] | None = field(
        default=None,
        metadata={
            "help": "kv_fusion domain: the item tags each teacher owns, one entry per teacher, tags joined by | "
            "(e.g. 'medmcqa|medqa' 'mmlu'). An item goes to the first teacher owning its tag (its source for MCQ "
            "items), to all equally if none does."
        },
    )
    kv_router: str = field(default="mlp", metadata={"help": "Learned router: mlp, gate or attention.", "choices": list(ROUTERS), "aliases": ["--router"]})
    kv_router_target: str = field(
        default="loss",
        metadata={
            "help": "What trains the learned router: loss (end to end through the fused KV loss, plus the entropy term) "
            "or teacher_ce (a KL to softmax(-CE per character / kv_ce_temperature) of the teachers on each sequence; "
            "needs decoder teachers; the fused loss then does not move the router).",
            "choices": ["loss", "teacher_ce"],
        },
    )
    kv_granularity: str = field(default="token", metadata={"help": "Routing per token or per sequence.", "choices": ["token", "sequence"]})
    kv_similarity: str = field(default="cosine", metadata={"help": "Similarity routing: cosine, dot or l2.", "choices": list(SIMILARITIES)})
    kv_prototype: str = field(
        default="mean",
        metadata={"help": "Teacher prototypes for similarity routing: mean (pooled), first (first token) or kmeans (4 centroids).", "choices": list(PROTOTYPES)},
    )
    kv_tau: float = field(default=0.1, metadata={"help": "Similarity routing temperature: w = softmax(sim / tau)."})
    kv_entropy: str = field(
        default="diverse",
        metadata={
            "help": "Learned-router regulariser: diverse (against collapse: log T - H(batch mean weights)), specialized "
            "(crisp choices: mean H(w)) or none.",
            "choices": list(ENTROPY_MODES),
        },
    )
    kv_entropy_weight: float = field(default=0.01, metadata={"help": "Strength of the router's entropy term."})
    kv_head_mixing: str = field(
        default="auto",
        metadata={"help": "K/V head adapter: group (heads grouped or expanded; the counts must divide), dense (any counts) or auto.", "choices": list(HEAD_MIXING)},
    )
    kv_rope: str = field(
        default="pre",
        metadata={
            "help": "pre: compare keys before rotary embedding (RoPE bases and lengths do not matter); post_ntk: after it, "
            "the teacher's keys rotated with its base NTK-scaled by kv_ntk_scale.",
            "choices": ["pre", "post_ntk"],
        },
    )
    kv_ntk_scale: float = field(default=1.0, metadata={"help": "Context scale s of the NTK base, base * s^(d / (d - 2)) (kv_rope post_ntk)."})
    kv_ce_temperature: float = field(default=1.0, metadata={"help": "avgce: weights softmax(-CE / temperature)."})
    kv_phase: int | None = field(
        default=None,
        metadata={
            "help": "Curriculum phase for the whole run (kv_recipe): 1 two teachers fixed 0.5/0.5, 2 two or three "
            "heterogeneous teachers fixed, 3 all decoders with similarity routing, 4 learnable router + entropy, 5 "
            "cross-architecture with an encoder. The phase sets the teachers it uses and its fusion; other kv_* options apply.",
            "aliases": ["--phase"],
        },
    )
    kv_schedule: str | None = field(
        default=None,
        metadata={"help": "Switch curriculum phase by optimizer step, 'phase:start_step,...' (e.g. '1:0,4:200,5:400'); replaces kv_phase."},
    )
    kv_recipe: str | None = field(
        default=None,
        metadata={"help": "YAML file of the curriculum phases (default: training/kv/recipes/curriculum.yaml)."},
    )
    lora_r: int = field(
        default=0,
        metadata={"help": "LoRA rank; 0 trains the full student, > 0 trains (and saves) a LoRA adapter only."},
    )
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = lora_alpha / lora_r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names that get LoRA adapters; default: every linear layer except the LM head."},
    )
    # Overrides of SFTConfig defaults (see the class docstring).
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute activations in the backward pass to save memory. Default: on with CUDA, off without."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Default: on with CUDA (unless fp16), off without."},
    )

    def __post_init__(self) -> None:
        if not self.use_cpu and not _has_accelerator():
            # Explicit CPU mode is what lets accelerate set up CPU data parallelism (gloo) when launched with
            # several processes (`accelerate launch --multi_gpu --num_processes 2` or torchrun) on a machine
            # without a GPU; on one process it changes nothing.
            self.use_cpu = True
        cuda = torch.cuda.is_available() and not self.use_cpu
        if self.bf16 is None:
            self.bf16 = cuda and not self.fp16
        if self.gradient_checkpointing is None:
            self.gradient_checkpointing = cuda
        checks = [
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.kd_loss_type in KD_LOSS_TYPES, f"kd_loss_type must be one of {', '.join(KD_LOSS_TYPES)}, got {self.kd_loss_type!r}"),
            (0.0 <= self.beta <= 1.0, f"beta must be in [0, 1], got {self.beta}"),
            (0.0 <= self.skew < 1.0, f"skew must be in [0, 1), got {self.skew}"),
            (self.loss_chunk_size is None or self.loss_chunk_size >= 0,
             f"loss_chunk_size must be >= 0 (or unset: automatic), got {self.loss_chunk_size}"),
            (self.hidden_loss_weight >= 0, f"hidden_loss_weight must be >= 0, got {self.hidden_loss_weight}"),
            (self.hidden_loss_type in ("mse", "cosine"), f"hidden_loss_type must be mse or cosine, got {self.hidden_loss_type!r}"),
            (self.weight_match_weight >= 0, f"weight_match_weight must be >= 0, got {self.weight_match_weight}"),
            (bool(self.weight_match_modules), "weight_match_modules must name at least one module"),
            (
                not (self.logits_dir and (self.hidden_loss_weight > 0 or self.weight_match_weight > 0)),
                "hidden_loss_weight / weight_match_weight need an online teacher_model, not stored logits_dir",
            ),
            (self.trajectory_loss_weight >= 0, f"trajectory_loss_weight must be >= 0, got {self.trajectory_loss_weight}"),
            (self.trajectory_points >= 1, f"trajectory_points must be >= 1, got {self.trajectory_points}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (not (self.teacher_model and self.logits_dir), "set teacher_model (online) or logits_dir (offline), not both"),
            (not (self.logits_dir and self.top_k == 0), "top_k=0 (full teacher distribution) needs an online teacher_model"),
            (self.kv_loss_weight >= 0, f"kv_loss_weight must be >= 0, got {self.kv_loss_weight}"),
            (not (self.kv_teachers and self.kv_dir), "set kv_teachers (online) or kv_dir (stored K/V), not both"),
            (self.lora_r >= 0, f"lora_r must be >= 0, got {self.lora_r}"),
            (self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}"),
            (0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.kv_teachers is not None:
            from training.kv.teachers import teacher_specs

            self.kv_teachers = teacher_specs(self.kv_teachers) or None
        self.kv_settings()  # range checks of the kv_* fields
        self.kv_curriculum()  # the recipe parses and the phase / schedule exist
        if self.kv_teachers and self.kv_weights is not None and len(self.kv_weights) != len(self.kv_teachers):
            raise ValueError(f"kv_weights has {len(self.kv_weights)} entries for {len(self.kv_teachers)} kv_teachers")
        if self.kv_teachers and self.kv_teacher_domains is not None and len(self.kv_teacher_domains) != len(self.kv_teachers):
            raise ValueError(
                f"kv_teacher_domains has {len(self.kv_teacher_domains)} entries for {len(self.kv_teachers)} kv_teachers"
            )
        super().__post_init__()

    def kv_settings(self) -> Any:
        """The ``training.kv.KVSettings`` of the ``kv_*`` fields."""
        from training.kv.settings import KVSettings

        return KVSettings.from_config(self)

    def kv_curriculum(self) -> tuple[dict[int, Any], list[tuple[int, int]]]:
        """``(phases, schedule)``: the recipe's phases and ``[(start_step, phase)]`` (empty without a phase)."""
        if self.kv_phase is None and not self.kv_schedule:
            return {}, []
        if not self.kv_teachers and not self.kv_dir:
            raise ValueError("kv_phase / kv_schedule need kv_teachers (or kv_dir)")
        if self.kv_phase is not None and self.kv_schedule:
            raise ValueError("set kv_phase (one phase) or kv_schedule (phases by step), not both")
        from training.kv.curriculum import load_recipe, parse_schedule

        phases = load_recipe(self.kv_recipe)
        if self.kv_schedule:
            return phases, parse_schedule(self.kv_schedule, phases)
        if self.kv_phase not in phases:
            raise ValueError(f"kv_phase {self.kv_phase}: the recipe has phases {sorted(phases)}")
        return phases, [(0, self.kv_phase)]

    def lora_config(self) -> Any:
        """The ``peft.LoraConfig`` these options describe, or None when ``lora_r`` is 0 (full training)."""
        if self.lora_r == 0:
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules or "all-linear",
            task_type="CAUSAL_LM",
        )
