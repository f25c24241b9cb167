"""Objectives beyond the logits (hidden states, layer weights, user-defined) and KDTrainer under
``accelerate launch`` with two CPU processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_training import _config

REPO = Path(__file__).resolve().parents[1]


def test_parse_layer_map():
    from training.objectives import parse_layer_map

    # Hidden states: 0 = embeddings .. n = last layer; auto maps by relative depth.
    assert parse_layer_map("auto", 2, 4, hidden_states=True) == {1: 2, 2: 4}
    assert parse_layer_map("auto", 15, 30, hidden_states=True)[15] == 30
    # Decoder layers, 0-based: the last student layer goes to the last teacher layer.
    assert parse_layer_map("auto", 2, 4, hidden_states=False) == {0: 1, 1: 3}
    assert parse_layer_map(" 0:0, 2:4 ", 2, 4, hidden_states=True) == {0: 0, 2: 4}
    assert parse_layer_map({1: 3}, 2, 4, hidden_states=False) == {1: 3}
    for spec, message in [
        ("1-2", "is not 'student:teacher'"),
        ("1:2,1:3", "mapped twice"),
        ("3:1", "student index 3 is outside 0..2"),
        ("1:5", "teacher index 5 is outside 0..4"),
        ("", "maps no layers"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_layer_map(spec, 2, 4, hidden_states=True)
    with pytest.raises(ValueError, match="outside 0..1"):
        parse_layer_map("2:2", 2, 4, hidden_states=False)


def test_hidden_state_objective_values_and_gradient():
    from training.objectives import HiddenStateObjective, ObjectiveInputs

    g = torch.Generator().manual_seed(0)
    states = tuple(torch.randn(2, 5, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0  # padding does not count
    same = HiddenStateObjective({1: 1, 2: 2}, 8, 8)
    inputs = ObjectiveInputs(None, None, states, states, mask)
    assert same(inputs).item() == pytest.approx(0.0, abs=1e-7)  # identity-initialised projection

    teacher = tuple(s * 2 + 1 for s in states)
    inputs = ObjectiveInputs(None, None, states, teacher, mask)
    value = same(inputs)
    # Against a by-hand normalised MSE over the real tokens.
    keep = mask.bool()
    expected = torch.stack([
        (states[i][keep] - teacher[i][keep]).pow(2).sum(-1).mean() / teacher[i][keep].pow(2).sum(-1).mean() for i in (1, 2)
    ]).mean()
    torch.testing.assert_close(value, expected)
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in same.parameters())
    # Padding positions never reach the loss: changing them changes nothing.
    moved = tuple(t.clone().index_put_((torch.tensor([1]), torch.tensor([4])), torch.full((8,), 99.0)) for t in teacher)
    torch.testing.assert_close(same(ObjectiveInputs(None, None, states, moved, mask)), value.detach())

    wide = HiddenStateObjective({2: 1}, 8, 12, loss_type="cosine")
    assert wide.projections["2"].weight.shape == (12, 8)
    cos = wide(ObjectiveInputs(None, None, states, tuple(torch.randn(2, 5, 12) for _ in range(3)), mask))
    assert 0 < cos.item() < 2
    with pytest.raises(ValueError, match="mse or cosine"):
        HiddenStateObjective({1: 1}, 8, 8, loss_type="l1")


def test_layer_weight_objective(tiny_model_path, tiny_teacher_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.objectives import LayerWeightObjective, ObjectiveInputs, effective_weight

    student = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_path)
    # A model matched to itself: zero, and no projection parameters (the shapes agree).
    self_match = LayerWeightObjective.from_models(student, student, "auto")
    assert self_match.layer_map == {0: 0, 1: 1} and not list(self_match.parameters())
    assert self_match(ObjectiveInputs(student, student, None, None, torch.ones(1, 1))).item() == 0.0

    # Student width 32, teacher width 64: learned left/right projections where the shapes differ.
    objective = LayerWeightObjective.from_models(student, teacher, "0:1,1:1", modules=["self_attn.q_proj", "self_attn.o_proj"])
    assert set(objective.left) == {"self_attn__q_proj", "self_attn__o_proj"} and set(objective.right) == set(objective.left)
    value = objective(ObjectiveInputs(student, teacher, None, None, torch.ones(1, 1)))
    assert math.isfinite(value.item()) and value.item() > 0
    value.backward()
    assert student.model.layers[0].self_attn.q_proj.weight.grad is not None
    assert all(p.grad is not None for p in objective.parameters())
    with pytest.raises(ValueError, match="no module 'self_attn.nope'"):
        LayerWeightObjective.from_models(student, teacher, modules=["self_attn.nope"])

    # Under LoRA the matched weight is the one the forward pass uses: base + the adapter's delta.
    peft_model = get_peft_model(student, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    q = peft_model.get_base_model().model.layers[0].self_attn.q_proj
    delta = q.get_delta_weight("default")
    assert delta.abs().sum() > 0
    torch.testing.assert_close(effective_weight(q), q.base_layer.weight + delta)
    x = torch.randn(3, 32)
    torch.testing.assert_close(q(x), x @ effective_weight(q).t())


def _embedding_norm_objective():
    """A user-defined objective: subclass Objective, no registration needed."""
    from training.objectives import Objective

    class EmbeddingNorm(Objective):
        needs_teacher = False

        def forward(self, inputs):
            return inputs.student.get_input_embeddings().weight.pow(2).mean()

    return EmbeddingNorm("embnorm", 0.5)


def test_trainer_with_objectives(tmp_path, dataset, tokenizer, tiny_model_path, tiny_teacher_path):
    from safetensors.torch import load_file

    from training import KDTrainer
    from training.kd_trainer import OBJECTIVES_FILE

    args = _config(tmp_path, hidden_loss_weight=0.5, weight_match_weight=0.2, weight_match_layer_map="0:0,1:1")
    trainer = KDTrainer(str(tiny_model_path), args=args, teacher_model=str(tiny_teacher_path), train_dataset=dataset,
                        processing_class=tokenizer, objectives=[_embedding_norm_objective()])
    assert [o.name for o in trainer.objectives] == ["hidden", "weights", "embnorm"]
    projections = {n: p.detach().clone() for n, p in trainer.objectives.named_parameters()}
    student_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(student_before[n], p) for n, p in trainer.model.named_parameters())
    moved = [n for n, p in trainer.objectives.named_parameters() if not torch.equal(projections[n], p)]
    assert moved and any(n.startswith("0.projections") for n in moved) and any(n.startswith("1.") for n in moved)
    logs = [e for e in trainer.state.log_history if "ce_loss" in e]
    assert len(logs) == 2
    for entry in logs:
        for key in ("ce_loss", "kd_loss", "hidden_loss", "weights_loss", "embnorm_loss", "total_loss"):
            assert math.isfinite(entry[key]) and entry[key] > 0, (key, entry)
        expected = 0.5 * entry["kd_loss"] + 0.5 * entry["ce_loss"] + 0.5 * entry["hidden_loss"] + 0.2 * entry["weights_loss"] + 0.5 * entry["embnorm_loss"]
        assert entry["total_loss"] == pytest.approx(expected, rel=1e-4)
        assert entry["loss"] == pytest.approx(entry["total_loss"], rel=1e-3)
    trainer.save_model(str(tmp_path / "saved"))
    saved = load_file(str(tmp_path / "saved" / OBJECTIVES_FILE))
    assert set(saved) == {k for k, _ in trainer.objectives.state_dict().items()}


def test_objective_argument_errors(tmp_path, dataset, tokenizer, tiny_model_path, tiny_teacher_path):
    from training import KDConfig, KDTrainer
    from training.objectives import HiddenStateObjective

    with pytest.raises(ValueError, match="need an online teacher_model"):
        KDConfig(output_dir=str(tmp_path), logits_dir="x", hidden_loss_weight=0.1)
    with pytest.raises(ValueError, match="need an online teacher_model"):
        KDTrainer(str(tiny_model_path), args=_config(tmp_path, alpha=0.0, weight_match_weight=0.1), train_dataset=dataset,
                  processing_class=tokenizer)
    with pytest.raises(ValueError, match="needs an online teacher_model"):
        KDTrainer(str(tiny_model_path), args=_config(tmp_path, alpha=0.0), train_dataset=dataset, processing_class=tokenizer,
                  objectives=[HiddenStateObjective({1: 1}, 32, 64)])
    with pytest.raises(ValueError, match="reserved"):
        KDTrainer(str(tiny_model_path), args=_config(tmp_path), teacher_model=str(tiny_teacher_path), train_dataset=dataset,
                  processing_class=tokenizer, objectives=[HiddenStateObjective({1: 1}, 32, 64, name="kd")])
    with pytest.raises(ValueError, match="weight must be >= 0"):
        HiddenStateObjective({1: 1}, 32, 64, weight=-1)


def _distill_cli(workdir: Path, launcher: list[str], out: Path, model: Path, teacher: Path, data: Path, extra: list[str]):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [*launcher, "-m", "training.distill", "--student", str(model), "--teacher", str(teacher), "--data", str(data),
           "--output_dir", str(out), "--max_steps", "1", "--optim", "sgd", "--learning_rate", "1.0", "--max_grad_norm", "0",
           "--lr_scheduler_type", "constant", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", *extra]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout[proc.stdout.rindex('{\n  "steps"') :])


def test_accelerate_launch_two_cpu_processes_equal_one(tmp_path, items, tiny_model_path, tiny_teacher_path):
    """`accelerate launch` with 2 CPU processes x batch 2 makes the same SGD step as 1 process x batch 4
    (DDP gradient averaging, token counts across devices, objective parameters outside DDP)."""
    from safetensors.torch import load_file

    from data.records import write_jsonl

    data = tmp_path / "items.jsonl"
    write_jsonl(data, items[:4])
    common = ["--alpha", "0.5", "--temperature", "2", "--weight_match_weight", "0.3", "--weight_match_layer_map", "0:0,1:1"]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two = _distill_cli(tmp_path, accelerate, tmp_path / "two", tiny_model_path, tiny_teacher_path, data,
                       [*common, "--per_device_train_batch_size", "2"])
    one = _distill_cli(tmp_path, [sys.executable], tmp_path / "one", tiny_model_path, tiny_teacher_path, data,
                       [*common, "--per_device_train_batch_size", "4"])
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["steps"] == one["steps"] == 1
    for key in ("ce_loss", "kd_loss", "weights_loss"):
        assert math.isfinite(two[key]) and two[key] == pytest.approx(one[key], rel=1e-4), key
    a, b = load_file(str(tmp_path / "two" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    start = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    assert any(not torch.equal(start[k], b[k]) for k in b)
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    # The learned projections were averaged across processes too.
    pa, pb = (load_file(str(tmp_path / d / "objectives.safetensors")) for d in ("two", "one"))
    assert set(pa) == set(pb) and pa
    for key in pb:
        torch.testing.assert_close(pa[key], pb[key], rtol=1e-4, atol=1e-6, msg=key)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
