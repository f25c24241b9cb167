"""The distillation-mode trajectory term (route-constrained optimisation) in KDTrainer: anchors spread
over the teacher's checkpoints, the anchor following training progress, the value equal to the
hidden-state objective against that anchor, and the projection shared with the hidden-state term."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_training import _config
from training.trajectory.route import anchor_at, spread


def test_anchors_are_spread_evenly_and_end_with_the_final_checkpoint():
    assert spread(list("abcdefghi"), 3) == ["c", "f", "i"]
    assert spread(list("abcd"), 3) == ["a", "c", "d"]
    assert spread(list("ab"), 3) == ["a", "b"]
    assert [anchor_at(f, 3) for f in (0.0, 0.32, 0.34, 0.66, 0.67, 0.99, 1.0)] == [0, 0, 1, 1, 2, 2, 2]


@pytest.fixture(scope="module")
def checkpoints(tiny_teacher_path, tmp_path_factory):
    """Three 'fine-tuning checkpoints' of the tiny teacher: the teacher with growing perturbations."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("route")
    paths = []
    for k in range(3):
        model = AutoModelForCausalLM.from_pretrained(tiny_teacher_path)
        torch.manual_seed(k)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * (2 - k) * torch.randn_like(p))  # the last is the teacher itself
        model.save_pretrained(root / f"ckpt{k}")
        AutoTokenizer.from_pretrained(tiny_teacher_path).save_pretrained(root / f"ckpt{k}")
        paths.append(str(root / f"ckpt{k}"))
    return paths


def test_the_trajectory_term_follows_the_route(tmp_path, dataset, tokenizer, tiny_model_path, tiny_teacher_path, checkpoints):
    from training import KDTrainer
    from training.objectives import ObjectiveInputs

    args = _config(tmp_path, alpha=0.0, max_steps=3, logging_steps=1, trajectory_checkpoints=checkpoints, trajectory_loss_weight=0.3, trajectory_points=3)
    trainer = KDTrainer(str(tiny_model_path), args=args, train_dataset=dataset, processing_class=tokenizer)
    (objective,) = list(trainer.objectives)
    assert objective.name == "trajectory" and objective.weight == 0.3 and len(objective.anchors) == 3
    seen = []
    original = objective.forward

    def spying(inputs):
        seen.append(objective.anchor)
        value = original(inputs)
        # the value is the hidden-state objective's against the current anchor's states
        with torch.no_grad():
            states = objective.anchors[objective.anchor].base_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, output_hidden_states=True).hidden_states
            ref = objective.projection(ObjectiveInputs(inputs.student, None, inputs.student_hidden_states, states, inputs.attention_mask))
        torch.testing.assert_close(value.detach(), ref)
        return value

    objective.forward = spying
    projection = {n: p.detach().clone() for n, p in trainer.objectives.named_parameters()}
    trainer.train()
    assert seen[0] == 0 and seen[-1] == 2 and seen == sorted(seen)  # the route, in order
    logs = [e for e in trainer.state.log_history if "trajectory_loss" in e]
    assert len(logs) == 3 and all(math.isfinite(e["trajectory_loss"]) and e["trajectory_loss"] > 0 for e in logs)
    assert [e["trajectory_anchor"] for e in logs] == [0.0, 1.0, 2.0]
    assert any(not torch.equal(projection[n], p) for n, p in trainer.objectives.named_parameters())  # the projection trains


def test_with_the_hidden_state_term_the_projection_is_shared(tmp_path, dataset, tokenizer, tiny_model_path, tiny_teacher_path, checkpoints):
    from training import KDTrainer

    args = _config(tmp_path, alpha=0.0, max_steps=1, hidden_loss_weight=0.5, trajectory_checkpoints=checkpoints, trajectory_points=2)
    trainer = KDTrainer(str(tiny_model_path), args=args, teacher_model=str(tiny_teacher_path), train_dataset=dataset, processing_class=tokenizer)
    hidden, route = list(trainer.objectives)
    assert route.projection is hidden and len(list(route.parameters())) == 0  # saved once, by the hidden-state objective
    assert len(route.anchors) == 2


def test_anchors_with_another_vocabulary_are_refused(tmp_path, dataset, tokenizer, tiny_model_path, smollm2_path):
    from training import KDConfig, KDTrainer

    with pytest.raises(ValueError, match="trajectory_points must be >= 1"):
        KDConfig(output_dir=str(tmp_path), trajectory_points=0)
    import shutil

    from transformers import AutoModelForCausalLM, LlamaConfig

    other = tmp_path / "other"
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(other)
    with pytest.raises(ValueError, match="anchors must share the student's tokenizer"):
        KDTrainer(str(tiny_model_path), args=_config(tmp_path, alpha=0.0, trajectory_checkpoints=[str(other)]), train_dataset=dataset, processing_class=tokenizer)
    shutil.rmtree(other)
