"""Configs of ``python -m training.trajectory``: one dataclass per command (CLI and YAML), TRL style."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.trajectory.errors import TrajectorySetupError
from training.trajectory.synthetic import LABEL_KINDS
from training.trajectory.unroll import MODES

INITS = ("real", "mask-fill", "manifold", "noise")
MATCH_STRATEGIES = ("random", "importance", "diversity", "hybrid")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise TrajectorySetupError(message)


@dataclass
class ExpertsConfig:
    """Train N experts with plain SGD at a constant learning rate, saving their trained parameters
    after every epoch (the trajectories the synthetic set is matched to)."""

    out: str = field(metadata={"help": "Experts folder: experts.json, one expert_<k>/ per expert with epoch_<e>.safetensors."})
    data: str = field(metadata={"help": "Training data: JSONL with a text field and a label field."})
    test: str | None = field(default=None, metadata={"help": "Held-out test JSONL (default: a hash split of --data, --test-fraction of it)."})
    text_field: str = field(default="text", metadata={"help": "Name of the text field."})
    label_field: str = field(default="label", metadata={"help": "Name of the label field."})
    model: str = field(default="head:minilm", metadata={"help": "Student: head:<encoder> (a small position-aware classifier over the encoder's frozen token embeddings) or backbone:<encoder> (the pretrained encoder with a fresh head); <encoder> is minilm, st:<folder> or a folder."})
    train: str = field(default="all", metadata={"help": "What the experts train (and what can be matched): all, head, top:K (top K layers and the head) or deep:F (the deepest fraction F of the parameters); the rest stays frozen."})
    experts: int = field(default=5, metadata={"help": "Number of experts (each from its own random initialisation)."})
    epochs: int = field(default=20, metadata={"help": "Epochs per expert (a checkpoint after each, and one at epoch 0)."})
    learning_rate: float = field(default=0.05, metadata={"help": "Constant plain-SGD learning rate of the experts."})
    batch_size: int = field(default=64, metadata={"help": "Expert batch size."})
    max_length: int = field(default=32, metadata={"help": "Tokens per text (the synthetic rows have the same length)."})
    width: int = field(default=64, metadata={"help": "Width of the head:<encoder> classifier."})
    val_fraction: float = field(default=0.1, metadata={"help": "Fraction of the non-test rows of --data held out for validation (it chooses every evaluation's learning rate and stopping point)."})
    test_fraction: float = field(default=0.2, metadata={"help": "Fraction of --data held out as the test split when --test is not given."})
    seed: int = field(default=0, metadata={"help": "Seed of expert k is seed + k."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})

    def __post_init__(self) -> None:
        _check(self.experts >= 1 and self.epochs >= 1, "--experts and --epochs must be >= 1")
        _check(self.learning_rate > 0 and self.batch_size >= 1 and self.max_length >= 2 and self.width >= 1, "--learning-rate must be > 0, --batch-size >= 1, --max-length >= 2, --width >= 1")
        _check(0 < self.val_fraction < 1 and 0 <= self.test_fraction < 1, "--val-fraction must be in (0, 1) (validation chooses the evaluation settings), --test-fraction in [0, 1)")
        kind, _, encoder = self.model.partition(":")
        _check(kind in ("head", "backbone") and bool(encoder), f"--model takes head:<encoder> or backbone:<encoder>, got {self.model!r}")


@dataclass
class TTMConfig:
    """Learn a synthetic set by matching expert trajectories (MTT) in token-embedding space."""

    experts: str = field(metadata={"help": "Experts folder written by `experts`."})
    out: str = field(metadata={"help": "Synthetic-set folder (synthetic.safetensors, card.json, examples.txt, log.csv)."})
    per_class: int = field(default=10, metadata={"help": "Synthetic examples per class."})
    init: str = field(default="real", metadata={"help": "Initialisation: real (random real examples), mask-fill (real examples with a ratio of tokens masked and refilled by --fill-model's top-k), manifold (sampled in a PCA space of the class's real embeddings), noise."})
    mask_ratio: float = field(default=0.3, metadata={"help": "mask-fill: fraction of each example's tokens masked."})
    fills: int = field(default=2, metadata={"help": "mask-fill: filled variants per real example (each is a synthetic row)."})
    fill_model: str = field(default="smollm2", metadata={"help": "mask-fill: a masked LM folder (fills from both sides) or a causal LM spec (fills from the left context), e.g. smollm2."})
    fill_top_k: int = field(default=10, metadata={"help": "mask-fill: a fill is drawn from the model's k most likely tokens."})
    pca_variance: float = field(default=0.95, metadata={"help": "manifold: variance kept by the PCA of each class's real embeddings."})
    labels: str = field(default="hard", metadata={"help": f"Label kind: {', '.join(LABEL_KINDS)} (soft: softmax of learnt logits; unrestricted: learnt target vectors)."})
    label_confidence: float = field(default=0.9, metadata={"help": "soft labels: initial probability of a row's own class."})
    syn_steps: int = field(default=20, metadata={"help": "Inner steps N a student takes on the synthetic set."})
    expert_epochs: int = field(default=2, metadata={"help": "M: the target is the expert M epochs after the start."})
    max_start_epoch: int = field(default=5, metadata={"help": "The start epoch t is drawn from 0 .. max_start_epoch - 1."})
    batch_syn: int = field(default=0, metadata={"help": "Synthetic rows per inner step (0: all of them)."})
    iterations: int = field(default=500, metadata={"help": "Outer iterations."})
    lr_embeds: float = field(default=0.01, metadata={"help": "Adam learning rate of the synthetic embeddings."})
    lr_labels: float = field(default=0.01, metadata={"help": "Adam learning rate of learnt labels."})
    lr_lr: float = field(default=0.01, metadata={"help": "Adam learning rate of the (softplus) inner learning rates."})
    lr_init: float = field(default=0.0, metadata={"help": "Initial inner learning rate (0: the experts' learning rate)."})
    lr_per_step: bool = field(default=False, metadata={"help": "One learnt learning rate per inner step instead of one for all."})
    lr_max: float = field(default=10.0, metadata={"help": "Upper clamp of the inner learning rate; a run that keeps it there for --patience iterations stops."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the meta-gradient's global norm (0: no clipping)."})
    unroll: str = field(default="adjoint", metadata={"help": f"Meta-gradient: {', '.join(MODES)} (exact: backprop through the unroll, memory grows with steps; adjoint: the same gradient in constant activation memory; tesla: TESLA's, Hessian terms dropped)."})
    match: str = field(default="all", metadata={"help": "Parameters matched and unrolled, among those the experts trained: all, or STRATEGY:F with STRATEGY in random, importance, diversity, hybrid and F the fraction of parameters (see docs/trajectory.md); the rest are held at the start checkpoint."})
    divergence_factor: float = field(default=10.0, metadata={"help": "Stop when the running matching loss exceeds this multiple of its first value for --patience iterations."})
    patience: int = field(default=25, metadata={"help": "Iterations a guard condition must hold before the run stops."})
    eval_every: int = field(default=50, metadata={"help": "Every this many iterations, train a fresh student on the set and log validation accuracy (0: never)."})
    eval_steps: int = field(default=300, metadata={"help": "Training steps of that student."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})

    def __post_init__(self) -> None:
        _check(self.init in INITS, f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        _check(self.labels in LABEL_KINDS, f"--labels must be one of {', '.join(LABEL_KINDS)}, got {self.labels!r}")
        _check(self.unroll in MODES, f"--unroll must be one of {', '.join(MODES)}, got {self.unroll!r}")
        _check(self.per_class >= 1 and self.syn_steps >= 1 and self.expert_epochs >= 1 and self.max_start_epoch >= 1 and self.iterations >= 0, "--per-class, --syn-steps, --expert-epochs and --max-start-epoch must be >= 1, --iterations >= 0")
        _check(0 < self.mask_ratio < 1 and self.fills >= 1 and self.fill_top_k >= 1, "--mask-ratio must be in (0, 1), --fills and --fill-top-k >= 1")
        _check(0 < self.pca_variance <= 1 and 0 < self.label_confidence < 1, "--pca-variance must be in (0, 1], --label-confidence in (0, 1)")
        _check(self.lr_init >= 0 and self.lr_max > 0 and self.divergence_factor > 1 and self.patience >= 1, "--lr-init must be >= 0, --lr-max > 0, --divergence-factor > 1, --patience >= 1")
        _check(self.lr_embeds > 0 and self.lr_labels > 0 and self.lr_lr > 0, "--lr-embeds, --lr-labels and --lr-lr must be > 0")
        _check(self.batch_syn >= 0 and self.eval_every >= 0 and self.eval_steps >= 1 and self.max_grad_norm >= 0, "--batch-syn and --eval-every must be >= 0 (0: all rows / never), --eval-steps >= 1, --max-grad-norm >= 0")
        if self.match != "all":
            strategy, _, frac = self.match.partition(":")
            try:
                ok = strategy in MATCH_STRATEGIES and 0 < float(frac) <= 1
            except ValueError:
                ok = False
            _check(ok, f"--match takes all or STRATEGY:F ({', '.join(MATCH_STRATEGIES)}; 0 < F <= 1), got {self.match!r}")


@dataclass
class EvaluateConfig:
    """Train fresh students on synthetic sets and on baselines of the same size; one table."""

    synthetic: list[str] = field(default_factory=list, metadata={"help": "Synthetic-set folder(s) to evaluate."})
    experts: str | None = field(default=None, metadata={"help": "Experts folder (default: the one named in the first synthetic set's card)."})
    data: str | None = field(default=None, metadata={"help": "Test JSONL (default: the experts' test split)."})
    per_class: int = field(default=0, metadata={"help": "Rows per class of the baselines (default: the synthetic set's)."})
    baselines: str = field(default="random,kcenter,herding,random-soft,full,expert", metadata={"help": "Comma-separated baselines: random, kcenter, herding, random-soft (random subset with the expert's soft labels), full, expert (the experts' own accuracy)."})
    seeds: int = field(default=5, metadata={"help": "Fresh students (and random subsets) per row."})
    steps: int = field(default=300, metadata={"help": "Training steps of each student on a small set (full batch)."})
    full_epochs: int = field(default=0, metadata={"help": "Epochs of the full-data student (0: the experts' epochs)."})
    lrs: str = field(default="0.01,0.03,0.1,0.3,1,3", metadata={"help": "Learning rates tried for every row; each row keeps the one best on validation (a synthetic set's own learnt rate is tried too)."})
    out: str | None = field(default=None, metadata={"help": "Also write the table as CSV here."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})

    def __post_init__(self) -> None:
        _check(self.seeds >= 1 and self.steps >= 1 and self.per_class >= 0 and self.full_epochs >= 0, "--seeds and --steps must be >= 1, --per-class and --full-epochs >= 0")
        try:
            lrs = [float(v) for v in self.lrs.split(",") if v.strip()]
        except ValueError:
            lrs = []
        _check(bool(lrs) and all(v > 0 for v in lrs), f"--lrs takes positive numbers separated by commas, got {self.lrs!r}")
        self.lr_grid = lrs
