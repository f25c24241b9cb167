"""training.losses.kv against naive float64 references (loops and plain formulas): values, gradients,
masking, the attention mapping, and the exactness of fusing one teacher."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses.kv import (
    KVLossWeights,
    attention_kl_per_token,
    cosine_distance_per_token,
    fuse_teacher_losses,
    kv_token_loss,
    map_attention,
    normalized_mse_per_token,
)

# ------------------------------------------------------------------------------ float64 references

SHAPE = (3, 7, 5, 6)  # B, L, H, d: odd on purpose


def ref_nmse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per token mean squared error over (H, d) divided by the mean over valid tokens of mean t^2."""
    B, L = mask.shape
    num, den = 0.0, 0
    for b in range(B):
        for l in range(L):
            if mask[b, l]:
                num = num + (t[b, l].double() ** 2).mean()
                den += 1
    scale = num / max(den, 1)
    rows = []
    for b in range(B):
        row = []
        for l in range(L):
            row.append(((s[b, l].double() - t[b, l].double()) ** 2).mean() / scale)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_cos(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """1 - mean over heads of <s_h, t_h> / (|s_h| |t_h|)."""
    B, L, H, _ = s.shape
    rows = []
    for b in range(B):
        row = []
        for l in range(L):
            cos = 0.0
            for h in range(H):
                x, y = s[b, l, h].double(), t[b, l, h].double()
                cos = cos + (x * y).sum() / (x.norm() * y.norm())
            row.append(1.0 - cos / H)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_kl(target: torch.Tensor, student: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """sum_j t_j (log t_j - log max(s_j, eps)) over the entries with t_j > 0."""
    B, L, N = target.shape
    rows = []
    for b in range(B):
        row = []
        for i in range(L):
            acc = torch.zeros((), dtype=torch.float64)
            for j in range(N):
                p = float(target[b, i, j])
                if p > 0:
                    acc = acc + p * (math.log(max(p, eps)) - torch.log(torch.clamp(student[b, i, j].double(), min=eps)))
            row.append(acc)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_map_attention(probs: torch.Tensor, overlap: torch.Tensor, causal: bool) -> torch.Tensor:
    """out[i, j] = sum_{a, b} A[i, a] P[a, b] C[b, j]; A = overlap rows normalised, C = overlap^T rows normalised."""
    B, Ls, Lt = overlap.shape
    ov = overlap.double()
    out = torch.zeros(B, Ls, Ls, dtype=torch.float64)
    for n in range(B):
        row_tot = [float(ov[n, i].sum()) for i in range(Ls)]
        col_tot = [float(ov[n, :, a].sum()) for a in range(Lt)]
        for i in range(Ls):
            for j in range(Ls):
                if causal and j > i:
                    continue
                acc = 0.0
                for a in range(Lt):
                    if row_tot[i] == 0 or ov[n, i, a] == 0:
                        continue
                    for b in range(Lt):
                        if col_tot[b] == 0 or ov[n, j, b] == 0:
                            continue
                        acc += (ov[n, i, a] / row_tot[i]) * float(probs[n, a, b]) * (ov[n, j, b] / col_tot[b])
                out[n, i, j] = acc
        for i in range(Ls):
            total = out[n, i].sum()
            if total > 0:
                out[n, i] /= total
    return out


def random_probs(B: int, L: int, causal: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, L, L, generator=g)
    if causal:
        scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, -1)


def random_mask(B: int, L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, L, generator=g) > 0.3
    mask[:, 0] = True
    mask[-1, -2:] = False
    return mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum()


# --------------------------------------------------------------------------------- normalized MSE


def test_normalized_mse_matches_reference():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(*SHAPE, generator=g), 3.0 * torch.randn(*SHAPE, generator=g)
    mask = random_mask(3, 7, 1)
    out = normalized_mse_per_token(s, t, mask)
    assert out.shape == (3, 7) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_nmse(s, t, mask), rtol=1e-5, atol=1e-6)


def test_normalized_mse_scale_ignores_masked_tokens():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(*SHAPE, generator=g), torch.randn(*SHAPE, generator=g)
    mask = random_mask(3, 7, 2)
    t2 = t.clone()
    t2[~mask] = 1e3  # huge targets where nothing counts
    out, out2 = normalized_mse_per_token(s, t, mask), normalized_mse_per_token(s, t2, mask)
    torch.testing.assert_close(out[mask], out2[mask], rtol=1e-6, atol=0)


def test_normalized_mse_closed_forms():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(*SHAPE, generator=g, dtype=torch.float64)
    mask = random_mask(3, 7, 3)
    # A zero student has a masked mean of exactly 1, however large or small the target.
    for c in (1e-3, 1.0, 1e3):
        loss = normalized_mse_per_token(torch.zeros_like(t), c * t, mask)
        assert masked_mean(loss, mask).item() == pytest.approx(1.0, rel=1e-12)
    # Invariant to a common scale of student and target.
    s = torch.randn(*SHAPE, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        normalized_mse_per_token(5.0 * s, 5.0 * t, mask), normalized_mse_per_token(s, t, mask), rtol=1e-12, atol=0
    )
    assert normalized_mse_per_token(t, t, mask).abs().max() == 0


def test_teacher_covering_no_token_does_not_make_the_fused_loss_nan():
    g = torch.Generator().manual_seed(5)
    s, t = 10.0 * torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    full, empty = torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool)
    covered, _ = kv_token_loss(s, s, t, t, full, KVLossWeights())
    uncovered, _ = kv_token_loss(s, s, t, t, empty, KVLossWeights())  # a teacher whose tokens meet none of the student's
    fused = fuse_teacher_losses(torch.stack([covered, uncovered]), torch.tensor([1.0, 0.0]).expand(2, 3, 2), full)
    assert torch.isfinite(fused)


# ------------------------------------------------------------------------------- cosine distance


def test_cosine_distance_matches_reference():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(*SHAPE, generator=g), torch.randn(*SHAPE, generator=g)
    out = cosine_distance_per_token(s, t)
    assert out.shape == (3, 7)
    torch.testing.assert_close(out.double(), ref_cos(s, t), rtol=1e-5, atol=1e-6)


def test_cosine_distance_closed_forms():
    g = torch.Generator().manual_seed(4)
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(cosine_distance_per_token(2.5 * t, t), torch.zeros(2, 3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(cosine_distance_per_token(-t, t), torch.full((2, 3), 2.0, dtype=torch.float64), rtol=0, atol=1e-12)
    # Half of the heads aligned, half opposite: 1 - (1 - 1) / 2 = 1.
    s = torch.cat([t[:, :, :2], -t[:, :, 2:]], dim=2)
    torch.testing.assert_close(cosine_distance_per_token(s, t), torch.ones(2, 3, dtype=torch.float64), rtol=0, atol=1e-12)
    x = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64)
    y = torch.tensor([[[[0.0, 3.0]]]], dtype=torch.float64)
    assert cosine_distance_per_token(x, y).item() == pytest.approx(1.0, abs=1e-12)


# -------------------------------------------------------------------------------------- attention KL


def test_attention_kl_matches_reference():
    target = random_probs(2, 6, causal=True, seed=5)
    student = random_probs(2, 6, causal=True, seed=6)
    out = attention_kl_per_token(target, student)
    assert out.shape == (2, 6)
    torch.testing.assert_close(out.double(), ref_kl(target, student), rtol=1e-5, atol=1e-6)
    assert (out >= -1e-6).all()


def test_attention_kl_closed_forms():
    p = random_probs(2, 5, causal=False, seed=7).double()
    torch.testing.assert_close(attention_kl_per_token(p, p), torch.zeros(2, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    # One-hot target: KL = -log s at the target's position.
    target = torch.zeros(1, 1, 3, dtype=torch.float64)
    target[0, 0, 1] = 1.0
    student = torch.tensor([[[0.2, 0.5, 0.3]]], dtype=torch.float64)
    assert attention_kl_per_token(target, student).item() == pytest.approx(-math.log(0.5), rel=1e-12)
    # A zero student where the target has mass is clamped at eps, not inf.
    student0 = torch.tensor([[[0.5, 0.0, 0.5]]], dtype=torch.float64)
    assert attention_kl_per_token(target, student0).item() == pytest.approx(-math.log(1e-12), rel=1e-9)
    # Zero rows of the target (masked tokens) give 0; zeros in the target ignore the student there.
    zero = torch.zeros(1, 1, 3, dtype=torch.float64)
    assert attention_kl_per_token(zero, student).item() == 0.0
    uni_t = torch.tensor([[[0.5, 0.5, 0.0]]], dtype=torch.float64)
    assert attention_kl_per_token(uni_t, torch.tensor([[[0.5, 0.5, 0.0]]], dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-15)


def test_attention_kl_gradient_matches_reference():
    target = random_probs(2, 5, causal=True, seed=8)
    logits = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(9), requires_grad=True)
    student = torch.softmax(logits, -1)
    attention_kl_per_token(target, student).sum().backward()
    ref_logits = logits.detach().double().requires_grad_(True)
    ref_kl(target, torch.softmax(ref_logits, -1)).sum().backward()
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------- map_attention


def test_map_attention_identity_overlap_returns_teacher_attention():
    probs = random_probs(2, 6, causal=True, seed=10)
    eye = torch.eye(6).expand(2, 6, 6)
    torch.testing.assert_close(map_attention(probs, eye, causal=True), probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(map_attention(probs, eye, causal=False), probs, rtol=0, atol=1e-6)
    # Overlaps in characters (not 0/1) on the diagonal give the same.
    torch.testing.assert_close(map_attention(probs, 3.0 * eye, causal=True), probs, rtol=0, atol=1e-6)


def test_map_attention_bidirectional_teacher_is_made_causal():
    probs = random_probs(1, 5, causal=False, seed=11)  # an encoder's attention
    eye = torch.eye(5)[None]
    out = map_attention(probs, eye, causal=True)
    expected = probs.tril() / probs.tril().sum(-1, keepdim=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(map_attention(probs, eye, causal=False), probs, rtol=0, atol=1e-6)


def test_map_attention_hand_computed_split_token():
    # One teacher token covering two student tokens: both student tokens take its row; on the key side
    # its mass is shared between them, then the later one is dropped for the first query (causal).
    probs = torch.ones(1, 1, 1)
    overlap = torch.tensor([[[2.0], [3.0]]])
    out = map_attention(probs, overlap, causal=True)
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.0], [0.4, 0.6]]]), rtol=0, atol=1e-6)
    out = map_attention(probs, overlap, causal=False)
    torch.testing.assert_close(out, torch.tensor([[[0.4, 0.6], [0.4, 0.6]]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_map_attention_matches_reference(causal):
    g = torch.Generator().manual_seed(12)
    B, Ls, Lt = 2, 6, 5
    overlap = torch.randint(0, 3, (B, Ls, Lt), generator=g).float() * (torch.rand(B, Ls, Lt, generator=g) > 0.5)
    overlap[:, 0] = 0  # a student template token
    overlap[0, :, 2] = 0  # a teacher template token
    probs = random_probs(B, Lt, causal=True, seed=13)
    out = map_attention(probs, overlap, causal=causal)
    assert out.shape == (B, Ls, Ls)
    torch.testing.assert_close(out.double(), ref_map_attention(probs, overlap, causal), rtol=1e-5, atol=1e-6)
    sums = out.sum(-1)
    has = sums > 0
    torch.testing.assert_close(sums[has], torch.ones(int(has.sum())), rtol=0, atol=1e-6)
    assert (out[~has] == 0).all()
    assert (out[:, 0] == 0).all()  # no mass for a token without alignment
    assert (out[:, :, 0] == 0).all()  # nor on it
    if causal:
        assert torch.triu(out, diagonal=1).abs().max() == 0


def test_map_attention_real_shapes_from_alignment():
    from training.kv.align import overlap_matrix

    student = [None, (0, 3), (3, 5), (5, 9), None]
    teacher = [None, (0, 5), (5, 7), (7, 9), None]
    overlap = torch.from_numpy(overlap_matrix(student, teacher))[None]
    probs = random_probs(1, 5, causal=True, seed=14)
    out = map_attention(probs, overlap, causal=True)
    torch.testing.assert_close(out.double(), ref_map_attention(probs, overlap, True), rtol=1e-5, atol=1e-6)
    assert out[0, 0].sum() == 0 and out[0, 4].sum() == 0
    torch.testing.assert_close(out[0, 1:4].sum(-1), torch.ones(3), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------- weights


def test_kv_loss_weights_range_checks():
    assert KVLossWeights() == KVLossWeights(1.0, 1.0, 0.0, 0.0)
    assert not KVLossWeights().off
    assert KVLossWeights(0, 0, 0, 0).off
    assert not KVLossWeights(0, 0, 0, 0.5).off
    for name in ("lambda_k", "lambda_v", "beta", "gamma"):
        with pytest.raises(ValueError, match=f"{name} must be >= 0, got -0.5"):
            KVLossWeights(**{name: -0.5})
        with pytest.raises(ValueError, match=f"{name} must be >= 0, got nan"):
            KVLossWeights(**{name: float("nan")})


# --------------------------------------------------------------------------------- kv_token_loss


def ref_token_loss(sk, sv, tk, tv, mask, w: KVLossWeights, att_t=None, att_s=None) -> torch.Tensor:
    """The per-token loss written out from the reference terms, in float64."""
    total = torch.zeros(mask.shape, dtype=torch.float64)
    if w.lambda_k:
        total = total + w.lambda_k * ref_nmse(sk, tk, mask)
    if w.lambda_v:
        total = total + w.lambda_v * ref_nmse(sv, tv, mask)
    if w.beta:
        total = total + w.beta * 0.5 * (ref_cos(sk, tk) + ref_cos(sv, tv))
    if w.gamma:
        total = total + w.gamma * ref_kl(att_t, att_s)
    return total


def loss_inputs(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    B, L, _, _ = SHAPE
    sk, sv = torch.randn(*SHAPE, generator=g, dtype=dtype), torch.randn(*SHAPE, generator=g, dtype=dtype)
    tk, tv = 2.0 * torch.randn(*SHAPE, generator=g, dtype=dtype), 0.5 * torch.randn(*SHAPE, generator=g, dtype=dtype)
    att_logits = torch.randn(B, L, L, generator=g, dtype=dtype)
    att_t = random_probs(B, L, causal=True, seed=seed + 100).to(dtype)
    mask = random_mask(B, L, seed + 200)
    return sk, sv, tk, tv, att_logits, att_t, mask


CAUSAL = torch.ones(7, 7, dtype=torch.bool).tril()


@pytest.mark.parametrize(
    "weights",
    [
        KVLossWeights(1.0, 1.0, 0.0, 0.0),
        KVLossWeights(0.7, 0.0, 0.0, 0.0),
        KVLossWeights(0.0, 1.3, 0.0, 0.0),
        KVLossWeights(0.0, 0.0, 1.0, 0.0),
        KVLossWeights(0.0, 0.0, 0.0, 1.0),
        KVLossWeights(1.0, 0.5, 0.25, 2.0),
    ],
    ids=["kv", "k", "v", "cos", "attn", "all"],
)
def test_kv_token_loss_value_and_gradient(weights):
    sk, sv, tk, tv, att_logits, att_t, mask = loss_inputs(15)
    sk.requires_grad_(True), sv.requires_grad_(True), att_logits.requires_grad_(True)
    att_s = torch.softmax(att_logits.masked_fill(~CAUSAL, float("-inf")), -1)
    total, parts = kv_token_loss(sk, sv, tk, tv, mask, weights, att_t, att_s)
    assert total.shape == (3, 7) and total.dtype == torch.float32
    masked_mean(total, mask).backward()

    rk, rv = sk.detach().double().requires_grad_(True), sv.detach().double().requires_grad_(True)
    r_logits = att_logits.detach().double().requires_grad_(True)
    r_att = torch.softmax(r_logits.masked_fill(~CAUSAL, float("-inf")), -1)
    ref = ref_token_loss(rk, rv, tk.double(), tv.double(), mask, weights, att_t.double(), r_att)
    masked_mean(ref, mask).backward()

    torch.testing.assert_close(total.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    used = {"k": bool(weights.lambda_k or weights.beta), "v": bool(weights.lambda_v or weights.beta), "a": bool(weights.gamma)}
    for key, x, r in (("k", sk, rk), ("v", sv, rv), ("a", att_logits, r_logits)):
        if not used[key]:  # a term at weight 0 does not touch its inputs
            assert x.grad is None and r.grad is None
            continue
        torch.testing.assert_close(x.grad.double(), r.grad, rtol=1e-4, atol=1e-7)
        assert x.grad.abs().max() > 0
        assert x.grad[~mask].abs().max() == 0  # nothing from the masked tokens reaches the gradient
    # Terms at weight 0 are not computed; parts are each term's masked mean, detached.
    expected_parts = {
        "mse_k": weights.lambda_k, "mse_v": weights.lambda_v, "cos": weights.beta, "attn_kl": weights.gamma,
    }
    assert set(parts) == {k for k, w in expected_parts.items() if w}
    refs = {
        "mse_k": ref_nmse(sk.detach(), tk, mask),
        "mse_v": ref_nmse(sv.detach(), tv, mask),
        "cos": 0.5 * (ref_cos(sk.detach(), tk) + ref_cos(sv.detach(), tv)),
        "attn_kl": ref_kl(att_t, att_s.detach()),
    }
    for name, value in parts.items():
        assert not value.requires_grad
        assert value.item() == pytest.approx(masked_mean(refs[name], mask).item(), rel=1e-5, abs=1e-7)


def test_kv_token_loss_float64_inputs_keep_dtype():
    sk, sv, tk, tv, _, _, mask = loss_inputs(16, dtype=torch.float64)
    total, _ = kv_token_loss(sk, sv, tk, tv, mask, KVLossWeights(1.0, 1.0, 0.5, 0.0))
    assert total.dtype == torch.float64
    torch.testing.assert_close(total, ref_token_loss(sk, sv, tk, tv, mask, KVLossWeights(1.0, 1.0, 0.5, 0.0)), rtol=1e-10, atol=1e-12)


def test_kv_token_loss_off_and_missing_attention():
    sk, sv, tk, tv, _, _, mask = loss_inputs(17)
    total, parts = kv_token_loss(sk, sv, tk, tv, mask, KVLossWeights(0, 0, 0, 0))
    assert parts == {} and total.shape == (3, 7) and total.abs().max() == 0
    with pytest.raises(ValueError, match="gamma > 0 needs"):
        kv_token_loss(sk, sv, tk, tv, mask, KVLossWeights(gamma=1.0))
    with pytest.raises(ValueError, match="gamma > 0 needs"):
        kv_token_loss(sk, sv, tk, tv, mask, KVLossWeights(gamma=1.0), attention_target=torch.ones(3, 7, 7) / 7)


def test_kv_token_loss_identical_is_zero():
    _, _, tk, tv, _, att_t, mask = loss_inputs(18)
    total, parts = kv_token_loss(tk, tv, tk, tv, mask, KVLossWeights(1.0, 1.0, 1.0, 1.0), att_t, att_t)
    torch.testing.assert_close(total, torch.zeros(3, 7), rtol=0, atol=1e-5)
    assert all(abs(v.item()) < 1e-5 for v in parts.values())


# ----------------------------------------------------------------------------- fuse_teacher_losses


def ref_fuse(losses: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    T, B, L = losses.shape
    num, den = torch.zeros((), dtype=torch.float64), 0
    for b in range(B):
        for l in range(L):
            if not mask[b, l]:
                continue
            for i in range(T):
                w = weights[b, l, i] if weights.dim() == 3 else weights[b, i]
                num = num + w.double() * losses[i, b, l].double()
            den += 1
    return num / den


def fuse_inputs(T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(T, 3, 7, generator=g) * 4
    mask = random_mask(3, 7, seed + 1)
    return losses, mask


def test_fuse_per_token_matches_reference():
    losses, mask = fuse_inputs(3, 20)
    logits = torch.randn(3, 7, 3, generator=torch.Generator().manual_seed(21), requires_grad=True)
    losses.requires_grad_(True)
    weights = torch.softmax(logits, -1)
    out = fuse_teacher_losses(losses, weights, mask)
    assert out.shape == ()
    out.backward()
    r_losses = losses.detach().double().requires_grad_(True)
    r_logits = logits.detach().double().requires_grad_(True)
    ref = ref_fuse(r_losses, torch.softmax(r_logits, -1), mask)
    ref.backward()
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(losses.grad.double(), r_losses.grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(logits.grad.double(), r_logits.grad, rtol=1e-4, atol=1e-7)
    assert logits.grad.abs().max() > 0  # the router is trained by the same loss
    assert logits.grad[~mask].abs().max() == 0


def test_fuse_per_sequence_matches_reference_and_broadcasts():
    losses, mask = fuse_inputs(2, 22)
    weights = torch.softmax(torch.randn(3, 2, generator=torch.Generator().manual_seed(23)), -1).requires_grad_(True)
    out = fuse_teacher_losses(losses, weights, mask)
    out.backward()
    r_w = weights.detach().double().requires_grad_(True)
    ref = ref_fuse(losses, r_w, mask)
    ref.backward()
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(weights.grad.double(), r_w.grad, rtol=1e-5, atol=1e-8)
    per_token = weights.detach()[:, None, :].expand(3, 7, 2)
    assert fuse_teacher_losses(losses, per_token, mask).item() == pytest.approx(out.item(), rel=1e-7)


def test_fuse_one_teacher_is_exactly_its_loss():
    losses, mask = fuse_inputs(1, 24)
    for weights in (torch.ones(3, 7, 1), torch.ones(3, 1)):
        a = losses.clone().requires_grad_(True)
        fused = fuse_teacher_losses(a, weights, mask)
        fused.backward()
        b = losses[0].clone().requires_grad_(True)
        m = mask.to(b.dtype)
        expected = (b * m).sum() / m.sum()
        expected.backward()
        assert torch.equal(fused, expected)
        assert torch.equal(a.grad[0], b.grad)


def test_fuse_weights_one_zero_is_exactly_teacher_zero():
    losses, mask = fuse_inputs(2, 25)
    for weights in (torch.tensor([1.0, 0.0]).expand(3, 7, 2), torch.tensor([1.0, 0.0]).expand(3, 2)):
        a = losses.clone().requires_grad_(True)
        fused = fuse_teacher_losses(a, weights, mask)
        fused.backward()
        b = losses[0].clone().requires_grad_(True)
        m = mask.to(b.dtype)
        expected = (b * m).sum() / m.sum()
        expected.backward()
        assert torch.equal(fused, expected)
        assert torch.equal(a.grad[0], b.grad)
        assert torch.equal(a.grad[1], torch.zeros_like(a.grad[1]))


def test_fuse_empty_mask_is_zero_not_nan():
    losses, _ = fuse_inputs(2, 26)
    out = fuse_teacher_losses(losses, torch.full((3, 2), 0.5), torch.zeros(3, 7, dtype=torch.bool))
    assert out.item() == 0.0
