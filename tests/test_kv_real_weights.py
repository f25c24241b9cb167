"""Real weights: SmolLM2-135M-Instruct (decoder, byte-level BPE, chat template) and all-MiniLM-L6-v2 (encoder,
WordPiece) as the two KV teachers of a 4-layer SmolLM2 student on clinical MCQs."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.mark.slow
def test_smollm2_and_minilm_teach_a_small_student(items, tmp_path):
    from transformers import AutoTokenizer

    from engines import parse_spec
    from training import KDConfig, KDTrainer, build_dataset
    from training.mcq_data import mcq_conversation

    student = parse_spec("smollm2?layers=4").local_path()
    tok = AutoTokenizer.from_pretrained(student)
    chosen = sorted(items, key=lambda i: len(i.question))[:2]  # one short batch, seen every step
    config = KDConfig(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=2, learning_rate=5e-4, logging_steps=1,
        report_to="none", save_strategy="no", alpha=0.0, seed=0, kv_teachers=["smollm2", "minilm"], kv_phase=5,
        kv_beta=0.5, kv_gamma=0.5, disable_tqdm=True,
    )
    trainer = KDTrainer(str(student), args=config, train_dataset=build_dataset(chosen, tok), processing_class=tok,
                        kv_conversations={i.id: mcq_conversation(i) for i in chosen}, kv_tags={i.id: i.source for i in chosen})
    objective = trainer.objectives[0]
    assert [t.layout.kind for t in objective.teachers] == ["decoder", "encoder"]
    assert objective.phase == 5 and objective.active == [0, 1]
    trainer.train()
    logs = [e for e in trainer.state.log_history if "kv_loss" in e]
    assert len(logs) == 10
    for entry in logs:
        for key in ("ce_loss", "kv_loss", "total_loss", "kv_mse_k/smollm2", "kv_mse_v/minilm", "kv_cos/smollm2",
                    "kv_attn_kl/minilm", "kv_weight/smollm2", "kv_weight/minilm", "kv_entropy_penalty"):
            assert math.isfinite(entry[key]), (key, entry)
    assert logs[-1]["total_loss"] < logs[0]["total_loss"]
    assert logs[-1]["kv_loss"] < logs[0]["kv_loss"]
    out = tmp_path / "student"
    trainer.save_model(str(out))
    for name in ("kv_manifest.json", "objectives.safetensors", "kv_routing.png", "kv_routing_by_tag.png",
                 "kv_layer_map.png", "kv_alignment.png"):
        assert (out / name).is_file(), name
    # Every student token with content characters got mass from the WordPiece encoder (rows sum to 1).
    batch = next(iter(trainer.get_train_dataloader()))
    overlap = batch["kv1_overlap"]
    rows = overlap.sum(-1)
    assert (rows > 0).sum() > 0
    from training.kv.align import row_normalize

    a = row_normalize(overlap)
    torch.testing.assert_close(a.sum(-1)[rows > 0], torch.ones(int((rows > 0).sum())))
