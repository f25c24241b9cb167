"""Offline KV teachers: python -m training.teacher_kv writes the store; training from it gives the online loss."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_kv_objective import _conversations, _first_batch, kv_items, kv_models  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def kv_store(kv_models, kv_items, tmp_path_factory):  # noqa: F811
    from data.records import write_jsonl
    from training.teacher_kv import main

    root = tmp_path_factory.mktemp("kv_store")
    data = root / "items.jsonl"
    write_jsonl(data, kv_items)
    out = root / "kv"
    code = main([
        "--teachers", f"{kv_models['decoder']},{kv_models['encoder']}", "--student", str(kv_models["student"]),
        "--data", str(data), "--out", str(out), "--queries", "--lm-head", "--no-progress", "--items-per-shard", "3",
    ])
    assert code == 0
    return {"dir": out, "data": data}


def _trainer(tmp_path, kv_models, kv_items, **kwargs):  # noqa: F811
    from transformers import AutoTokenizer

    from tests.test_kv_objective import _config
    from training import KDTrainer, build_dataset

    tok = AutoTokenizer.from_pretrained(kv_models["student"])
    return KDTrainer(
        str(kv_models["student"]), args=_config(tmp_path, **kwargs), train_dataset=build_dataset(kv_items, tok),
        processing_class=tok, kv_conversations=_conversations(kv_items),
    )


def test_store_layout_and_bytes_per_token(kv_store, capsys):
    index = json.loads((kv_store["dir"] / "index.json").read_text())
    assert index["format"] == "atkd-kv-v1" and index["num_items"] >= 3
    decoder, encoder = index["teachers"]
    # ratio map, 3 teacher layers onto 2 student layers: all three are read; 2 encoder layers onto 2.
    assert decoder["layers"] == [0, 1, 2] and encoder["layers"] == [0, 1]
    assert decoder["causal_lm"] and not encoder["causal_lm"] and encoder["rope_theta"] is None
    assert len(decoder["shards"]) == -(-index["num_items"] // 3)
    # float16 K, V and Q per layer, int32 ids and float32 NLL: decoder 2 kv heads x 12, 4 q heads x 12.
    assert decoder["bytes_per_token"] == pytest.approx(3 * (2 * 24 + 48) * 2 + 4 + 4, rel=0.05)
    from safetensors import safe_open

    with safe_open(str(kv_store["dir"] / "t0" / decoder["shards"][0]), framework="pt") as f:
        assert f.get_tensor("k.1").dtype == torch.float16 and f.get_tensor("k.1").shape[1:] == (2, 12)


def test_offline_gives_the_online_loss(tmp_path, kv_store, kv_models, kv_items):  # noqa: F811
    settings = dict(kv_beta=0.5, kv_gamma=0.5, kv_fusion="avgce")
    online = _trainer(tmp_path / "on", kv_models, kv_items, kv_teachers=[str(kv_models["decoder"]), str(kv_models["encoder"])],
                      **{**settings, "kv_fusion": "fixed"})
    offline = _trainer(tmp_path / "off", kv_models, kv_items, kv_dir=str(kv_store["dir"]), **{**settings, "kv_fusion": "fixed"})
    assert all(t.model is None for t in offline.objectives[0].teachers)
    offline.model.load_state_dict(online.model.state_dict())
    offline.objectives.load_state_dict(online.objectives.state_dict())
    batch_on, batch_off = _first_batch(online), _first_batch(offline)
    assert torch.equal(batch_on["input_ids"], batch_off["input_ids"])
    assert batch_off["kv0_k.2"].dtype == torch.float16
    with torch.no_grad():
        loss_on = online.compute_loss(online.model, dict(batch_on))
        loss_off = offline.compute_loss(offline.model, dict(batch_off))
    # The same loss up to the float16 rounding of the stored K/V.
    torch.testing.assert_close(loss_off, loss_on, rtol=2e-3, atol=1e-5)
    assert online.objectives[0].metrics.keys() == offline.objectives[0].metrics.keys()


def test_offline_ce_routing_uses_stored_nll(tmp_path, kv_store, kv_models, kv_items):  # noqa: F811
    with pytest.raises(ValueError, match="cross-entropy"):  # the encoder has no NLL
        _trainer(tmp_path, kv_models, kv_items, kv_dir=str(kv_store["dir"]), kv_fusion="mince")


def test_refusals(tmp_path, kv_store, kv_models, kv_items, capsys):  # noqa: F811
    from training.teacher_kv import main

    code = main(["--teachers", str(kv_models["decoder"]), "--student-layers", "2", "--data", str(kv_store["data"]),
                 "--out", str(kv_store["dir"])])
    assert code == 2 and "--force" in capsys.readouterr().err
    code = main(["--teachers", str(kv_models["decoder"]), "--data", str(kv_store["data"]), "--out", str(tmp_path / "x")])
    assert code == 2 and "--student" in capsys.readouterr().err
    code = main(["--teachers", str(kv_models["decoder"]), "--student-layers", "2", "--layer-map", "7:0",
                 "--data", str(kv_store["data"]), "--out", str(tmp_path / "y")])
    assert code == 2 and "outside" in capsys.readouterr().err
    assert not (tmp_path / "y" / "index.json").exists()
    # A store made for another student (its layer map reads other teacher layers) is refused before training.
    from training.kv.errors import KVSetupError

    small = tmp_path / "one-layer"
    assert main(["--teachers", str(kv_models["decoder"]), "--student-layers", "1", "--layer-map", "skip",
                 "--data", str(kv_store["data"]), "--out", str(small), "--no-progress"]) == 0
    assert json.loads((small / "index.json").read_text())["teachers"][0]["layers"] == [2]
    with pytest.raises(KVSetupError, match="store them for this student"):
        _trainer(tmp_path, kv_models, kv_items, kv_dir=str(small))
    with pytest.raises(ValueError, match="not both"):
        _trainer(tmp_path, kv_models, kv_items, kv_dir=str(kv_store["dir"]), kv_teachers=["x"])


def test_changed_text_is_refused(tmp_path, kv_store, kv_models, kv_items):  # noqa: F811
    """Items edited after their K/V were stored: the stored teacher tokens no longer match."""
    edited = [item.model_copy(update={"question": item.question + " (edited)"}) for item in kv_items]
    trainer = _trainer(tmp_path, kv_models, edited, kv_dir=str(kv_store["dir"]))
    with pytest.raises(ValueError, match="store them again"):
        _first_batch(trainer)


def test_kv_teachers_beside_stored_logits(tmp_path, kv_models, kv_items):  # noqa: F811
    """The loop's train stage: stored top-k logits (alpha > 0) and online KV teachers in the same batches."""
    from tests.test_training_teacher_logits import TinyTopKEngine
    from training.teacher_logits import extract_teacher_logits

    logits = tmp_path / "logits"
    extract_teacher_logits(TinyTopKEngine(kv_models["student"]), kv_items, logits, k=8)
    trainer = _trainer(tmp_path / "run", kv_models, kv_items, logits_dir=str(logits), alpha=0.5, top_k=8,
                       kv_teachers=[str(kv_models["encoder"])], max_steps=1)
    batch = _first_batch(trainer)
    assert {"teacher_topk_ids", "kv0_input_ids", "kv0_overlap"} <= set(batch)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor([logged["kd_loss"], logged["kv_loss"]])).all()
