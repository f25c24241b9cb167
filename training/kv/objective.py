"""``KVDistillation``: the multi-teacher KV-cache objective that ``KDTrainer`` hosts.

Per micro-batch: every teacher reads its own tokens of the batch's conversations (``KVCollator``) with no
gradient; forward hooks keep the K/V projections (pre-RoPE) of the mapped layers of teachers and student.
For teacher i and mapped student layer s, the teacher layers feeding s are interpolated, projected into
the student's heads (``KVAdapter``, learned) and moved onto the student's tokens through the alignment
A (``(B, L_s, L_t)``). ``training.losses.kv.kv_token_loss`` gives the per-token loss of each teacher
(mean over its mapped layers); the router's weights combine the teachers (``fuse_teacher_losses``),
renormalised over the teachers that cover each token. A learned router adds its entropy penalty.

Logged per step (``kv_<metric>``): each term per teacher (``kv_mse_k/<teacher>`` ...), the mean routing
weight per teacher (``kv_weight/<teacher>``) and the entropy penalty.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Sequence

import torch
from torch import nn

from training.kv.adapters import AdapterShapeError, KVAdapter
from training.kv.align import (
    apply_rotary,
    ntk_scaled_base,
    rope_inv_freq,
    rotary_cos_sin,
    row_normalize,
    teacher_layers_used,
)
from training.kv.align import layer_map as make_layer_map
from training.kv.collator import teacher_keys
from training.kv.curriculum import Phase, apply_phase
from training.kv.fusion import (
    LearnedRouter,
    avgce_weights,
    domain_weights,
    entropy_penalty,
    fixed_weights,
    mince_weights,
    similarity_weights,
    teacher_prototypes,
)
from training.kv.models import (
    KVCapture,
    attention_layout,
    attention_probs,
    rope_theta,
    rotary_cos_sin_of,
    run_captured,
)
from training.kv.settings import KVSettings
from training.kv.teachers import KVTeacher, teacher_names
from training.losses.kv import (
    fuse_teacher_losses,
    kv_token_loss,
    map_attention,
)
from training.objectives import Objective, ObjectiveInputs

logger = logging.getLogger(__name__)

MANIFEST_FILE = "kv_manifest.json"


class KVDistillation(Objective):
    """Multi-teacher KV distillation of ``student`` from ``teachers`` (see the module docstring)."""

    needs_teacher = False
    batch_prefix = "kv"

    def __init__(
        self,
        student: nn.Module,
        teachers: Sequence[KVTeacher],
        settings: KVSettings | None = None,
        *,
        weight: float = 1.0,
        name: str = "kv",
        phases: dict[int, Phase] | None = None,
        schedule: Sequence[tuple[int, int]] = (),
    ) -> None:
        super().__init__(name, weight)
        if not teachers:
            raise ValueError("KV distillation needs at least one teacher")
        self.base_settings = settings or KVSettings()
        self.teachers = list(teachers)  # a plain list: frozen teachers are neither trained nor saved
        self.teacher_names = teacher_names(self.teachers)
        self.phases = dict(phases or {})
        self.schedule = list(schedule)
        # Check every phase the schedule reaches before the first step, so none fails half-way.
        reachable = [self._phase_setup(n) for _, n in self.schedule] or [(list(range(len(self.teachers))), self.base_settings)]
        if not self.schedule:
            self._check_settings(self.base_settings, self.teachers)
        s = self.base_settings
        self.layout = attention_layout(student)
        self.layer_maps = []
        self.adapters = nn.ModuleDict()
        self._teacher_captures = []
        student_layers: set[int] = set()
        for i, teacher in enumerate(self.teachers):
            try:
                mapping = make_layer_map(s.layer_map, self.layout.num_layers, teacher.layout.num_layers)
            except ValueError as e:
                raise ValueError(f"KV teacher {teacher.spec}: {e}") from None
            self.layer_maps.append(mapping)
            student_layers.update(mapping)
            t = teacher.layout
            for layer in mapping:
                for kind in ("k", "v"):
                    try:
                        adapter = KVAdapter(t.num_kv_heads, t.head_dim, self.layout.num_kv_heads, self.layout.head_dim, s.head_mixing)
                    except AdapterShapeError as e:
                        raise AdapterShapeError(f"KV teacher {teacher.spec}: {e}") from None
                    self.adapters[f"t{i}_l{layer}_{kind}"] = adapter
            wants_queries = any(x.gamma > 0 for _, x in reachable)
            if teacher.model is not None:
                self._teacher_captures.append(KVCapture(teacher.model, teacher_layers_used(mapping), queries=wants_queries))
            else:
                self._teacher_captures.append(None)
                self._check_stored(teacher, teacher_layers_used(mapping), wants_queries)
        self._student_capture = KVCapture(student, sorted(student_layers), queries=any(x.gamma > 0 for _, x in reachable))
        self._student = [student]  # not a submodule: the trainer owns and saves the student
        self.router = None
        learned = [settings for _, settings in reachable if settings.fusion == "learnable"]
        if learned:
            self.router = LearnedRouter(self.layout.hidden_size, len(self.teachers), learned[0].router, learned[0].granularity)
        self.needs_hidden_states = self.router is not None
        self._metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []  # per call: the routing weight of each teacher (for the pictures)
        self.tag_history: list[dict[str, dict[str, float]]] = []  # per call: the same per item tag
        self.tag_names: list[str] = []  # the collator's tags, indexed by the batch's kv_tag
        self.student_tokenizer: Any = None  # set by the trainer: token labels in the alignment picture
        self._example: dict[str, Any] | None = None  # the first batch's first item, for the alignment picture
        self.phase: int | None = None
        self.active, self.settings = reachable[0]
        if self.schedule:
            self.set_phase(self.schedule[0][1])

    @staticmethod
    def _check_stored(teacher: KVTeacher, layers: Sequence[int], queries: bool) -> None:
        stored = teacher.stored or {}
        missing = sorted(set(layers) - set(stored.get("layers", [])))
        if missing:
            raise ValueError(
                f"stored K/V of {teacher.name} hold layers {stored.get('layers')} but the layer map reads {missing}: "
                "store them for this student's layer count and kv_layer_map (python -m training.teacher_kv --student ...)"
            )
        if queries and not stored.get("queries"):
            raise ValueError(f"kv_gamma > 0 needs the queries of {teacher.name}: store them with --queries")
        if queries and teacher.layout.kind == "decoder" and teacher.rope_theta is None:
            raise ValueError(f"kv_gamma > 0 with stored K/V needs a default-RoPE decoder; {teacher.name} has a scaled RoPE")

    # ------------------------------------------------------------------------------------ phases

    def _phase_setup(self, number: int) -> tuple[list[int], KVSettings]:
        """The teachers and settings of a phase, checked against the teachers at hand."""
        if number not in self.phases:
            raise ValueError(f"no phase {number} in the curriculum (phases {sorted(self.phases)})")
        phase = self.phases[number]
        chosen = phase.select([t.layout.kind for t in self.teachers], self.teacher_names)
        settings = apply_phase(self.base_settings, phase)
        self._check_settings(settings, [self.teachers[i] for i in chosen], f"phase {number}: ")
        return chosen, settings

    @staticmethod
    def _check_settings(settings: KVSettings, teachers: Sequence[KVTeacher], where: str = "") -> None:
        if settings.weights is not None and len(settings.weights) != len(teachers):
            raise ValueError(f"{where}kv_weights has {len(settings.weights)} entries for {len(teachers)} teachers")
        if settings.fusion == "domain" and (settings.teacher_domains is None or len(settings.teacher_domains) != len(teachers)):
            raise ValueError(f"{where}kv_fusion domain needs kv_teacher_domains, one entry per teacher ({len(teachers)})")
        if settings.needs_teacher_ce:
            encoders = [t.spec for t in teachers if not t.causal_lm]
            if encoders:
                what = settings.fusion if settings.fusion != "learnable" else "learnable with kv_router_target teacher_ce"
                raise ValueError(
                    f"{where}kv_fusion {what} ranks teachers by their cross-entropy on the text, which "
                    f"{encoders} cannot give (an encoder, or a decoder loaded without its LM head); choose fixed, "
                    "similarity or learnable"
                )

    def set_phase(self, number: int) -> None:
        """Switch to a curriculum phase (logged with its settings)."""
        self.active, self.settings = self._phase_setup(number)
        self.phase = number
        logger.info("KV curriculum %s", self.phases[number].describe(self.teacher_names, self.active))

    # ------------------------------------------------------------------------------ hooks for the trainer

    def recording(self):
        return self._student_capture.recording()

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": "atkd-kv-manifest-v1",
            "settings": asdict(self.settings),
            "student": self.layout.as_dict(),
            "teachers": [
                {
                    "name": self.teacher_names[i],
                    **teacher.manifest(),
                    "layer_map": {str(k): v for k, v in self.layer_maps[i].items()},
                    "adapters": {
                        key: list(self.adapters[key].shapes) + [self.adapters[key].identity]
                        for key in self.adapters
                        if key.startswith(f"t{i}_")
                    },
                }
                for i, teacher in enumerate(self.teachers)
            ],
            "router": None if self.router is None else {"kind": self.router.kind, "granularity": self.router.granularity},
        }

    def save_extra(self, output_dir: str) -> None:
        """The manifest (specs, tokenizer fingerprints, layer maps, adapter shapes) and the pictures."""
        from pathlib import Path

        from data.records import atomic_write_json
        from training.kv import plots

        out = Path(output_dir)
        atomic_write_json(out / MANIFEST_FILE, self.manifest())
        plots.plot_routing(self.history, out / "kv_routing.png", window=max(1, len(self.history) // 50))
        plots.plot_routing_by_tag(self.tag_history, out / "kv_routing_by_tag.png")
        plots.plot_layer_maps(self.layer_maps, self.teacher_names, self.layout.num_layers,
                              [t.layout.num_layers for t in self.teachers], out / "kv_layer_map.png")
        plots.plot_alignments(self._alignment_examples(), out / "kv_alignment.png")

    def _remember_example(self, inputs: ObjectiveInputs) -> None:
        if self._example is not None or inputs.input_ids is None:
            return
        n = int(inputs.attention_mask[0].sum())
        example = {"student_ids": inputs.input_ids[0, :n].tolist(), "teachers": {}}
        for i in self.active:
            ids, mask, overlap = (inputs.extras[k] for k in teacher_keys(i))
            m = int(mask[0].sum())
            example["teachers"][i] = (ids[0, :m].tolist(), row_normalize(overlap[0, :n, :m].float()).cpu().numpy())
        self._example = example

    def _alignment_examples(self) -> list[dict[str, Any]]:
        from training.kv.plots import alignment_panels

        if self._example is None:
            return []
        teachers = {i: (self.teacher_names[i], self.teachers[i].tokenizer, ids, matrix)
                    for i, (ids, matrix) in self._example["teachers"].items()}
        return alignment_panels(self._example["student_ids"], self.student_tokenizer, teachers)

    # ----------------------------------------------------------------------------------------- compute

    @torch.no_grad()
    def _teacher_states(self, i: int, extras: dict[str, torch.Tensor], need_nll: bool, need_rotary: bool) -> dict[str, Any]:
        """Teacher i's keys, values, queries ``{layer: (B, L_t, H, d)}``, token NLL ``(B, L_t)`` and rotary
        cos/sin: from a forward pass of the live teacher, or from the stored rows the collator put in the batch."""
        teacher = self.teachers[i]
        k_ids, k_mask, _ = teacher_keys(i)
        ids, mask = extras[k_ids], extras[k_mask]
        layers = teacher_layers_used(self.layer_maps[i])
        if teacher.model is None:
            get = lambda name: extras[f"kv{i}_{name}"].float()  # noqa: E731
            states = {
                "keys": {layer: get(f"k.{layer}") for layer in layers},
                "values": {layer: get(f"v.{layer}") for layer in layers},
                "queries": {layer: get(f"q.{layer}") for layer in layers if f"kv{i}_q.{layer}" in extras},
                "nll": get("nll") if need_nll else None,
                "ids": ids, "mask": mask, "rotary": None,
            }
            if need_rotary and teacher.layout.kind == "decoder":
                positions = torch.arange(ids.shape[1], device=ids.device)
                cos, sin = rotary_cos_sin(positions, rope_inv_freq(teacher.layout.head_dim, teacher.rope_theta).to(ids.device))
                states["rotary"] = (cos[None].expand(ids.shape[0], -1, -1), sin[None].expand(ids.shape[0], -1, -1))
            return states
        capture = self._teacher_captures[i]
        device = next(teacher.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        # The LM head runs only where CE routing needs the teacher's log-probs.
        nll = run_captured(teacher.model, teacher.layout.kind, capture, ids, mask, need_nll)
        rotary = None
        if need_rotary:
            like = capture.keys[capture.layers[0]]
            rotary = rotary_cos_sin_of(teacher.model, like, ids.shape[1])
        return {"keys": dict(capture.keys), "values": dict(capture.values), "queries": dict(capture.queries),
                "nll": nll, "ids": ids, "mask": mask, "rotary": rotary}

    @staticmethod
    def _teacher_ce_per_char(nll: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
        """Per sequence: the teacher's NLL of its content tokens per content character ``(B,)`` (comparable
        across tokenizers, unlike a per-token mean). The first token has no context and is left out."""
        chars = overlap.sum(1)[:, 1:].to(nll.device)  # characters of each teacher token shared with the student
        return (nll[:, 1:] * (chars > 0)).sum(1) / chars.sum(1).clamp(min=1.0)

    def _student_rotary(self, like: torch.Tensor):
        return rotary_cos_sin_of(self._student[0], like, like.shape[1])

    def _post_rope(self, x: torch.Tensor, base: float) -> torch.Tensor:
        """Rotate ``(B, L, H, d)`` at positions 0..L-1 with a plain rotary base (the post-RoPE option)."""
        cos, sin = rotary_cos_sin(torch.arange(x.shape[1], device=x.device), rope_inv_freq(x.shape[-1], base).to(x.device))
        return apply_rotary(x.transpose(1, 2), cos.to(x.dtype), sin.to(x.dtype)).transpose(1, 2)

    def _student_base(self) -> float:
        base = rope_theta(self._student[0])
        if base is None:
            raise ValueError("kv_rope post_ntk needs a student with default rotary embedding")
        return base

    def forward(self, inputs: ObjectiveInputs) -> torch.Tensor:
        s, weights = self.settings, self.settings.loss_weights
        capture = self._student_capture
        if not capture.keys:
            raise RuntimeError("KV distillation saw no student keys: the student forward ran outside recording()")
        mask_s = inputs.attention_mask.bool()  # (B, L_s)
        batch = mask_s.shape[0]
        self._remember_example(inputs)
        student_attn = {}
        if weights.gamma:
            any_k = next(iter(capture.keys.values()))
            rotary = self._student_rotary(any_k)
            student_attn = {
                layer: attention_probs(capture.queries[layer], capture.keys[layer], mask_s, causal=True, rotary=rotary)
                for layer in capture.layers
            }
        losses, covers, metrics, targets_for_routing, teacher_ce = [], [], {}, [], []
        for i in self.active:
            teacher = self.teachers[i]
            states = self._teacher_states(i, inputs.extras, need_nll=s.needs_teacher_ce, need_rotary=bool(weights.gamma))
            t_mask = states["mask"]
            overlap = inputs.extras[teacher_keys(i)[2]].to(mask_s.device)  # (B, L_s, L_t)
            a = row_normalize(overlap)
            cover = (overlap.sum(-1) > 0) & mask_s  # (B, L_s)
            teacher_attn = {}
            if weights.gamma:
                teacher_attn = {
                    layer: attention_probs(
                        states["queries"][layer], states["keys"][layer], t_mask.to(mask_s.device),
                        causal=teacher.layout.kind == "decoder", rotary=states["rotary"],
                    ).to(mask_s.device)
                    for layer in states["keys"]
                }
            per_layer, parts_sum = [], {}
            target_top = None
            for layer, sources in self.layer_maps[i].items():
                t_k = sum(w * states["keys"][t].to(a.device, a.dtype) for t, w in sources)  # (B, L_t, H_t, d_t)
                t_v = sum(w * states["values"][t].to(a.device, a.dtype) for t, w in sources)
                target_k = torch.einsum("bst,bthd->bshd", a, self.adapters[f"t{i}_l{layer}_k"](t_k))  # (B, L_s, H_s, d_s)
                target_v = torch.einsum("bst,bthd->bshd", a, self.adapters[f"t{i}_l{layer}_v"](t_v))
                student_k, student_v = capture.keys[layer], capture.values[layer]
                if s.rope == "post_ntk":
                    d = student_k.shape[-1]
                    # Student keys with the student's base; the target with the teacher's (the student's for an
                    # encoder, which has none), NTK-scaled for a context kv_ntk_scale times longer.
                    base = teacher.rope_theta or self._student_base()
                    student_k = self._post_rope(student_k, self._student_base())
                    target_k = self._post_rope(target_k, ntk_scaled_base(base, s.ntk_scale, d) if s.ntk_scale != 1 else base)
                attn_target = attn_student = None
                if weights.gamma:
                    mixed = sum(w * teacher_attn[t] for t, w in sources)
                    attn_target = map_attention(mixed, overlap, causal=True)
                    attn_student = student_attn[layer]
                token_loss, parts = kv_token_loss(
                    student_k.float(), student_v.float(), target_k.float(), target_v.float(), cover, weights,
                    attention_target=attn_target, attention_student=attn_student,
                )
                per_layer.append(token_loss)
                for key, value in parts.items():
                    parts_sum[key] = parts_sum.get(key, 0.0) + value  # tensors: no device sync per layer
                target_top = target_k
            losses.append(torch.stack(per_layer).mean(0))  # (B, L_s)
            covers.append(cover)
            targets_for_routing.append(target_top)
            for key, value in parts_sum.items():
                metrics[f"{key}/{self.teacher_names[i]}"] = value / len(per_layer)
            if s.needs_teacher_ce:
                teacher_ce.append(self._teacher_ce_per_char(states["nll"], overlap).to(mask_s.device))
        routed = self._route(inputs, mask_s, batch, targets_for_routing, covers, teacher_ce)  # (B, L_s, T) or (B, T)
        router_loss = None
        if self.router is not None and s.router_target == "teacher_ce":
            # The router learns which teacher knows each sequence (softmax(-CE per character / T)) instead of
            # following the fused KV loss, which pulls it onto whichever teacher is easiest to match.
            target = avgce_weights(torch.stack(teacher_ce, dim=-1), s.ce_temperature)  # (B, T)
            log_w = torch.log(routed.clamp(min=1e-12))
            if routed.dim() == 3:
                kl = (target[:, None] * (torch.log(target.clamp(min=1e-12))[:, None] - log_w)).sum(-1)  # (B, L_s)
                router_loss = (kl * mask_s).sum() / mask_s.sum().clamp(min=1)
            else:
                router_loss = (target * (torch.log(target.clamp(min=1e-12)) - log_w)).sum(-1).mean()
            metrics["router_kl"] = router_loss.detach()
            routed = routed.detach()
        per_token = routed if routed.dim() == 3 else routed[:, None, :].expand(-1, mask_s.shape[1], -1)
        cover = torch.stack(covers, dim=-1).to(per_token.dtype)  # (B, L_s, T)
        covered = per_token * cover
        total = covered.sum(-1, keepdim=True)
        fused_weights = torch.where(total > 0, covered / total.clamp(min=1e-30), torch.zeros_like(covered))
        valid = (total.squeeze(-1) > 0) & mask_s
        loss = fuse_teacher_losses(torch.stack(losses), fused_weights, valid)
        if router_loss is not None:
            loss = loss + router_loss
        elif self.router is not None and s.entropy_weight and s.entropy != "none":
            penalty = entropy_penalty(routed, mask_s, s.entropy)
            metrics["entropy_penalty"] = penalty.detach()
            loss = loss + s.entropy_weight * penalty
        m = valid.to(fused_weights.dtype)[..., None]
        mean_weights = ((fused_weights * m).sum((0, 1)) / m.sum().clamp(min=1.0)).detach()
        # One transfer to the host for every logged figure of this call (a GPU waits once, not per layer).
        names = list(metrics)
        figures = torch.stack([*(metrics[k].float().reshape(()) for k in names), *mean_weights.float()]).tolist()
        metrics = dict(zip(names, figures[: len(names)]))
        record = {name: 0.0 for name in self.teacher_names}
        for j, i in enumerate(self.active):
            record[self.teacher_names[i]] = figures[len(names) + j]
        for name, value in record.items():
            metrics[f"weight/{name}"] = value
        self.history.append(record)
        self.tag_history.append(self._weights_by_tag(inputs.extras.get("kv_tag"), fused_weights, valid))
        self.last_weights, self.last_valid = fused_weights.detach(), valid
        self._metrics = metrics
        return loss

    def _weights_by_tag(self, tags, fused_weights, valid) -> dict[str, dict[str, float]]:
        """Mean routing weight per teacher over the valid tokens of each tag's items in this batch."""
        if tags is None or not self.tag_names:
            return {}
        out = {}
        fused_weights = fused_weights.detach()
        m = valid.to(fused_weights.dtype)[..., None]
        for index in tags.unique().tolist():
            if index < 0:
                continue
            rows = (tags == index).to(fused_weights.device)
            mean = (fused_weights[rows] * m[rows]).sum((0, 1)) / m[rows].sum().clamp(min=1.0)
            record = {name: 0.0 for name in self.teacher_names}
            for j, i in enumerate(self.active):
                record[self.teacher_names[i]] = float(mean[j])
            out[self.tag_names[index]] = record
        return out

    def _route(self, inputs, mask_s, batch, targets, covers, teacher_ce) -> torch.Tensor:
        s = self.settings
        device = mask_s.device
        if s.fusion == "domain":
            tags = inputs.extras.get("kv_tag")
            if tags is None:
                raise ValueError("kv_fusion domain needs each item's tag in the batch (KDTrainer kv_tags)")
            names = [self.tag_names[t] if t >= 0 else None for t in tags.tolist()]
            domains = [s.teacher_domains[i].split("|") for i in self.active]
            return domain_weights(names, domains, device=device)
        if s.fusion == "fixed":
            return fixed_weights(s.weights or [1.0] * len(self.active), batch, device=device)
        if s.fusion == "mince":
            return mince_weights(torch.stack(teacher_ce, dim=-1))
        if s.fusion == "avgce":
            return avgce_weights(torch.stack(teacher_ce, dim=-1), s.ce_temperature)
        if s.fusion == "similarity":
            query = self._student_capture.keys[max(self._student_capture.layers)].detach().flatten(2).float()  # (B, L_s, H*d)
            prototypes = [teacher_prototypes(t.detach().flatten(2).float(), c, s.prototype) for t, c in zip(targets, covers)]
            return similarity_weights(query, prototypes, metric=s.similarity, tau=s.tau)
        hidden = inputs.student_hidden_states
        if hidden is None:
            raise RuntimeError("the learned router needs the student's hidden states (needs_hidden_states)")
        logits = self.router.logits(hidden[-1].detach().float(), mask_s)
        return torch.softmax(logits[..., self.active].float(), dim=-1)  # inactive teachers get no weight

    def remove_hooks(self) -> None:
        self._student_capture.remove()
        for capture in self._teacher_captures:
            if capture is not None:
                capture.remove()

