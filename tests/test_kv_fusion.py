"""training.kv.fusion: fixed weights, FuseLLM's MinCE / AvgCE, domain routing, the entropy regulariser,
similarity routing with prototypes, and the learned routers, against closed forms and hand formulas."""

from __future__ import annotations

import math

import pytest
import torch

from training.kv.fusion import (
    LearnedRouter,
    avgce_weights,
    domain_weights,
    entropy,
    entropy_penalty,
    fixed_weights,
    kmeans,
    mince_weights,
    similarity,
    similarity_weights,
    teacher_prototypes,
)

# ------------------------------------------------------------------------------------------ helpers


def h(p) -> float:
    """Shannon entropy of a list of probabilities, in nats."""
    return -sum(x * math.log(x) for x in p if x > 0)


def assert_sums_to_one(w: torch.Tensor, atol: float = 1e-6) -> None:
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1], dtype=w.dtype), rtol=0, atol=atol)
    assert (w >= 0).all()


def clusters(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """30 points around three well separated centres in 2-D, and the centres' true means."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    points = torch.cat([c + 0.3 * torch.randn(10, 2, generator=g) for c in centres])
    means = torch.stack([points[10 * i : 10 * (i + 1)].mean(0) for i in range(3)])
    return points, means


# ---------------------------------------------------------------------------------- simple weights


def test_fixed_weights_normalised_and_broadcast():
    w = fixed_weights([2, 1, 1], batch=3)
    assert w.shape == (3, 3)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.25, 0.25]] * 3), rtol=0, atol=0)
    torch.testing.assert_close(fixed_weights([0.3], batch=2), torch.ones(2, 1), rtol=0, atol=0)
    torch.testing.assert_close(fixed_weights([1, 0], batch=1), torch.tensor([[1.0, 0.0]]), rtol=0, atol=0)


@pytest.mark.parametrize("weights", [[1, -1], [0, 0], [-1, -2], [0.0]])
def test_fixed_weights_errors(weights):
    with pytest.raises(ValueError, match="fixed teacher weights must be >= 0 and not all 0"):
        fixed_weights(weights, batch=2)


def test_mince_weights_argmin_and_ties():
    ce = torch.tensor([[2.0, 1.0, 3.0], [0.5, 0.5, 0.7], [4.0, 4.0, 4.0], [9.0, 8.0, 1.0]])
    w = mince_weights(ce)
    expected = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(w, expected, rtol=0, atol=0)
    assert w.dtype == ce.dtype
    assert mince_weights(ce.double()).dtype == torch.float64


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_avgce_weights_softmax_of_minus_ce(temperature):
    ce = torch.tensor([[2.0, 1.0, 3.0], [0.0, 10.0, 0.0]], dtype=torch.float64)
    w = avgce_weights(ce, temperature)
    for b in range(2):
        e = [math.exp(-float(c) / temperature) for c in ce[b]]
        assert w[b].tolist() == pytest.approx([x / sum(e) for x in e], rel=1e-12)
    assert_sums_to_one(w)
    assert w[0].argmax() == 1  # the lowest CE weighs the most


def test_avgce_temperature_limits():
    ce = torch.tensor([[2.0, 1.0, 3.0]])
    torch.testing.assert_close(avgce_weights(ce, 1e-3), mince_weights(ce), rtol=0, atol=1e-6)
    torch.testing.assert_close(avgce_weights(ce, 1e6), torch.full((1, 3), 1 / 3), rtol=0, atol=1e-5)


def test_domain_weights():
    tags = ["med", "law", None, "other", "both"]
    domains = [["med", "both"], ["law", "med", "both"]]
    w = domain_weights(tags, domains)
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    torch.testing.assert_close(w, expected, rtol=0, atol=0)
    torch.testing.assert_close(domain_weights(["x"], [["a"], ["b"], ["c"]]), torch.full((1, 3), 1 / 3), rtol=0, atol=1e-7)


# --------------------------------------------------------------------------------------- entropy


def test_entropy_closed_forms():
    for t in (1, 2, 3, 7):
        assert entropy(torch.full((t,), 1.0 / t, dtype=torch.float64)).item() == pytest.approx(math.log(t), rel=1e-12)
        one_hot = torch.zeros(t, dtype=torch.float64)
        one_hot[t - 1] = 1.0
        assert entropy(one_hot).item() == 0.0
    p = [0.2, 0.5, 0.3]
    assert entropy(torch.tensor(p, dtype=torch.float64)).item() == pytest.approx(h(p), rel=1e-12)
    batched = entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(batched, torch.tensor([0.0, math.log(2)], dtype=torch.float64))


def test_entropy_penalty_none_and_bad_mode():
    w = torch.full((2, 3, 4), 0.25)
    out = entropy_penalty(w, None, "none")
    assert out.shape == () and out.item() == 0.0
    with pytest.raises(ValueError, match="entropy mode must be one of"):
        entropy_penalty(w, None, "max")


def test_entropy_penalty_diverse_closed_forms():
    t = 3
    uniform = torch.full((2, 4, t), 1.0 / t, dtype=torch.float64)
    assert entropy_penalty(uniform, None, "diverse").item() == pytest.approx(0.0, abs=1e-12)
    collapsed = torch.zeros(2, 4, t, dtype=torch.float64)
    collapsed[..., 0] = 1.0
    assert entropy_penalty(collapsed, None, "diverse").item() == pytest.approx(math.log(t), rel=1e-12)
    # One-hot choices that use every teacher equally: not collapsed, penalty 0.
    balanced = torch.eye(t, dtype=torch.float64)[torch.tensor([[0, 1, 2], [2, 1, 0]])]
    assert entropy_penalty(balanced, None, "diverse").item() == pytest.approx(0.0, abs=1e-12)
    # Per sequence weights (B, T).
    seq = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert entropy_penalty(seq, None, "diverse").item() == pytest.approx(math.log(2) - h([2 / 3, 1 / 3]), rel=1e-12)


def test_entropy_penalty_diverse_with_mask():
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert entropy_penalty(w, mask, "diverse").item() == pytest.approx(0.0, abs=1e-12)  # the extra [1, 0] is masked
    assert entropy_penalty(w, None, "diverse").item() == pytest.approx(math.log(2) - h([2 / 3, 1 / 3]), rel=1e-12)
    assert entropy_penalty(w, torch.ones(1, 3), "diverse").item() == pytest.approx(math.log(2) - h([2 / 3, 1 / 3]), rel=1e-12)
    # A (B, T) weight has no token axis: the (B, L) mask does not apply.
    seq = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert entropy_penalty(seq, torch.tensor([[1, 0, 0], [0, 0, 0]]), "diverse").item() == pytest.approx(0.0, abs=1e-12)


def test_entropy_penalty_specialized_closed_forms():
    t = 4
    uniform = torch.full((2, 3, t), 1.0 / t, dtype=torch.float64)
    assert entropy_penalty(uniform, None, "specialized").item() == pytest.approx(math.log(t), rel=1e-12)
    one_hot = torch.eye(t, dtype=torch.float64)[torch.tensor([[0, 1, 3], [2, 2, 2]])]
    assert entropy_penalty(one_hot, None, "specialized").item() == 0.0
    rows = [[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]
    w = torch.tensor([rows], dtype=torch.float64)  # (1, 3, 4)
    assert entropy_penalty(w, None, "specialized").item() == pytest.approx((math.log(2) + 0 + math.log(4)) / 3, rel=1e-12)
    mask = torch.tensor([[1, 0, 1]])
    assert entropy_penalty(w, mask, "specialized").item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-12)
    assert entropy_penalty(w, torch.zeros(1, 3), "specialized").item() == 0.0  # nothing valid: 0, not NaN
    seq = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    assert entropy_penalty(seq, None, "specialized").item() == pytest.approx(math.log(2) / 2, rel=1e-12)


def test_entropy_penalty_has_gradients():
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for mode in ("diverse", "specialized"):
        logits.grad = None
        entropy_penalty(torch.softmax(logits, -1), torch.ones(2, 3), mode).backward()
        assert logits.grad is not None and logits.grad.abs().max() > 0


# ------------------------------------------------------------------------------------ similarity


def test_similarity_against_hand_formulas():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    p = torch.randn(4, 5, generator=g, dtype=torch.float64)
    cos, dot, l2 = similarity(q, p, "cosine"), similarity(q, p, "dot"), similarity(q, p, "l2")
    assert cos.shape == dot.shape == l2.shape == (2, 3, 4)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                x, y = q[b, i], p[j]
                d = float((x * y).sum())
                assert dot[b, i, j].item() == pytest.approx(d, rel=1e-12)
                assert cos[b, i, j].item() == pytest.approx(d / (float(x.norm()) * float(y.norm())), rel=1e-10)
                assert l2[b, i, j].item() == pytest.approx(-math.sqrt(float(((x - y) ** 2).sum())), rel=1e-9)
    with pytest.raises(ValueError, match="similarity must be one of"):
        similarity(q, p, "manhattan")


def test_similarity_on_unbatched_queries():
    q = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    p = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-6.0, -8.0]], dtype=torch.float64)
    torch.testing.assert_close(similarity(q, p, "l2"), torch.tensor([[0.0, -5.0, -15.0]], dtype=torch.float64))
    torch.testing.assert_close(similarity(q, p, "dot"), torch.tensor([[25.0, 0.0, -50.0]], dtype=torch.float64))
    torch.testing.assert_close(similarity(q, p[[0, 2]], "cosine"), torch.tensor([[1.0, -1.0]], dtype=torch.float64))


def test_kmeans_separable_clusters():
    points, means = clusters()
    centroids = kmeans(points, 3)
    assert centroids.shape == (3, 2)
    # Each true cluster mean is one of the centroids (in some order).
    order = torch.cdist(means, centroids).argmin(-1)
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(centroids[order], means, rtol=0, atol=1e-5)
    torch.testing.assert_close(kmeans(points, 3), centroids, rtol=0, atol=0)  # deterministic
    shuffled = points[torch.randperm(30, generator=torch.Generator().manual_seed(3))]
    again = kmeans(shuffled, 3)
    torch.testing.assert_close(again[torch.cdist(means, again).argmin(-1)], means, rtol=0, atol=1e-5)
    assert not torch.equal(points, kmeans(points, 3)[:1].expand(30, 2))


def test_kmeans_clips_k():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert kmeans(points, 5).shape == (2, 2)
    torch.testing.assert_close(kmeans(points, 0), points.mean(0, keepdim=True), rtol=0, atol=0)
    torch.testing.assert_close(kmeans(points, 1), points.mean(0, keepdim=True), rtol=0, atol=0)


def test_teacher_prototypes_mean_first_kmeans():
    g = torch.Generator().manual_seed(4)
    states = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])
    mean = teacher_prototypes(states, mask, "mean")
    assert mean.shape == (1, 3)
    valid = torch.cat([states[0, 1:], states[1, :3]])  # equal counts: the mean over the valid tokens
    torch.testing.assert_close(mean[0], valid.mean(0), rtol=1e-12, atol=1e-12)
    first = teacher_prototypes(states, mask, "first")
    torch.testing.assert_close(first[0], (states[0, 1] + states[1, 0]) / 2, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="prototype must be one of"):
        teacher_prototypes(states, mask, "median")


def test_teacher_prototypes_kmeans_ignores_masked_tokens():
    points, means = clusters(5)
    states = torch.cat([points, torch.full((6, 2), 1e4)])[None]  # masked tokens far away
    mask = torch.cat([torch.ones(30), torch.zeros(6)])[None]
    protos = teacher_prototypes(states, mask, "kmeans", clusters=3)
    assert protos.shape == (3, 2)
    assert protos.abs().max() < 20
    torch.testing.assert_close(protos[torch.cdist(means, protos).argmin(-1)], means, rtol=0, atol=1e-5)
    grad_states = states.clone().requires_grad_(True)
    assert not teacher_prototypes(grad_states, mask, "kmeans", clusters=3).requires_grad  # detached


def test_similarity_weights_sum_to_one_and_pick_matching_prototype():
    protos = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])]
    g = torch.Generator().manual_seed(6)
    which = torch.randint(0, 3, (2, 5), generator=g)
    query = torch.eye(3)[which] + 0.05 * torch.randn(2, 5, 3, generator=g)
    for metric in ("cosine", "dot", "l2"):
        w = similarity_weights(query, protos, metric=metric, tau=0.01)
        assert w.shape == (2, 5, 3)
        assert_sums_to_one(w)
        assert torch.equal(w.argmax(-1), which)
        assert (w.amax(-1) > 0.99).all()
    # At a large tau the weights tend to uniform.
    torch.testing.assert_close(similarity_weights(query, protos, tau=1e6), torch.full((2, 5, 3), 1 / 3), rtol=0, atol=1e-5)


def test_similarity_weights_hand_formula_and_best_centroid():
    query = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # two centroids, the second matches
    b = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    w = similarity_weights(query, [a, b], metric="cosine", tau=0.5)
    sims = [1.0, 1 / math.sqrt(2)]
    e = [math.exp(s / 0.5) for s in sims]
    assert w[0].tolist() == pytest.approx([x / sum(e) for x in e], rel=1e-12)
    for tau in (0.0, -1.0):
        with pytest.raises(ValueError, match="tau must be > 0"):
            similarity_weights(query, [a, b], tau=tau)


# ------------------------------------------------------------------------------------ LearnedRouter


def router_inputs(seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 5, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return hidden, mask


@pytest.mark.parametrize("granularity", ["token", "sequence"])
@pytest.mark.parametrize("kind", ["mlp", "gate", "attention"])
def test_learned_router(kind, granularity):
    torch.manual_seed(0)
    router = LearnedRouter(16, 3, kind=kind, granularity=granularity, width=8)
    hidden, mask = router_inputs()
    w = router(hidden, mask)
    shape = (2, 5, 3) if granularity == "token" else (2, 3)
    assert w.shape == shape and w.dtype == torch.float32
    assert_sums_to_one(w)
    torch.testing.assert_close(w, torch.full(shape, 1 / 3), rtol=0, atol=1e-7)  # starts uniform

    # Gradients: first the zero-initialised last layer, then (after one step) everything.
    target = torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(8)), -1)
    opt = torch.optim.SGD(router.parameters(), lr=0.5)
    for step in range(2):
        opt.zero_grad()
        out = router(hidden, mask)
        loss = -(target * torch.log(out)).sum(-1)
        loss = (loss * mask).sum() / mask.sum() if granularity == "token" else loss.mean()
        loss.backward()
        if step == 0:
            first = router.teacher_keys if kind == "attention" else (router.net[-1].weight if kind == "mlp" else router.net.weight)
            assert first.grad is not None and first.grad.abs().max() > 0
        opt.step()
    for name, p in router.named_parameters():
        if kind == "attention" and granularity == "token" and name == "pool_query":
            continue  # only the sequence router pools with a learned query
        assert p.grad is not None and p.grad.abs().max() > 0, name
    after = router(hidden, mask)
    assert_sums_to_one(after)
    assert (after - 1 / 3).abs().max() > 1e-4  # it moved off uniform


@pytest.mark.parametrize("kind", ["mlp", "gate", "attention"])
def test_learned_router_sequence_ignores_padding(kind):
    torch.manual_seed(0)
    router = LearnedRouter(16, 2, kind=kind, granularity="sequence", width=8)
    with torch.no_grad():  # off the uniform start so that the check below is not trivial
        for p in router.parameters():
            p.add_(0.5 * torch.randn_like(p))
    hidden, mask = router_inputs()
    changed = hidden.clone()
    changed[1, 3:] = 100.0  # padded positions of sequence 1
    w, w2 = router(hidden, mask), router(changed, mask)
    torch.testing.assert_close(w, w2, rtol=0, atol=1e-6)
    assert (w[0] - w[1]).abs().max() > 1e-6
    # Per token, every position has its own weights.
    token = LearnedRouter(16, 2, kind=kind, granularity="token", width=8)
    with torch.no_grad():
        for p in token.parameters():
            p.add_(0.5 * torch.randn_like(p))
    out = token(hidden, mask)
    assert (out[0, 0] - out[0, 1]).abs().max() > 1e-6


def test_learned_router_errors():
    with pytest.raises(ValueError, match="router must be one of"):
        LearnedRouter(16, 2, kind="transformer")
    with pytest.raises(ValueError, match="granularity must be token or sequence"):
        LearnedRouter(16, 2, granularity="layer")
    with pytest.raises(ValueError, match="at least one teacher"):
        LearnedRouter(16, 0)


def test_learned_router_single_teacher():
    router = LearnedRouter(16, 1, kind="gate")
    hidden, mask = router_inputs()
    torch.testing.assert_close(router(hidden, mask), torch.ones(2, 5, 1), rtol=0, atol=0)
