"""KVDistillation hosted by KDTrainer, on tiny random models: two heterogeneous teachers (a Llama with
other widths and head counts, and a BERT encoder with the MiniLM WordPiece tokenizer) beside a tiny
Llama student with the SmolLM2 tokenizer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.testing_utils import make_tiny_llama


@pytest.fixture(scope="module")
def kv_models(smollm2_path, tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from engines import parse_spec

    root = tmp_path_factory.mktemp("kv_models")
    student = make_tiny_llama(smollm2_path, root / "student", hidden=32, layers=2, seed=0)
    decoder = make_tiny_llama(smollm2_path, root / "decoder", hidden=48, layers=3, seed=1)  # 2 kv heads x 12
    minilm = parse_spec("minilm").local_path()
    tok = AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(2)
    config = BertConfig(vocab_size=len(tok), hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=48, max_position_embeddings=512)
    BertModel(config).save_pretrained(root / "encoder")
    tok.save_pretrained(root / "encoder")
    return {"student": student, "decoder": decoder, "encoder": root / "encoder"}


@pytest.fixture(scope="module")
def kv_items(items):
    return items[:6]


def _conversations(items):
    from training.mcq_data import mcq_conversation

    return {item.id: mcq_conversation(item) for item in items}


def _config(tmp_path, **kwargs):
    from training import KDConfig

    values = dict(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1,
        report_to="none", save_strategy="no", alpha=0.0, seed=0,
    )
    values.update(kwargs)
    return KDConfig(**values)


def _trainer(tmp_path, kv_models, kv_items, teachers, **kwargs):
    from transformers import AutoTokenizer

    from training import KDTrainer, build_dataset

    tok = AutoTokenizer.from_pretrained(kv_models["student"])
    config = _config(tmp_path, kv_teachers=[str(kv_models[t]) for t in teachers] if teachers else None, **kwargs)
    return KDTrainer(
        str(kv_models["student"]), args=config, train_dataset=build_dataset(kv_items, tok), processing_class=tok,
        kv_conversations=_conversations(kv_items),
    )


def _first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer.objectives.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_kv_batches_carry_each_teachers_tokens(tmp_path, kv_models, kv_items):
    trainer = _trainer(tmp_path, kv_models, kv_items, ["decoder", "encoder"])
    batch = _first_batch(trainer)
    b, length = batch["input_ids"].shape
    for i in (0, 1):
        ids, mask, overlap = batch[f"kv{i}_input_ids"], batch[f"kv{i}_attention_mask"], batch[f"kv{i}_overlap"]
        assert ids.shape == mask.shape and overlap.shape == (b, length, ids.shape[1])
        rows = overlap.sum(-1)
        # Every student token with content characters overlaps some teacher token; template tokens do not.
        assert (rows > 0).sum() > 0.6 * batch["attention_mask"].sum()
    # The encoder reads its own WordPiece tokens, with its own [CLS] first and no <|im_start|> of the student.
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(kv_models["encoder"])
    text = enc.decode(batch["kv1_input_ids"][0][batch["kv1_attention_mask"][0].bool()])
    assert text.startswith("[CLS]") and "im_start" not in text and "<|" not in text


def test_training_runs_logs_components_and_saves_manifest(tmp_path, kv_models, kv_items):
    trainer = _trainer(tmp_path, kv_models, kv_items, ["decoder", "encoder"], kv_fusion="learnable", kv_beta=0.5,
                       kv_gamma=0.5, max_steps=3)
    before = {n: p.detach().clone() for n, p in trainer.objectives.named_parameters()}
    trainer.train()
    logged = trainer.state.log_history[0]
    for key in ("kv_loss", "kv_mse_k/decoder", "kv_mse_v/encoder", "kv_cos/decoder", "kv_attn_kl/encoder",
                "kv_weight/decoder", "kv_weight/encoder", "kv_entropy_penalty"):
        assert key in logged and math.isfinite(logged[key]), key
    assert logged["kv_weight/decoder"] + logged["kv_weight/encoder"] == pytest.approx(1.0, abs=1e-4)
    changed = [n for n, p in trainer.objectives.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any(n.startswith("0.router") for n in changed) and any("adapters" in n for n in changed)

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    manifest = json.loads((out / "kv_manifest.json").read_text())
    assert [t["name"] for t in manifest["teachers"]] == ["decoder", "encoder"]
    assert manifest["teachers"][1]["layout"]["kind"] == "encoder"
    assert manifest["teachers"][0]["layer_map"] and len(manifest["teachers"][0]["tokenizer_fingerprint"]) == 16
    assert manifest["settings"]["fusion"] == "learnable"
    for picture in ("kv_routing.png", "kv_layer_map.png", "kv_alignment.png"):
        assert (out / picture).stat().st_size > 1000, picture
    assert len(trainer.objectives[0].history) == 3  # one record per micro-batch, each teacher's weight

    # Adapters and router come back from objectives.safetensors and give the same loss.
    batch = _first_batch(trainer)
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    fresh = _trainer(tmp_path / "fresh", kv_models, kv_items, ["decoder", "encoder"], kv_fusion="learnable",
                     kv_beta=0.5, kv_gamma=0.5)
    fresh.model.load_state_dict(trainer.model.state_dict())
    from safetensors.torch import load_file

    fresh.objectives.load_state_dict(load_file(str(out / "objectives.safetensors")))
    fresh.model.eval()
    with torch.no_grad():
        again = fresh.compute_loss(fresh.model, dict(batch))
    torch.testing.assert_close(again, loss, rtol=1e-6, atol=1e-6)


def test_zero_weights_give_exactly_the_kd_trainer_loss(tmp_path, kv_models, kv_items):
    plain = _trainer(tmp_path / "plain", kv_models, kv_items, [])
    kv = _trainer(tmp_path / "kv", kv_models, kv_items, ["decoder"], kv_lambda_k=0.0, kv_lambda_v=0.0)
    kv.model.load_state_dict(plain.model.state_dict())
    batch = _first_batch(kv)
    plain_batch = {k: v for k, v in batch.items() if not k.startswith("kv")}
    loss_plain, grads_plain = _loss_and_grads(plain, plain_batch)
    loss_kv, grads_kv = _loss_and_grads(kv, batch)
    assert torch.equal(loss_plain, loss_kv)
    assert grads_plain.keys() == grads_kv.keys()
    for name in grads_plain:
        assert torch.equal(grads_plain[name], grads_kv[name]), name


def test_one_teacher_at_weight_one_is_the_single_teacher_loss(tmp_path, kv_models, kv_items):
    """The multi-teacher path (routing, renormalisation over covering teachers, fusion) adds nothing."""
    from training.kv.align import row_normalize
    from training.losses.kv import kv_token_loss

    trainer = _trainer(tmp_path, kv_models, kv_items, ["decoder"], kv_beta=0.3, kv_weights=[1.0])
    objective = trainer.objectives[0]
    batch = _first_batch(trainer)
    student = trainer.model
    inputs = {k: v for k, v in batch.items() if not k.startswith("kv") and k != "labels"}
    with objective.recording():
        student.model(**inputs)
    from training.objectives import ObjectiveInputs

    extras = {k: v for k, v in batch.items() if k.startswith("kv")}
    fused = objective(ObjectiveInputs(student, None, None, None, batch["attention_mask"], extras))
    fused.backward()
    fused_grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)
    objective.zero_grad(set_to_none=True)

    # The same loss written out for one teacher, straight from the pure functions.
    with objective.recording():
        student.model(**inputs)
    capture = objective._student_capture
    states = objective._teacher_states(0, extras, need_nll=False, need_rotary=False)
    overlap = extras["kv0_overlap"]
    a = row_normalize(overlap)
    cover = (overlap.sum(-1) > 0) & batch["attention_mask"].bool()
    per_layer = []
    for layer, sources in objective.layer_maps[0].items():
        t_k = sum(w * states["keys"][t] for t, w in sources)
        t_v = sum(w * states["values"][t] for t, w in sources)
        target_k = torch.einsum("bst,bthd->bshd", a, objective.adapters[f"t0_l{layer}_k"](t_k))
        target_v = torch.einsum("bst,bthd->bshd", a, objective.adapters[f"t0_l{layer}_v"](t_v))
        loss, _ = kv_token_loss(capture.keys[layer], capture.values[layer], target_k, target_v, cover,
                                objective.settings.loss_weights)
        per_layer.append(loss)
    token_loss = torch.stack(per_layer).mean(0)
    single = (token_loss * cover).sum() / cover.sum()
    single.backward()
    assert torch.equal(fused.detach(), single.detach())
    for name, grad in fused_grads.items():
        assert torch.equal(grad, dict(student.named_parameters())[name].grad), name


def test_fixed_one_zero_equals_the_first_teacher_alone(tmp_path, kv_models, kv_items):
    one = _trainer(tmp_path / "one", kv_models, kv_items, ["decoder"])
    two = _trainer(tmp_path / "two", kv_models, kv_items, ["decoder", "encoder"], kv_weights=[1.0, 0.0])
    two.model.load_state_dict(one.model.state_dict())
    two.objectives[0].adapters.load_state_dict(
        {k: v for k, v in one.objectives[0].adapters.state_dict().items()}, strict=False
    )
    batch = _first_batch(two)
    loss_two, grads_two = _loss_and_grads(two, batch)
    loss_one, grads_one = _loss_and_grads(one, {k: v for k, v in batch.items() if not k.startswith("kv1")})
    assert torch.equal(loss_one, loss_two)
    for name in grads_one:
        assert torch.equal(grads_one[name], grads_two[name]), name


@pytest.mark.parametrize("fusion", ["similarity", "mince", "avgce", "domain", "teacher_ce"])
def test_other_fusions_run(tmp_path, kv_models, kv_items, fusion):
    teachers = ["decoder", "decoder"] if fusion != "similarity" else ["decoder", "encoder"]
    extra = {}
    if fusion == "domain":
        extra = {"kv_teacher_domains": ["medmcqa|medqa", "mmlu"]}
    if fusion == "teacher_ce":
        fusion, extra = "learnable", {"kv_router_target": "teacher_ce"}
    from transformers import AutoTokenizer

    from training import KDTrainer, build_dataset

    tok = AutoTokenizer.from_pretrained(kv_models["student"])
    config = _config(tmp_path, kv_teachers=[str(kv_models[t]) for t in teachers], kv_fusion=fusion, max_steps=1, **extra)
    trainer = KDTrainer(str(kv_models["student"]), args=config, train_dataset=build_dataset(kv_items, tok),
                        processing_class=tok, kv_conversations=_conversations(kv_items),
                        kv_tags={i.id: i.source for i in kv_items})
    trainer.train()
    logged = trainer.state.log_history[0]
    weights = [v for k, v in logged.items() if k.startswith("kv_weight/")]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0, abs=1e-4)
    assert math.isfinite(logged["kv_loss"])
    objective = trainer.objectives[0]
    if fusion == "domain":  # each item's weight sits on the teacher owning its source
        for tag, weights in objective.tag_history[0].items():
            owner = 1 if tag == "mmlu" else 0 if tag in ("medmcqa", "medqa") else None
            if owner is not None:
                assert weights[objective.teacher_names[owner]] == pytest.approx(1.0)
    if extra.get("kv_router_target"):
        assert math.isfinite(logged["kv_router_kl"]) and "kv_entropy_penalty" not in logged


def test_refusals_before_the_first_step(tmp_path, kv_models, kv_items):
    from training.kv.errors import KVSetupError

    with pytest.raises(KVSetupError, match="ranks teachers by their cross-entropy"):
        _trainer(tmp_path, kv_models, kv_items, ["decoder", "encoder"], kv_fusion="mince")
    with pytest.raises(KVSetupError, match="outside 0..1"):
        _trainer(tmp_path, kv_models, kv_items, ["decoder"], kv_layer_map="5:0")
    with pytest.raises(KVSetupError, match="neither divides"):
        _trainer(tmp_path, kv_models, kv_items, ["encoder"], kv_head_mixing="group")  # 3 kv heads vs 2
    with pytest.raises(KVSetupError, match="no LM head"):
        _trainer(tmp_path, kv_models, kv_items, ["encoder"], alpha=0.5)
    with pytest.raises(KVSetupError, match="needs an encoder"):
        _trainer(tmp_path, kv_models, kv_items, ["decoder", "decoder"], kv_phase=5)
    with pytest.raises(KVSetupError, match="at least 2"):
        _trainer(tmp_path, kv_models, kv_items, ["decoder", "encoder"], kv_phase=1)


def test_kdconfig_kv_range_checks(tmp_path):
    from training import KDConfig

    config = KDConfig(output_dir=str(tmp_path), kv_teachers=["a,b", "c"])
    assert config.kv_teachers == ["a", "b", "c"]
    bad = [
        ({"kv_fusion": "vote"}, "kv_fusion"),
        ({"kv_lambda_k": -1.0}, "lambda_k"),
        ({"kv_tau": 0.0}, "kv_tau"),
        ({"kv_teachers": ["a", "b"], "kv_weights": [1.0]}, "2 kv_teachers"),
        ({"kv_phase": 4}, "need kv_teachers"),
        ({"kv_teachers": ["a"], "kv_phase": 9}, "phases"),
        ({"kv_teachers": ["a"], "kv_schedule": "1:5"}, "step 0"),
        ({"kv_teachers": ["a"], "kv_phase": 1, "kv_schedule": "1:0"}, "not both"),
        ({"kv_loss_weight": -0.1}, "kv_loss_weight"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            KDConfig(output_dir=str(tmp_path), **kwargs)


def test_schedule_switches_phase_by_step(tmp_path, kv_models, kv_items, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="training.kv.objective"):
        trainer = _trainer(tmp_path, kv_models, kv_items, ["decoder", "decoder", "encoder"], kv_schedule="1:0,4:1,5:2",
                           max_steps=3)
        trainer.train()
    started = [r.getMessage() for r in caplog.records if "KV curriculum phase" in r.getMessage()]
    assert [m.split(":")[0] for m in started] == ["KV curriculum phase 1", "KV curriculum phase 4", "KV curriculum phase 5"]
    history = trainer.objectives[0].history
    assert history[0]["encoder"] == 0.0 and history[0]["decoder"] == pytest.approx(0.5)  # phase 1: two decoders
    assert history[-1]["encoder"] > 0.0  # phase 5 brings the encoder in


def test_post_rope_with_equal_bases_equals_pre_rope(tmp_path, kv_models, kv_items):
    """Rotation by the same angles keeps distances and cosines: post-RoPE comparison changes nothing then,
    and only a different (NTK-scaled) base moves the loss."""
    pre = _trainer(tmp_path / "pre", kv_models, kv_items, ["decoder"], kv_beta=0.5)
    post = _trainer(tmp_path / "post", kv_models, kv_items, ["decoder"], kv_beta=0.5, kv_rope="post_ntk")
    ntk = _trainer(tmp_path / "ntk", kv_models, kv_items, ["decoder"], kv_beta=0.5, kv_rope="post_ntk", kv_ntk_scale=4.0)
    for other in (post, ntk):
        other.model.load_state_dict(pre.model.state_dict())
        other.objectives.load_state_dict(pre.objectives.state_dict())
    batch = _first_batch(pre)
    with torch.no_grad():
        losses = [t.compute_loss(t.model, dict(batch)) for t in (pre, post, ntk)]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert (losses[2] - losses[0]).abs() > 1e-3  # other angles for the target: another loss


def test_distill_cli_kv_flags(tmp_path, kv_models, kv_items, capsys):
    """The issue's spelling of the flags parses; the summary has the KV figures; a refusal is one line, exit 2."""
    from data.records import write_jsonl
    from training.distill import main, make_parser

    _, config = make_parser().parse_args_and_config(
        ["--student", "s", "--data", "d", "--kv-teachers", "a,b", "--fusion", "learnable", "--router", "attention",
         "--phase", "4"]
    )
    assert (config.kv_teachers, config.kv_fusion, config.kv_router, config.kv_phase) == (["a", "b"], "learnable", "attention", 4)

    data = tmp_path / "items.jsonl"
    write_jsonl(data, kv_items)
    out = tmp_path / "student"
    teachers = f"{kv_models['decoder']},{kv_models['encoder']}"
    code = main(["--student", str(kv_models["student"]), "--data", str(data), "--kv-teachers", teachers, "--phase", "5",
                 "--alpha", "0", "--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none",
                 "--output_dir", str(out), "--disable_tqdm", "true"])
    assert code == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed[printed.rindex('{\n  "steps"') :])
    assert metrics["mode"] == "sft+kv" and metrics["steps"] == 2
    assert {"kv_loss", "kv_weight/decoder", "kv_weight/encoder", "kv_mse_k/encoder"} <= set(metrics)
    assert (out / "kv_manifest.json").is_file() and (out / "kv_routing_by_tag.png").is_file()

    code = main(["--student", str(kv_models["student"]), "--data", str(data), "--kv-teachers", str(kv_models["encoder"]),
                 "--kv_head_mixing", "group", "--output_dir", str(tmp_path / "refused"), "--report_to", "none"])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the loaders' progress bars: one line
    assert code == 2 and last.startswith("error: ") and "neither divides" in last
    assert not (tmp_path / "refused").exists()


def test_teacher_without_fast_tokenizer_is_refused(monkeypatch, kv_models):
    from transformers import AutoTokenizer

    from training.kv.teachers import TeacherError, load_kv_teacher

    real = AutoTokenizer.from_pretrained

    def slow(*args, **kwargs):
        tok = real(*args, **kwargs)
        monkeypatch.setattr(type(tok), "is_fast", property(lambda self: False))
        return tok

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", slow)
    with pytest.raises(TeacherError, match="no fast tokenizer"):
        load_kv_teacher(str(kv_models["decoder"]))
