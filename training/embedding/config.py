"""``EncoderDistillConfig``: every option of ``python -m training.embedding distill`` (CLI and YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.embedding.errors import EmbeddingSetupError
from training.embedding.losses import PAIR_LOSSES

STAGES = (2, 3, 4)


@dataclass
class EncoderDistillConfig:
    """Multi-stage distillation of a sentence-transformers teacher into a bottleneck / recurrent student."""

    out: str = field(metadata={"help": "Output folder: one checkpoint folder per stage (stage2/, stage3/, stage4/) and student/, the last one."})
    teacher: str = field(default="minilm", metadata={"help": "Teacher: minilm (the embedded all-MiniLM-L6-v2), st:<folder>, or a sentence-transformers folder."})
    data: list[str] = field(default_factory=list, metadata={"help": "MCQ JSONL files (questions and options are the sentences). Default: the --domain pool."})
    domain: str = field(default="clinical", metadata={"help": "Domain whose seed pool is the data when --data is not given."})
    sentences: str | None = field(default=None, metadata={"help": "Plain text file of more in-domain sentences, one per line, trained on in stages 2 and 3 beside the items' texts (held-out questions are removed from it)."})
    pairs: str | None = field(default=None, metadata={"help": "Parallel file for stage 4 (source TAB target per line). Default: in-domain pairs (question <-> key option)."})
    stages: str = field(default="2,3,4", metadata={"help": "Stages to run, comma-separated, from 2 (bottleneck), 3 (recurrence), 4 (pairs)."})
    bottleneck: int = field(default=128, metadata={"help": "Bottleneck embedding size E (0: keep the teacher's full word-embedding table)."})
    keep: int = field(default=3, metadata={"help": "Unique transformer layers kept, evenly spaced over the teacher's (ignored when --layers is given)."})
    layers: str | None = field(default=None, metadata={"help": "Explicit teacher layers to keep, comma-separated (e.g. 0,2,4)."})
    repeat: int = field(default=1, metadata={"help": "How many times the kept layers are applied (recurrence: parameters stay, compute grows)."})
    loss: str = field(default="mcl", metadata={"help": "Stage-4 loss: mcl (cosine-matrix match + MSE), mse (Reimers & Gurevych), ce (0.01 x in-batch CE + MSE), bool (identity match + MSE)."})
    pair_targets: str = field(default="auto", metadata={"help": "Stage-4 teacher targets: source (the teacher reads only the source; the seed's cross-lingual setting), both (it reads both sides), auto (source for a --pairs file, both for in-domain pairs, whose target is no paraphrase)."})
    scale: float = field(default=20.0, metadata={"help": "Similarity scale of the ce loss."})
    ce_weight: float = field(default=0.01, metadata={"help": "Weight of the cross-entropy term of the ce loss."})
    stage2_epochs: float = field(default=2.0, metadata={"help": "Epochs of stage 2 over the sentences."})
    stage3_epochs: float = field(default=4.0, metadata={"help": "Epochs of stage 3 over the sentences."})
    stage4_epochs: float = field(default=1.0, metadata={"help": "Epochs of stage 4 over the pairs."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size (in-batch similarity matrices of stage 4 are batch x batch)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate of stages 3 and 4 (the seed used 1.6e-4 over far more data and epochs)."})
    stage2_learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of stage 2 (only the embedding layer trains)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of each stage's steps spent warming up."})
    max_seq_length: int = field(default=128, metadata={"help": "Token limit per sentence (the teacher's own limit when lower)."})
    dev_fraction: float = field(default=0.1, metadata={"help": "Fraction of items held out (by a hash of the id) for evaluation."})
    seed: int = field(default=0, metadata={"help": "Random seed of training."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:1 ... (auto: cuda when present)."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where teacher targets are cached (default: <out>/cache)."})

    def __post_init__(self) -> None:
        if not self.out:
            raise EmbeddingSetupError("--out is required")
        try:
            self.stage_list = sorted({int(s) for s in str(self.stages).split(",") if s.strip()})
        except ValueError:
            raise EmbeddingSetupError(f"--stages takes numbers from {STAGES} separated by commas, got {self.stages!r}") from None
        if not self.stage_list or any(s not in STAGES for s in self.stage_list):
            raise EmbeddingSetupError(f"--stages takes numbers from {STAGES} separated by commas, got {self.stages!r}")
        if 2 in self.stage_list and not self.bottleneck:
            raise EmbeddingSetupError("stage 2 trains the bottleneck embedding: give --bottleneck E > 0 or leave 2 out of --stages")
        if self.loss not in PAIR_LOSSES:
            raise EmbeddingSetupError(f"--loss must be one of {', '.join(PAIR_LOSSES)}, got {self.loss!r}")
        if self.pair_targets not in ("auto", "source", "both"):
            raise EmbeddingSetupError(f"--pair-targets must be auto, source or both, got {self.pair_targets!r}")
        if self.bottleneck < 0 or self.keep < 0 or self.repeat < 1:
            raise EmbeddingSetupError("--bottleneck and --keep must be >= 0 and --repeat >= 1")
        if self.batch_size < 2:
            raise EmbeddingSetupError(f"--batch-size must be at least 2 (in-batch similarities), got {self.batch_size}")
        for name in ("stage2_epochs", "stage3_epochs", "stage4_epochs", "learning_rate", "stage2_learning_rate", "scale"):
            if getattr(self, name) <= 0:
                raise EmbeddingSetupError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise EmbeddingSetupError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.layers is not None:
            try:
                self.layer_list = tuple(int(x) for x in self.layers.split(",") if x.strip())
            except ValueError:
                raise EmbeddingSetupError(f"--layers takes teacher layer numbers separated by commas, got {self.layers!r}") from None
        else:
            self.layer_list = None

    def resolved_pair_targets(self, data) -> str:
        """``pair_targets`` with auto resolved for the data at hand."""
        if self.pair_targets != "auto":
            return self.pair_targets
        return "source" if data.pairs_source == "parallel file" else "both"
