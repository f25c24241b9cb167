"""KDConfig, KDTrainer (online teacher, stored top-k logits, LoRA) and distill() on tiny random models."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.records import DataError
from tests.test_training_teacher_logits import TinyTopKEngine

REPO = Path(__file__).resolve().parents[1]


def test_import_in_a_fresh_interpreter():
    code = (
        "import sys\n"
        "from training import KDTrainer, KDConfig\n"
        "from trl import SFTTrainer, SFTConfig\n"
        "assert issubclass(KDTrainer, SFTTrainer) and issubclass(KDConfig, SFTConfig)\n"
        "assert not [m for m in sys.modules if m == 'agents' or m.startswith('agents.')]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_kdconfig_defaults_and_range_checks(tmp_path):
    from training import KDConfig

    config = KDConfig(output_dir=str(tmp_path), report_to="none")
    assert (config.alpha, config.temperature, config.kd_loss_type, config.top_k) == (0.5, 1.0, "forward_kl", 32)
    if not torch.cuda.is_available():
        assert config.bf16 is False and config.gradient_checkpointing is False
    assert KDConfig(output_dir=str(tmp_path), gradient_checkpointing=True).gradient_checkpointing is True
    assert config.lora_config() is None
    lora = KDConfig(output_dir=str(tmp_path), lora_r=4).lora_config()
    assert lora.r == 4 and lora.target_modules == "all-linear"

    bad = [
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"kd_loss_type": "tvd"}, "kd_loss_type"),
        ({"beta": -0.1}, "beta"),
        ({"top_k": -1}, "top_k"),
        ({"teacher_model": "a", "logits_dir": "b"}, "not both"),
        ({"logits_dir": "b", "top_k": 0}, "online"),
        ({"lora_r": -1}, "lora_r"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            KDConfig(output_dir=str(tmp_path), **kwargs)


@pytest.fixture(scope="module")
def logits_dir(items, tiny_teacher_path, tmp_path_factory):
    from training.teacher_logits import extract_teacher_logits

    out = tmp_path_factory.mktemp("train_logits")
    extract_teacher_logits(TinyTopKEngine(tiny_teacher_path), items, out, k=16)
    return out


def _config(tmp_path, **kwargs):
    from training import KDConfig

    values = dict(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        bf16=False,
        gradient_checkpointing=False,
        temperature=2.0,
        top_k=16,
        disable_tqdm=True,
    )
    values.update(kwargs)
    return KDConfig(**values)


def _train_and_check(trainer) -> dict[str, torch.Tensor]:
    """Train, then assert the trainable parameters moved and every logged component is finite."""
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert changed, "no trainable parameter changed"
    logs = [entry for entry in trainer.state.log_history if "ce_loss" in entry]
    assert len(logs) == trainer.args.max_steps
    for entry in logs:
        for key in ("loss", "ce_loss", "kd_loss", "total_loss", "mean_token_accuracy"):
            assert math.isfinite(entry[key]), (key, entry)
        assert entry["kd_loss"] > 0 and entry["ce_loss"] > 0
        assert entry["total_loss"] == pytest.approx(0.5 * entry["kd_loss"] + 0.5 * entry["ce_loss"], rel=1e-5)
    return before


def test_online_teacher(tmp_path, dataset, tokenizer, tiny_model_path, tiny_teacher_path):
    from training import KDTrainer

    trainer = KDTrainer(
        str(tiny_model_path), args=_config(tmp_path, kd_loss_type="jsd", top_k=0), teacher_model=str(tiny_teacher_path),
        train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer,
    )
    teacher_before = [p.detach().clone() for p in trainer.teacher_model.parameters()]
    _train_and_check(trainer)
    assert not trainer.teacher_model.training
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, trainer.teacher_model.parameters()))
    metrics = trainer.evaluate()
    assert all(math.isfinite(metrics[k]) for k in ("eval_loss", "eval_ce_loss", "eval_kd_loss", "eval_total_loss"))
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_total_loss"], rel=1e-4)


def test_stored_logits_match_the_online_teacher(tmp_path, dataset, tokenizer, logits_dir, tiny_model_path, tiny_teacher_path):
    """The offline path (tokenize, extract, store, collate, align) gives the online loss up to fp16 storage."""
    from training import KDTrainer

    offline = KDTrainer(str(tiny_model_path), args=_config(tmp_path / "off", logits_dir=str(logits_dir)),
                        train_dataset=dataset, processing_class=tokenizer)
    online = KDTrainer(str(tiny_model_path), args=_config(tmp_path / "on"), teacher_model=str(tiny_teacher_path),
                       train_dataset=dataset, processing_class=tokenizer)
    examples = [dataset[i] for i in range(3)]
    offline.model.train(), online.model.train()  # metrics go to the "train" bucket, as during training
    with torch.no_grad():
        loss_off = offline.compute_loss(offline.model, offline.data_collator(examples))
        loss_on = online.compute_loss(online.model, online.data_collator(examples))
    assert offline._metrics["train"]["kd_loss"][-1] == pytest.approx(online._metrics["train"]["kd_loss"][-1], rel=2e-3)
    assert loss_off.item() == pytest.approx(loss_on.item(), rel=2e-3)

    _train_and_check(offline)


def test_lora_trains_only_the_adapter(tmp_path, dataset, tokenizer, logits_dir, tiny_model_path):
    from training import KDTrainer

    trainer = KDTrainer(str(tiny_model_path), args=_config(tmp_path, logits_dir=str(logits_dir), lora_r=4, gradient_checkpointing=True),
                        train_dataset=dataset, processing_class=tokenizer)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trained = _train_and_check(trainer)
    assert trained and all("lora_" in n for n in trained)
    assert all(torch.equal(frozen[n], p) for n, p in trainer.model.named_parameters() if n in frozen)


def test_gradient_accumulation_matches_the_full_batch(tmp_path, dataset, tokenizer, tiny_model_path, tiny_teacher_path):
    """One SGD step on 4 examples: batch 4 x accumulation 1 == batch 1 x accumulation 4 (num_items_in_batch)."""
    from training import KDTrainer

    params = []
    for batch, accumulation in ((4, 1), (1, 4)):
        args = _config(tmp_path / f"b{batch}", max_steps=1, per_device_train_batch_size=batch,
                       gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0, max_grad_norm=0.0)
        trainer = KDTrainer(str(tiny_model_path), args=args, teacher_model=str(tiny_teacher_path),
                            train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        params.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    for name, value in params[0].items():
        torch.testing.assert_close(params[1][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_vocabulary_alignment():
    from training.losses import LinearHead, kd_loss

    hidden, head = torch.randn(3, 4), LinearHead(torch.randn(10, 4))
    teacher = head.logits(hidden)
    assert torch.equal(head.logits(hidden, 8), teacher[:, :8])  # padded teacher rows dropped
    widened = head.logits(hidden, 12)  # a student head padded wider: its extra rows get zero teacher mass
    assert widened.shape == (3, 12) and torch.all(widened[:, 10:] == float("-inf"))
    student = torch.randn(3, 12, requires_grad=True)
    loss = kd_loss(student, widened, temperature=2.0)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_trainer_argument_errors(tmp_path, dataset, tokenizer, logits_dir, tiny_model_path, tiny_teacher_path):
    from training import KDTrainer

    with pytest.raises(ValueError, match="KD needs a teacher"):
        KDTrainer(str(tiny_model_path), args=_config(tmp_path), train_dataset=dataset, processing_class=tokenizer)
    with pytest.raises(ValueError, match="not both"):
        KDTrainer(str(tiny_model_path), args=_config(tmp_path, logits_dir=str(logits_dir)),
                  teacher_model=str(tiny_teacher_path), train_dataset=dataset, processing_class=tokenizer)
    with pytest.raises(TypeError, match="KDConfig"):
        from trl import SFTConfig

        KDTrainer(str(tiny_model_path), args=SFTConfig(output_dir=str(tmp_path), bf16=False), train_dataset=dataset)


def test_distill_saves_atomically_and_reports(tmp_path, items, logits_dir, tiny_model_path):
    from transformers import AutoModelForCausalLM

    from training.distill import distill, distill_config

    out = tmp_path / "F_student_model"
    out.mkdir()
    (out / ".done.json").write_text("{}")  # a stale stage marker is swapped out with the old folder
    config = distill_config(str(tmp_path / "ignored"), lora=True, max_steps=2, per_device_train_batch_size=2,
                            learning_rate=1e-2, temperature=2.0, top_k=16, disable_tqdm=True)
    metrics = distill(tiny_model_path, items, out, config, logits_dir=logits_dir)

    assert metrics["steps"] == 2 and metrics["items"] == len(items) and metrics["mode"] == "offline" and metrics["lora"]
    for key in ("ce_loss", "kd_loss", "total_loss", "train_loss", "train_time"):
        assert math.isfinite(metrics[key]), key
    assert metrics["tokens"] > 0
    assert json.loads((out / "distill_metrics.json").read_text()) == metrics
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / ".done.json").exists() and not (tmp_path / "ignored").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    model = AutoModelForCausalLM.from_pretrained(out)  # the adapter loads on its base student
    assert any("lora_" in n for n, _ in model.named_parameters())

    with pytest.raises(DataError, match="no training items"):  # a student saved untrained would pass for a trained one
        distill(tiny_model_path, [], tmp_path / "unchanged", config)
    assert not (tmp_path / "unchanged").exists()
    too_long = copy.copy(config)
    too_long.max_length = 8  # every prompt is longer: every answer would be cut off
    with pytest.raises(DataError, match="after max_length=8 tokens"):
        distill(tiny_model_path, items, tmp_path / "cut", too_long)
    assert not (tmp_path / "cut").exists()

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds other files"):  # refused before training, not after
        distill(tiny_model_path, items, tmp_path / "busy", config)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_cli(tmp_path, items, tiny_model_path, tiny_teacher_path, capsys):
    from data.records import write_jsonl
    from training.distill import main

    data = tmp_path / "items.jsonl"
    write_jsonl(data, items[:2])
    out = tmp_path / "student"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("alpha: 0.8\ntemperature: 2.0\nmax_steps: 1\nreport_to: none\ndisable_tqdm: true\n")
    code = main(["--student", str(tiny_model_path), "--teacher", str(tiny_teacher_path), "--data", str(data),
                 "--config", str(recipe), "--output_dir", str(out), "--per_device_train_batch_size", "2"])
    assert code == 0
    printed = capsys.readouterr().out  # the Trainer prints its log lines before the metrics
    metrics = json.loads(printed[printed.rindex('{\n  "steps"') :])
    assert metrics["steps"] == 1 and metrics["mode"] == "online" and (out / "model.safetensors").is_file()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n{\"id\": \"x\"}\n")
    assert main(["--student", str(tiny_model_path), "--data", str(bad), "--output_dir", str(out)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert main(["--student", str(tiny_model_path), "--data", str(data), "--alpha", "2"]) == 2
    assert "alpha must be in [0, 1]" in capsys.readouterr().err
