"""Multi-stage encoder distillation against its baselines, at 2x, 4x and 8x fewer parameters.

    python -m benchmarks.bench_embedding --groups main,ablations,baselines,seeds [--seeds 10]

Teacher all-MiniLM-L6-v2 (22.7M parameters); data: the clinical development MCQs of ../shared
(questions and options are the sentences; items split 90/10 by a hash of their id, as in
``python -m training.embedding``). Every row is measured on the same held-out pairs and items:
fidelity (Spearman of student vs teacher cosines: the primary figure), MSE x 100, recall@1 (question
→ key option among the item's options), parameters, weights size, layer applications and encode
throughput on this machine (batch 32) with the speed-up over the teacher. Groups:

- main: ours (stages 2, 3, 4 with mcl) at 2x (E=128, 3 layers), 4x (E=48, 2 layers), 8x (E=24, 1 layer);
- ablations at 2x (cheapest first): stage 4 off, the loss (mse, ce, bool), bottleneck off (76% of the
  parameters), stage 2 off (SVD start only), recurrence on (3 layers x 2: same parameters, the
  teacher's compute); at --reference-seed; --ablations picks rows;
- baselines: sentence-transformers' layer drop + MSE (1, 2, 3 layers), PCA to 128 dimensions (a Dense
  layer on the teacher), model2vec static distillation (in a virtual environment of its own, as its
  ``distill`` extra pins transformers < 5.4), the teacher in ONNX and ONNX int8, and ours exported;
- seeds: ours at 2x over --seeds seeds, mean ± std, and how many converged (fidelity within 0.02 of
  the median); --first-seed N trains from seed N on and takes the earlier seeds' rows from the CSV.

Each trained model lives in --work (default ~/.cache/atkd/bench_embedding/<row>), so a killed run
goes on where it stopped. A variant copies the leading stages it shares with its plain row (same
options, same data: a loss ablation trains stage 4 only; bottleneck off starts from layer drop's 3
layers, so run the baselines group first); its train_seconds still count the copied stages. Rows are appended to benchmarks/results/embedding.csv.
"""

from __future__ import annotations

import argparse
import glob
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, append_rows

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "clinical"
GROUPS = ("main", "ablations", "baselines", "seeds")
ABLATIONS = ("stage4-off", "mse", "ce", "bool", "bottleneck-off", "stage2-off", "recurrence")
SHAPES = {"2x": (128, 3), "4x": (48, 2), "8x": (24, 1)}

logger = logging.getLogger(__name__)


class Bench:
    """The teacher, the data split, the teacher's embeddings of the held-out texts, and the rows so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        from training.embedding.config import EncoderDistillConfig
        from training.embedding.distill import load_data
        from training.embedding.encoders import load_encoder
        from training.embedding.evaluate import STEncoder, eval_texts, evaluate_encoder
        from training.embedding.targets import cached_targets

        self.args = args
        self.work = Path(args.work).expanduser()
        self.base = {"data": args.data, "teacher": "minilm", "stage2_epochs": args.stage2_epochs, "stage3_epochs": args.stage3_epochs,
                     "stage4_epochs": args.stage4_epochs, "learning_rate": args.learning_rate, "progress": False, "device": "cpu", "cache_dir": str(self.work / "cache")}
        probe = EncoderDistillConfig(out=str(self.work / "probe"), **self.base)
        self.data = load_data(probe)
        self.teacher = load_encoder("minilm", "cpu", probe.max_seq_length)
        self.texts = eval_texts(self.data.dev_pairs, self.data.dev_items)
        targets = cached_targets(self.teacher, list(dict.fromkeys([*self.data.train_sentences, *self.texts])), self.work / "cache", progress=False)
        self.teacher_embed = dict(zip(self.texts, targets.sentence_of(self.texts)))
        self.speed_texts = self.texts[: args.speed_sentences]
        self.teacher_row = evaluate_encoder("teacher all-MiniLM-L6-v2", STEncoder(self.teacher), self.teacher_embed, self.data.dev_pairs, self.data.dev_items, model=self.teacher, speed_texts=self.speed_texts, embed=self.teacher_embed)
        self.rows: list[dict[str, Any]] = []
        print("data: " + ", ".join(f"{k} {v}" for k, v in self.data.summary().items()))

    def record(self, group: str, row: Any, **extra: Any) -> dict[str, Any]:
        d = {"benchmark": "embedding", "group": group, **asdict(row), "teacher_parameters": self.teacher_row.parameters, **extra}
        d["param_fraction"] = round(row.parameters / self.teacher_row.parameters, 4) if row.parameters else None
        self.rows.append(d)
        append_rows("embedding", [d])  # at once: a run killed later keeps the rows it measured
        print(f"  {row.name}: fidelity {row.fidelity:.4f}, MSE x100 {row.mse_x100:.4f}, recall@1 {row.recall_at_1:.3f}, "
              f"{(row.parameters or 0) / 1e6:.2f}M params, {row.sentences_per_s or 0:.0f} sent/s ({row.speedup or 0:.2f}x)", flush=True)
        return d

    def evaluate(self, name: str, model: Any, encoder: Any = None, size_bytes: int | None = None) -> Any:
        from training.embedding.evaluate import STEncoder, evaluate_encoder

        return evaluate_encoder(name, encoder or STEncoder(model), self.teacher_embed, self.data.dev_pairs, self.data.dev_items, model=model, speed_texts=self.speed_texts, size_bytes=size_bytes, teacher_speed=self.teacher_row.sentences_per_s)

    def train(self, row: str, reuse: str | None = None, **options: Any) -> tuple[Any, float]:
        """Our pipeline with ``options`` into work/<row> (finished stages are reused); model and the
        training seconds of every stage, those copied from ``reuse`` included."""
        from training.embedding.config import EncoderDistillConfig
        from training.embedding.distill import distill_encoder
        from training.embedding.encoders import load_encoder

        start = time.perf_counter()
        cfg = EncoderDistillConfig(out=str(self.work / row), **(self.base | options))
        if reuse:
            self.copy_shared_stages(cfg, self.work / reuse)
        result = distill_encoder(cfg)
        seconds = sum(r.seconds for r in result.reports) or time.perf_counter() - start
        # Measured as a user gets it: loaded from its folder, in eval mode, untouched by the trainer.
        return load_encoder(str(result.folder), "cpu", cfg.max_seq_length), seconds


    def copy_shared_stages(self, cfg: Any, source: Path) -> None:
        """Copy into ``cfg.out`` the leading stages that ``source`` finished with the very options ``cfg``
        gives them (an ablation that changes only stage 4 starts from the main row's stage 3). The first
        stage that differs stops the copy: every later one was trained on top of it. The pipeline checks
        each copied stage's options again when it loads it."""
        import json

        from training.embedding.stages import STAGE_FILE, changed_options, stage_options

        for stage in cfg.stage_list:
            src, dst = source / f"stage{stage}", Path(cfg.out) / f"stage{stage}"
            if dst.exists():
                continue
            if not (src / STAGE_FILE).is_file():
                return
            saved = json.loads((src / STAGE_FILE).read_text(encoding="utf-8"))["options"]
            if changed_options(saved, json.loads(json.dumps(stage_options(cfg, stage, self.data)))):
                return
            tmp = dst.with_name(dst.name + ".copy")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            tmp.rename(dst)
            print(f"  stage {stage}: the same as {src}, copied", flush=True)


def ours(bench: Bench, label: str, seed: int = 0, **options: Any) -> tuple[Any, float]:
    """Our pipeline at ``label``'s shape; a variant reuses the stages it shares with the plain row."""
    e, k = SHAPES[label]
    reuse = f"ours-{label}--s{seed}" if options else None
    return bench.train(f"ours-{label}-{'-'.join(f'{a}{b}' for a, b in sorted(options.items()))}-s{seed}", reuse=reuse, bottleneck=e, keep=k, seed=seed, **options)


def group_main(bench: Bench) -> None:
    print("main: ours (stages 2, 3, 4, mcl) at 2x, 4x, 8x", flush=True)
    for label, (e, k) in SHAPES.items():
        model, secs = ours(bench, label)
        bench.record("main", bench.evaluate(f"ours {label} (E={e}, {k} layers)", model), train_seconds=secs, shape=label)


def group_ablations(bench: Bench) -> None:
    print("ablations at 2x", flush=True)
    seed, wanted = bench.args.reference_seed, bench.args.ablations
    # Cheapest first, so that a run cut short has the most rows: stage 4 off and the losses reuse the
    # plain row's stages (stage 4 only, or nothing), bottleneck off reuses layer drop's stage 3.
    def variant(key: str, name: str, **options: Any) -> None:
        if key in wanted:
            model, secs = ours(bench, "2x", seed=seed, **options)
            bench.record("ablations", bench.evaluate(f"ours 2x, {name}", model), train_seconds=secs, shape="2x", seed=seed)

    variant("stage4-off", "stage 4 off", stages="2,3")
    for loss in ("mse", "ce", "bool"):
        variant(loss, f"loss {loss}", loss=loss)
    if "bottleneck-off" in wanted:
        model, secs = bench.train(f"ours-nobottleneck-k3-s{seed}", reuse=f"layerdrop-k3-s{seed}", bottleneck=0, keep=3, stages="3,4", seed=seed)
        bench.record("ablations", bench.evaluate("ours, bottleneck off (3 layers; 76% of the parameters)", model), train_seconds=secs, shape="1.3x", seed=seed)
    variant("stage2-off", "stage 2 off", stages="3,4")
    variant("recurrence", "recurrence on (3 layers x 2)", repeat=2)


def pca_dense(bench: Bench, dims: int) -> Any:
    """sentence-transformers' recipe: a Dense layer holding the PCA components of training embeddings."""
    import copy

    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    sample = bench.data.train_sentences[:: max(1, len(bench.data.train_sentences) // 20000)]
    emb = bench.teacher.encode(sample, convert_to_tensor=True, show_progress_bar=False, batch_size=64).double()
    mean = emb.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(emb - mean, full_matrices=False)
    model = copy.deepcopy(bench.teacher)
    dense = Dense(in_features=emb.shape[1], out_features=dims, bias=False, activation_function=torch.nn.Identity())
    dense.linear.weight.data = vh[:dims].float()
    model.append(dense)
    return model


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def model2vec_row(bench: Bench) -> dict[str, Any] | None:
    """model2vec's distill in a virtual environment of its own (its extra pins transformers < 5.4)."""
    venv = bench.work / "model2vec-venv"
    py = venv / "bin" / "python"
    out = bench.work / "model2vec"
    from engines.minilm import minilm_path

    try:
        if not py.exists():
            uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
            links = ["--find-links", "/opt/wheels"] if Path("/opt/wheels").is_dir() else []
            subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
            subprocess.run([uv, "pip", "install", "-q", "--python", str(py), *links, "model2vec[distill,quantization]"], check=True, timeout=1800)
        if not (out / "config.json").is_file():
            code = (f"from model2vec.distill import distill; m = distill(model_name={str(minilm_path())!r}, pca_dims=256); m.save_pretrained({str(out)!r})")
            subprocess.run([str(py), "-c", code], check=True, timeout=1800)
    except (subprocess.SubprocessError, OSError) as e:
        print(f"  model2vec could not run: {e}", flush=True)
        return None

    class StaticEncoder:
        def __init__(self) -> None:
            self.encode_calls = 0

        def encode(self, texts, batch_size=32):
            import torch

            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                f.write("\n".join(t.replace("\n", " ") for t in texts))
            npy = Path(f.name).with_suffix(".npy")
            code = (f"import numpy as np; from model2vec import StaticModel; m = StaticModel.from_pretrained({str(out)!r}); "
                    f"t = open({f.name!r}).read().split('\\n'); np.save({str(npy)!r}, m.encode(t, batch_size={batch_size}))")
            subprocess.run([str(py), "-c", code], check=True)
            import numpy as np

            return torch.from_numpy(np.load(npy)).float()

    from training.embedding.evaluate import embed_texts, fidelity, mse_x100, recall_at_1

    enc = StaticEncoder()
    embed = embed_texts(enc, list(bench.teacher_embed))
    from safetensors import safe_open

    files = list(out.rglob("*.safetensors"))
    size = sum(p.stat().st_size for p in files)
    params = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            params += sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    dims = next(iter(embed.values())).numel()
    from training.embedding.evaluate import EvalRow

    mse = mse_x100(embed, bench.teacher_embed) if dims == next(iter(bench.teacher_embed.values())).numel() else float("nan")
    row = EvalRow("model2vec static (PCA 256)", fidelity(embed, bench.teacher_embed, bench.data.dev_pairs), mse, recall_at_1(embed, bench.data.dev_items), params, size / 2**20, 0, None)
    return bench.record("baselines", row, note="throughput not comparable: measured through a subprocess")


def group_baselines(bench: Bench) -> None:
    """Cheapest first: the exports, PCA and model2vec take minutes, each layer-drop row a training run."""
    from training.embedding.export import OnnxEncoder, export_all

    print("baselines", flush=True)
    seed = bench.args.reference_seed
    for name, model in (("teacher", bench.teacher), ("ours 2x", ours(bench, "2x", seed=seed)[0])):
        folder = bench.work / f"onnx-{name.replace(' ', '-')}"
        files = export_all(model, folder)
        torch_row = bench.evaluate(f"{name} (torch)", model)
        onnx_fidelity = None
        for kind, path in files.items():
            row = bench.evaluate(f"{name} {kind}", model, encoder=OnnxEncoder(path, model.tokenizer, model.max_seq_length), size_bytes=path.stat().st_size)
            onnx_fidelity = row.fidelity if kind == "onnx" else onnx_fidelity
            bench.record("baselines", row, fidelity_vs_torch=round(row.fidelity - torch_row.fidelity, 4),
                         fidelity_vs_onnx=round(row.fidelity - onnx_fidelity, 4))
    bench.record("baselines", bench.evaluate("teacher + PCA Dense 128", pca_dense(bench, 128)))
    if bench.args.model2vec:
        model2vec_row(bench)
    for k in (3, 2, 1):  # 3 first: the bottleneck-off ablation starts from it
        model, secs = bench.train(f"layerdrop-k{k}-s{seed}", bottleneck=0, keep=k, stages="3", seed=seed)
        bench.record("baselines", bench.evaluate(f"layer drop + MSE ({k} layers)", model), train_seconds=secs, seed=seed)


def recorded_seed_fidelities(first: int) -> list[float]:
    """Fidelity of seeds 0 .. first-1 from the latest 'seeds' row of each in the results CSV (a study
    spread over several machines); a missing seed is a ValueError naming the flag to use."""
    import csv

    path = RESULTS / "embedding.csv"
    latest: dict[int, float] = {}
    if first and path.is_file():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("group") == "seeds" and row.get("seed", "") != "":
                    latest[int(row["seed"])] = float(row["fidelity"])
    missing = [s for s in range(first) if s not in latest]
    if missing:
        raise ValueError(f"{path}: no 'seeds' row for seed(s) {', '.join(map(str, missing))}; lower --first-seed to train them")
    return [latest[s] for s in range(first)]


def group_seeds(bench: Bench) -> None:
    n, first = bench.args.seeds, bench.args.first_seed
    print(f"seeds: ours 2x over {n} seeds", flush=True)
    fids = list(bench.args.recorded_fidelities)
    for seed, fid in enumerate(fids):
        print(f"  ours 2x seed {seed}: fidelity {fid:.4f} (recorded in benchmarks/results/embedding.csv)", flush=True)
    for seed in range(first, n):
        model, secs = ours(bench, "2x", seed=seed)
        row = bench.evaluate(f"ours 2x seed {seed}", model)
        bench.record("seeds", row, seed=seed, train_seconds=secs)
        fids.append(row.fidelity)
    med = statistics.median(fids)
    converged = sum(abs(f - med) <= 0.02 for f in fids)
    sd = statistics.stdev(fids) if len(fids) > 1 else 0.0
    print(f"ours 2x over {n} seeds: fidelity {statistics.mean(fids):.4f} ± {sd:.4f} (min {min(fids):.4f}, max {max(fids):.4f}); converged {converged}/{n}")
    summary = {"benchmark": "embedding", "group": "seeds-summary", "name": f"ours 2x, {n} seeds", "fidelity": round(statistics.mean(fids), 4), "fidelity_std": round(sd, 4), "converged": converged, "seeds": n}
    bench.rows.append(summary)
    append_rows("embedding", [summary])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_embedding", description=__doc__.split("\n\n")[0])
    p.add_argument("--groups", default="main,ablations,baselines,seeds", help=f"comma-separated, from {', '.join(GROUPS)}")
    p.add_argument("--data", nargs="+", default=sorted(glob.glob(str(SHARED / "*_dev.jsonl"))), help="MCQ JSONL files (default: every clinical dev file of ../shared)")
    p.add_argument("--seeds", type=int, default=10, help="seeds of the seeds group (default 10)")
    p.add_argument("--first-seed", type=int, default=0, help="train seeds from this one on; the summary reads the earlier seeds' fidelity from benchmarks/results/embedding.csv (default 0: train all)")
    p.add_argument("--reference-seed", type=int, default=0, help="seed of the 2x student that the ablations start from and the export baseline measures, and of the layer-drop rows (default 0)")
    p.add_argument("--ablations", default=",".join(ABLATIONS), help=f"comma-separated ablation rows to run, from {', '.join(ABLATIONS)} (default: all)")
    p.add_argument("--stage2-epochs", type=float, default=2.0)
    p.add_argument("--stage3-epochs", type=float, default=4.0)
    p.add_argument("--stage4-epochs", type=float, default=1.0)
    p.add_argument("--learning-rate", type=float, default=3e-4, help="peak learning rate of stages 3 and 4")
    p.add_argument("--speed-sentences", type=int, default=512, help="held-out sentences encoded for the throughput figure")
    p.add_argument("--no-model2vec", dest="model2vec", action="store_false", help="skip the model2vec baseline (it builds a virtual environment)")
    p.add_argument("--work", default="~/.cache/atkd/bench_embedding", help="where trained rows are kept (reused by a later run)")
    args = p.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    if not args.data or any(g not in GROUPS for g in groups):
        p.error(f"--groups takes {', '.join(GROUPS)}; --data needs files")
    args.ablations = [a.strip() for a in args.ablations.split(",") if a.strip()]
    if unknown := [a for a in args.ablations if a not in ABLATIONS]:
        p.error(f"--ablations: unknown {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}")
    if not 0 <= args.first_seed < args.seeds:
        p.error(f"--first-seed {args.first_seed}: must lie in 0 .. --seeds - 1 ({args.seeds - 1})")
    try:  # before the teacher's targets (minutes): a missing row is an input error
        args.recorded_fidelities = recorded_seed_fidelities(args.first_seed) if "seeds" in groups else []
    except ValueError as e:
        p.error(f"--first-seed {args.first_seed}: {e}")
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.manual_seed(0)
    bench = Bench(args)
    bench.record("teacher", bench.teacher_row)
    for g in groups:
        {"main": group_main, "ablations": group_ablations, "baselines": group_baselines, "seeds": group_seeds}[g](bench)
        print(f"group {g}: {len(bench.rows)} rows appended to benchmarks/results/embedding.csv", flush=True)
        bench.rows.clear()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
