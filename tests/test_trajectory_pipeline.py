"""training.trajectory end to end on a tiny random encoder and a toy task, and its parts: data errors
naming file:line, experts (checkpoint 0 is the init, a replayed epoch reproduces checkpoint 1, a killed
run resumes to the same expert), initialisers, the synthetic set's folder, subset matching, coresets,
the guards, and the distilled set beating a random one of the same size."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from training.trajectory.config import EvaluateConfig, ExpertsConfig, TTMConfig
from training.trajectory.errors import TrajectoryDataError, TrajectorySetupError

torch.set_num_threads(1)

KEYS = [["apple", "banana", "cherry"], ["river", "ocean", "lake"], ["red", "blue", "green"], ["dog", "cat", "horse"]]
NOISE = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "with", "as", "by", "at", "from", "his", "her", "they", "this", "that", "which", "are", "were", "be", "have", "had", "one", "all", "there", "their", "would", "what", "about", "when", "more", "time"]


def toy_rows(n: int, seed: int) -> list[dict]:
    """Class = which keyword set one word comes from, hidden among 8 shared noise words at a random place."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        c = i % len(KEYS)
        words = [rng.choice(NOISE) for _ in range(8)]
        words.insert(rng.randrange(9), rng.choice(KEYS[c]))
        rows.append({"text": " ".join(words), "label": f"c{c}"})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_encoder_path):
    root = tmp_path_factory.mktemp("ttm")
    train, test = write_rows(root / "train.jsonl", toy_rows(600, 0)), write_rows(root / "test.jsonl", toy_rows(300, 1))
    return {"root": root, "train": train, "test": test, "model": f"head:{tiny_encoder_path}"}


def experts_config(toy, out: Path, **overrides) -> ExpertsConfig:
    values = {"out": str(out), "data": str(toy["train"]), "test": str(toy["test"]), "model": toy["model"], "experts": 2, "epochs": 6, "learning_rate": 0.3,
              "max_length": 12, "width": 16, "batch_size": 32, "progress": False}
    return ExpertsConfig(**(values | overrides))


@pytest.fixture(scope="module")
def experts_dir(toy):
    from training.trajectory.experts import train_experts

    out = toy["root"] / "experts"
    train_experts(experts_config(toy, out))
    return out


# ------------------------------------------------------------------------------ data


def test_bad_rows_name_the_file_and_line(tmp_path):
    from training.trajectory.data import read_text_jsonl

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\n\n{"text": "  ", "label": "b"}\n', encoding="utf-8")
    with pytest.raises(TrajectoryDataError, match=r"bad.jsonl:3: field 'text'"):
        read_text_jsonl(bad)
    bad.write_text('{"text": "fine", "label": "a"}\n{"words": "x", "label": "b"}\n', encoding="utf-8")
    with pytest.raises(TrajectoryDataError, match=r"bad.jsonl:2: field 'text'"):
        read_text_jsonl(bad)
    bad.write_text('{"text": "one", "label": "a"}\n\n{"text": "two", "label": "z"}\n', encoding="utf-8")
    with pytest.raises(TrajectoryDataError, match=r"bad.jsonl:3: label 'z' is not one of the training classes \(a, b\)"):
        read_text_jsonl(bad, names=["a", "b"])
    bad.write_text('{"text": "one", "label": 1}\n{"text": "two", "label": 1}\n', encoding="utf-8")
    with pytest.raises(TrajectoryDataError, match="one class only"):
        read_text_jsonl(bad)


def test_the_clinical_benchmarks_are_built_from_the_shipped_items(tmp_path):
    from training.trajectory.cli import SHIPPED
    from training.trajectory.data import (
        benchmark_rows,
        read_text_jsonl,
        write_benchmark,
    )

    files = [SHIPPED / "seed.jsonl", SHIPPED / "eval.jsonl"]
    rows = benchmark_rows("clinical-source", files)
    assert {r["label"] for r in rows} == {"medmcqa", "medqa", "medxpertqa", "mmlu", "mmlu_pro", "pubmedqa"}
    subjects = benchmark_rows("clinical-subject", files)
    assert subjects and all(r["id"].startswith("mmlu-") for r in subjects) and len({r["label"] for r in subjects}) >= 5
    paths = write_benchmark("clinical-source", files, tmp_path / "b")
    train, test = read_text_jsonl(paths["train"]), read_text_jsonl(paths["test"])
    from training.trajectory.data import split

    parts = split(train, 0.1, 0.0)  # as `experts --test` splits the benchmark's train file
    assert 0.05 * len(train) < len(parts["val"]) < 0.15 * len(train) and not parts["test"].texts
    assert len(train) + len(test) == len(rows) and not set(train.texts) & set(test.texts)
    assert json.loads((tmp_path / "b" / "benchmark.json").read_text())["rows"] == {"train": len(train), "test": len(test)}


# ------------------------------------------------------------------------------ experts


def test_experts_start_at_their_init_and_each_epoch_is_plain_sgd(toy, experts_dir):
    from safetensors.torch import load_file

    from training.trajectory.experts import epoch_order, load_experts, train_epoch

    experts = load_experts(experts_dir)
    assert experts.count == 2 and len(list((experts_dir / "expert_0").glob("epoch_*.safetensors"))) == 7
    model = experts.setup.student(experts.settings["seed"])  # expert 0's init
    for n, p in model.named_parameters():
        torch.testing.assert_close(experts.checkpoint(0, 0)[n], p.detach())
    train_epoch(model, experts.setup.embedder, experts.setup.encoded["train"], 0.3, 32, epoch_order(len(experts.setup.encoded["train"]), 0, 0, 0))
    one = load_file(str(experts_dir / "expert_0" / "epoch_001.safetensors"))
    for n, p in model.named_parameters():
        torch.testing.assert_close(one[n], p.detach(), rtol=1e-5, atol=1e-6)
    record = json.loads((experts_dir / "expert_0" / "trajectory.json").read_text())
    assert len(record["test_accuracy"]) == 7 and record["test_accuracy"][-1] > 0.9  # the toy task is learnable


def test_a_killed_expert_resumes_to_the_same_trajectory(toy, experts_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from training.trajectory.experts import train_experts

    out = tmp_path / "experts"
    shutil.copytree(experts_dir, out)
    for p in (out / "expert_1").glob("epoch_00[4-6].safetensors"):
        p.unlink()
    (out / "expert_1" / "trajectory.json").unlink()  # as if killed after epoch 3, before partial.json was written
    train_experts(experts_config(toy, out))
    for e in range(7):
        a, b = load_file(str(out / "expert_1" / f"epoch_{e:03d}.safetensors")), load_file(str(experts_dir / "expert_1" / f"epoch_{e:03d}.safetensors"))
        for n in a:
            torch.testing.assert_close(a[n], b[n])
    resumed, whole = (json.loads((d / "expert_1" / "trajectory.json").read_text()) for d in (out, experts_dir))
    assert resumed["val_accuracy"] == pytest.approx(whole["val_accuracy"]) and resumed["test_accuracy"] == pytest.approx(whole["test_accuracy"])
    assert len(resumed["train_loss"]) == 7 and resumed["train_loss"][4:] == pytest.approx(whole["train_loss"][4:])
    with pytest.raises(TrajectorySetupError, match="other settings .*learning_rate"):
        train_experts(experts_config(toy, out, learning_rate=0.1))


# ------------------------------------------------------------------------------ the synthetic set


def test_initialisers_give_the_set_its_shape_and_pca_keeps_the_variance(toy, experts_dir):
    from training.trajectory.distill import initial_set
    from training.trajectory.experts import load_experts
    from training.trajectory.initialise import pca

    experts = load_experts(experts_dir)
    for init in ("real", "noise", "manifold"):
        got = initial_set(TTMConfig(experts=str(experts_dir), out="-", per_class=3, init=init), experts)
        assert got.embeds.shape == (12, 12, 32) and got.classes.tolist() == [c for c in range(4) for _ in range(3)]
        assert torch.isfinite(got.embeds).all()
    noise = initial_set(TTMConfig(experts=str(experts_dir), out="-", per_class=50, init="noise"), experts).embeds.flatten(0, 1)  # (rows x positions, H)
    table = experts.setup.embedder.table
    torch.testing.assert_close(noise.mean(0), table.mean(0), atol=4 * float(table.std(0).max()) / 40, rtol=0)  # 2400 draws per dimension
    torch.testing.assert_close(noise.std(0), table.std(0), rtol=0.1, atol=0)
    manifold = initial_set(TTMConfig(experts=str(experts_dir), out="-", per_class=3, init="manifold", pca_variance=0.8), experts)
    assert all(c["variance_kept"] >= 0.8 and c["components"] < c["rows"] for c in manifold.info["pca"])
    real = initial_set(TTMConfig(experts=str(experts_dir), out="-", per_class=3, init="real"), experts)
    ids, _ = experts.setup.embedder.ids(real.texts)
    torch.testing.assert_close(real.embeds, experts.setup.embedder.table[ids])  # real rows are the table's rows

    x = torch.randn(200, 5, dtype=torch.float64) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    _, comps, var, kept = pca(x, 0.9)
    total = float(((x - x.mean(0)) ** 2).sum() / 199)
    assert kept >= 0.9 and float(var.sum()) / total == pytest.approx(kept)
    assert float(var[:-1].sum()) / total < 0.9  # the fewest components that reach it
    assert comps.shape == (len(var), 5)


def test_mask_fill_rewrites_a_ratio_of_the_tokens(toy, experts_dir, tiny_model_path):
    from training.trajectory.experts import load_experts
    from training.trajectory.initialise import Filler, init_mask_fill

    experts = load_experts(experts_dir)
    filler = Filler(str(tiny_model_path), top_k=5, generator=torch.Generator().manual_seed(0))
    assert not filler.masked  # a causal LM: fills from the left context
    got = init_mask_fill(experts.setup.splits["train"], experts.setup.embedder, 4, 0.5, 2, filler, random.Random(0))
    assert got.embeds.shape == (16, 12, 32) and got.classes.tolist() == [c for c in range(4) for _ in range(4)]
    sources = set(experts.setup.splits["train"].texts)
    assert sum(t not in sources for t in got.texts) >= 12  # most rows differ from every real text


def test_a_synthetic_set_saves_and_loads_whole(tmp_path):
    from training.trajectory.synthetic import SyntheticSet

    syn = SyntheticSet.create(torch.randn(6, 3, 4), torch.ones(6, 3, dtype=torch.long), torch.arange(6) % 3, 3, label_kind="soft", lr=0.05, lr_steps=4)
    syn.card = {"source_fingerprint": "abc", "init": {"init": "real"}}
    syn.save(tmp_path / "set", ["row"] * 6)
    syn.save(tmp_path / "set")  # over an existing one: replaced whole
    back = SyntheticSet.load(tmp_path / "set", trainable=True)
    for name in ("embeds", "mask", "classes", "label_param", "lr_param"):
        torch.testing.assert_close(getattr(back, name), getattr(syn, name).detach())
    assert back.label_kind == "soft" and back.card["source_fingerprint"] == "abc" and back.lrs() == pytest.approx([0.05] * 4)
    assert back.labels()[0].argmax() == 0 and float(back.labels()[0, 0].detach()) == pytest.approx(0.9)
    assert back.embeds.requires_grad and back.label_param.requires_grad
    assert not list(tmp_path.glob(".set*"))  # no temporary folder left
    with pytest.raises(TrajectorySetupError, match="not a synthetic set"):
        SyntheticSet.load(tmp_path)


def test_matching_strategies_take_what_they_say():
    from training.trajectory.matching import select_matched

    sizes = {"encoder.layer.0.w": 10, "encoder.layer.0.b": 2, "encoder.layer.1.w": 10, "encoder.layer.1.b": 2, "head.weight": 6}
    moved = {"encoder.layer.0.w": 0.1, "encoder.layer.0.b": 0.05, "encoder.layer.1.w": 3.0, "encoder.layer.1.b": 2.0, "head.weight": 1.0}
    assert select_matched("all", sizes, moved) == list(sizes)
    assert select_matched("importance:0.3", sizes, moved) == ["encoder.layer.1.w"]
    assert select_matched("importance:0.5", sizes, moved) == ["encoder.layer.1.w", "encoder.layer.1.b", "head.weight"]  # 10 + 2 < 15: one more
    diverse = select_matched("diversity:0.8", sizes, moved)
    assert {"encoder.layer.0.w", "encoder.layer.1.w", "head.weight"} <= set(diverse)  # one of every part first
    hybrid = select_matched("hybrid:0.7", sizes, moved)
    assert "encoder.layer.1.w" in hybrid and "encoder.layer.0.w" in hybrid
    rand = select_matched("random:0.5", sizes, moved, seed=3)
    assert rand == select_matched("random:0.5", sizes, moved, seed=3) and sum(sizes[n] for n in rand) >= 15


def test_coresets_choose_what_they_promise():
    from training.trajectory.coreset import herding, k_center, per_class

    pts = torch.tensor([[0.0], [0.1], [-0.1], [10.0], [0.05]])
    assert k_center(pts, 2)[1] == 3  # the outlier is the farthest from the first pick
    assert herding(pts, 1) == [int(torch.cdist(pts.mean(0, keepdim=True), pts).argmin())]
    feats = torch.randn(20, 3)
    chosen = per_class([list(range(10)), list(range(10, 20))], feats, 3, "kcenter")
    assert len(chosen) == 6 == len(set(chosen)) and all(i < 10 for i in chosen[:3]) and all(i >= 10 for i in chosen[3:])


# ------------------------------------------------------------------------------ distillation


def test_a_planted_divergence_stops_with_a_message_and_keeps_the_last_good_set(toy, experts_dir, tmp_path, monkeypatch):
    from training.trajectory import distill as module

    real = module.meta_gradient
    calls = [0]

    def exploding(*args, **kwargs):
        calls[0] += 1
        got = real(*args, **kwargs)
        if calls[0] >= 4:
            got.loss = got.loss * 1e3 * calls[0]  # the loss runs away from iteration 4
        return got

    used = []

    def recording(problem, syn, *args, **kwargs):
        used.append(syn.embeds.detach().clone())  # the set each iteration starts from
        return exploding(problem, syn, *args, **kwargs)

    monkeypatch.setattr(module, "meta_gradient", recording)
    cfg = TTMConfig(experts=str(experts_dir), out=str(tmp_path / "syn"), per_class=1, syn_steps=3, max_start_epoch=2, iterations=50, eval_every=0, patience=3, progress=False)
    result = module.distill_set(cfg)
    assert result.stopped and "diverged" in result.stopped and len(result.log) == 6
    from training.trajectory.synthetic import SyntheticSet

    saved = SyntheticSet.load(tmp_path / "syn")
    torch.testing.assert_close(saved.embeds, used[2])  # iteration 3's set: the last before the loss ran away
    torch.testing.assert_close(SyntheticSet.load(tmp_path / "syn" / "last").embeds, used[2])

    def nan(*args, **kwargs):
        got = real(*args, **kwargs)
        got.embeds[0, 0, 0] = float("nan")
        return got

    monkeypatch.setattr(module, "meta_gradient", nan)
    result = module.distill_set(TTMConfig(experts=str(experts_dir), out=str(tmp_path / "nan"), per_class=1, syn_steps=3, max_start_epoch=2, iterations=5, eval_every=0, progress=False))
    assert result.stopped.startswith("iteration 1: the matching loss or its gradient is not finite")
    with pytest.raises(Exception, match="last good set"):
        module.stop_if(result)
    torch.testing.assert_close(SyntheticSet.load(tmp_path / "nan").embeds, used[0])  # the initial set, untouched


def test_a_learning_rate_held_at_its_bound_stops_the_run(toy, experts_dir, tmp_path):
    from training.trajectory.distill import distill_set

    cfg = TTMConfig(experts=str(experts_dir), out=str(tmp_path / "syn"), per_class=1, syn_steps=3, max_start_epoch=2, iterations=60, eval_every=0, lr_init=0.45, lr_max=0.5, lr_lr=0.5, patience=4, progress=False)
    result = distill_set(cfg)
    assert result.stopped and "--lr-max 0.5" in result.stopped
    at_bound = [r["lr"] >= 0.5 * (1 - 1e-6) for r in result.log]
    assert at_bound[-4:] == [True] * 4 and not at_bound[0]  # Adam pushed it there; the clamp held it
    assert max(r["lr"] for r in result.log) <= 0.5 + 1e-9
    with pytest.raises(TrajectorySetupError, match="strictly between"):
        distill_set(TTMConfig(experts=str(experts_dir), out=str(tmp_path / "bad"), lr_init=0.5, lr_max=0.5, progress=False))


def test_evaluation_students_never_start_where_an_expert_did(toy, experts_dir, tmp_path):
    from training.trajectory.evaluate import evaluate_sets
    from training.trajectory.experts import load_experts, train_experts
    from training.trajectory.fit import EVAL_SEED

    experts = load_experts(experts_dir)
    student = experts.setup.student(EVAL_SEED)
    for k in range(experts.count):
        init = experts.checkpoint(k, 0)
        assert all(not torch.equal(init[n], p.detach()) for n, p in student.named_parameters() if n in init)
    clashing = tmp_path / "clash"
    train_experts(experts_config(toy, clashing, experts=1, epochs=1, seed=EVAL_SEED))
    with pytest.raises(TrajectorySetupError, match="coincide with the evaluation students"):
        evaluate_sets(EvaluateConfig(experts=str(clashing), seeds=1, steps=2, baselines="random", progress=False))


def test_the_schedule_walks_whole_permutations():
    from training.trajectory.unroll import make_schedule

    batches = make_schedule(12, 9, 4, torch.Generator().manual_seed(0))
    assert len(batches) == 9 and all(len(b) == 4 for b in batches)
    for start in (0, 3, 6):
        assert sorted(torch.cat(batches[start : start + 3]).tolist()) == list(range(12))  # each epoch sees every row once


def test_the_distilled_set_beats_a_random_one_on_the_toy_task(toy, experts_dir, tmp_path):
    from training.trajectory.distill import distill_set
    from training.trajectory.evaluate import evaluate_sets

    cfg = TTMConfig(experts=str(experts_dir), out=str(tmp_path / "syn"), per_class=1, syn_steps=10, max_start_epoch=2, iterations=60, eval_every=20, eval_steps=100, progress=False)
    result = distill_set(cfg)
    losses = [r["loss"] for r in result.log]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5 and result.stopped is None
    card = json.loads((tmp_path / "syn" / "card.json").read_text())
    assert card["source_fingerprint"] and card["experts"]["epochs"] == 6 and card["selected"].startswith("iteration")
    assert (tmp_path / "syn" / "last" / "synthetic.safetensors").is_file() and (tmp_path / "syn" / "log.csv").read_text().startswith("iteration,")
    ev = evaluate_sets(EvaluateConfig(synthetic=[str(tmp_path / "syn")], seeds=3, steps=100, baselines="random,kcenter,full", out=str(tmp_path / "table.csv"), progress=False))
    by = {r.name.split(":")[0]: r for r in ev.rows}
    assert by["distilled"].mean > by["random"].mean + 0.2, [(r.name, r.mean) for r in ev.rows]
    assert by["full data"].mean > 0.9 and (tmp_path / "table.csv").read_text().count("\n") == 1 + 4


def test_a_pretrained_backbone_with_a_fresh_head_unrolls_through_attention(toy, tmp_path):
    """backbone:<encoder> --train top:1: only the top layer and the head train and are matched; the
    meta-gradient differentiates twice through eager attention and equals the exact one."""
    from training.trajectory.distill import distill_set
    from training.trajectory.experts import load_experts, train_experts
    from training.trajectory.synthetic import SyntheticSet
    from training.trajectory.unroll import make_schedule, meta_gradient, problem_for

    model = toy["model"].replace("head:", "backbone:")
    train_experts(experts_config(toy, tmp_path / "experts", model=model, train="top:1", experts=1, epochs=3))
    experts = load_experts(tmp_path / "experts")
    trained = experts.settings["trained"]
    assert trained and all(n.startswith(("head.", "encoder.encoder.layer.3.")) for n in trained)
    student = experts.initial_model(0)
    assert student.encoder.config._attn_implementation == "eager"
    start, target = experts.checkpoint(0, 0), experts.checkpoint(0, 2)
    assert not torch.equal(start["head.weight"], target["head.weight"])
    syn = SyntheticSet.create(experts.setup.embedder.table[experts.setup.encoded["train"].ids[:4]], torch.ones(4, 12, dtype=torch.long), torch.arange(4), 4, label_kind="soft", lr=0.1)
    problem = problem_for(student, start, trained)
    schedule = make_schedule(4, 3, 4, torch.Generator().manual_seed(0))
    exact, adjoint = (meta_gradient(problem, syn, start, target, schedule, mode) for mode in ("exact", "adjoint"))
    torch.testing.assert_close(adjoint.flat(), exact.flat(), rtol=1e-4, atol=1e-7)
    assert exact.embeds.abs().sum() > 0
    result = distill_set(TTMConfig(experts=str(tmp_path / "experts"), out=str(tmp_path / "syn"), per_class=1, syn_steps=2, max_start_epoch=1, iterations=3, eval_every=0, progress=False))
    assert result.stopped is None and len(result.log) == 3
