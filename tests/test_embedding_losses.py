"""training.embedding.losses against naive float64 references (explicit loops and elementary ops, never
the library's helpers): values and gradients in float64 and float32, odd shapes, the N=1 edge, closed
forms, and the sentence-transformers loss modules on tiny fake models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.embedding.losses import (
    PAIR_LOSSES,
    EmbeddingLayerMSELoss,
    PairDistillLoss,
    SentenceMSELoss,
    cosine_matrix,
    embedding_mse,
    masked_mean,
    pair_loss,
)

torch.set_num_threads(1)  # tiny tensors; leave the machine's cores to others

N, D = 7, 13  # odd on purpose
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}
DTYPES = [torch.float64, torch.float32]

# ------------------------------------------------------------------------------ float64 references


def ref_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    total = u[0] * v[0]
    for k in range(1, u.shape[0]):
        total = total + u[k] * v[k]
    return total


def ref_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_j) = a_i·b_j / (|a_i| |b_j|), entry by entry."""
    rows = []
    for i in range(a.shape[0]):
        row = []
        for j in range(b.shape[0]):
            row.append(ref_dot(a[i], b[j]) / (torch.sqrt(ref_dot(a[i], a[i])) * torch.sqrt(ref_dot(b[j], b[j]))))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def ref_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of (x - y)^2, summed by hand."""
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    total = (flat_x[0] - flat_y[0]) ** 2
    for k in range(1, flat_x.shape[0]):
        total = total + (flat_x[k] - flat_y[k]) ** 2
    return total / flat_x.shape[0]


def ref_masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the masked token vectors over max(#masked, 1)."""
    B, T, _ = tokens.shape
    out = []
    for b in range(B):
        acc = torch.zeros_like(tokens[b, 0])
        count = 0
        for t in range(T):
            if int(mask[b, t]):
                acc = acc + tokens[b, t]
                count += 1
        out.append(acc / max(count, 1))
    return torch.stack(out)


def ref_cross_entropy_diag(logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows i of -log softmax(logits_i)[i], the log-sum-exp written out (max-shifted)."""
    n = logits.shape[0]
    total = 0.0
    for i in range(n):
        m = max(float(logits[i, j].detach()) for j in range(n))  # a constant shift
        s = sum(torch.exp(logits[i, j] - m) for j in range(n))
        total = total + (torch.log(s) + m - logits[i, i])
    return total / n


def ref_pair(s, g, t, kind, scale=20.0, ce_weight=0.01):
    anchor = ref_mse(s, t) + ref_mse(g, t)
    if kind == "mse":
        return anchor
    sim = ref_cosine(s, g)
    if kind == "mcl":
        return ref_mse(sim, ref_cosine(t, t)) + anchor
    if kind == "bool":
        eye = torch.tensor([[1.0 if i == j else 0.0 for j in range(sim.shape[0])] for i in range(sim.shape[0])], dtype=sim.dtype)
        return ref_mse(sim, eye) + anchor
    if kind == "ce":
        return ce_weight * ref_cross_entropy_diag(scale * sim) + anchor
    raise AssertionError(kind)


# ------------------------------------------------------------------------------ comparison helper


def randn(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def check(lib_fn, ref_fn, bases: list[torch.Tensor], dtype: torch.dtype, grad: bool = True) -> None:
    """lib_fn on ``dtype`` leaves vs ref_fn on float64 copies of the same values: value and every gradient."""
    xs = [b.to(dtype).requires_grad_(grad) for b in bases]
    refs = [x.detach().double().requires_grad_(grad) for x in xs]
    out, ref = lib_fn(*xs), ref_fn(*refs)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref.detach(), **TOL[dtype])
    if grad:
        out.sum().backward()
        ref.sum().backward()
        for x, r in zip(xs, refs):
            assert x.grad is not None and x.grad.dtype == dtype
            torch.testing.assert_close(x.grad.double(), r.grad, **TOL[dtype])


# ------------------------------------------------------------------------------ cosine_matrix


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(N, N), (N, 4), (1, 1)])
def test_cosine_matrix_matches_reference(dtype, n, m):
    """Cosines (and their gradients w.r.t. both sides) equal the entry-by-entry formula, square or not."""
    a, b = randn(n, D, seed=1), randn(m, D, seed=2)
    check(cosine_matrix, ref_cosine, [a, b], dtype)
    assert cosine_matrix(a, b).shape == (n, m)


def test_cosine_matrix_scale_invariant_and_self_diagonal_one():
    """Cosine ignores each row's length, and a matrix against itself has ones on its diagonal."""
    a = randn(N, D, seed=3)
    scales = torch.arange(1, N + 1, dtype=torch.float64).unsqueeze(1)
    torch.testing.assert_close(cosine_matrix(a * scales, a), cosine_matrix(a, a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(cosine_matrix(a, a)), torch.ones(N, dtype=torch.float64), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ masked_mean


MASK = torch.tensor(
    [
        [1, 1, 1, 0, 0],  # right padding
        [1, 1, 1, 1, 1],  # full
        [1, 0, 0, 0, 0],  # a single token
        [0, 0, 0, 0, 0],  # nothing: clamp gives 0 / 1 = 0, not NaN
    ]
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_dtype", [torch.long, torch.bool, torch.float32])
def test_masked_mean_matches_reference(dtype, mask_dtype):
    """Padding positions are ignored in value and gradient; an all-zero mask row gives zeros (clamp)."""
    tokens = randn(4, 5, 3, seed=4)
    mask = MASK.to(mask_dtype)
    check(lambda x: masked_mean(x, mask), lambda x: ref_masked_mean(x, MASK), [tokens], dtype)


def test_masked_mean_all_zero_row_and_padding_gradient():
    """The empty row is exactly 0 with zero gradient; padded tokens get no gradient; a kept token gets 1/count."""
    tokens = randn(4, 5, 3, seed=5).requires_grad_(True)
    out = masked_mean(tokens, MASK)
    assert torch.isfinite(out).all()
    assert torch.equal(out[3], torch.zeros(3, dtype=torch.float64))
    out.sum().backward()
    m = MASK.double()
    expected = (m / m.sum(1, keepdim=True).clamp(min=1)).unsqueeze(-1).expand(4, 5, 3)
    torch.testing.assert_close(tokens.grad, expected, rtol=0, atol=1e-15)
    assert torch.equal(tokens.grad[0, 3:], torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(tokens.grad[3], torch.zeros(5, 3, dtype=torch.float64))
    # the single-token row is that token itself
    torch.testing.assert_close(out[2], tokens[2, 0].detach(), rtol=0, atol=0)


# ------------------------------------------------------------------------------ embedding_mse


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(N, D), (1, D), (3, 5, 4)])
def test_embedding_mse_matches_reference(dtype, shape):
    """Mean of squared differences over all elements; gradients w.r.t. student and teacher."""
    s, t = randn(*shape, seed=6), randn(*shape, seed=7)
    check(embedding_mse, ref_mse, [s, t], dtype)


def test_embedding_mse_closed_form_gradient():
    """d/ds mean((s - t)^2) = 2 (s - t) / numel, and the loss is 0 at s == t."""
    s, t = randn(N, D, seed=8).requires_grad_(True), randn(N, D, seed=9)
    embedding_mse(s, t).backward()
    torch.testing.assert_close(s.grad, 2 * (s.detach() - t) / (N * D), rtol=1e-12, atol=1e-15)
    assert embedding_mse(t, t).item() == 0.0


# ------------------------------------------------------------------------------ pair_loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", PAIR_LOSSES)
@pytest.mark.parametrize("n", [N, 1])
def test_pair_loss_matches_reference(dtype, kind, n):
    """Each stage-4 loss equals its hand-written formula, value and gradients w.r.t. source, target, teacher."""
    s, g, t = randn(n, D, seed=10), randn(n, D, seed=11), randn(n, D, seed=12)
    check(lambda a, b, c: pair_loss(a, b, c, kind), lambda a, b, c: ref_pair(a, b, c, kind), [s, g, t], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale,ce_weight", [(5.0, 1.0), (1.0, 0.5), (30.0, 0.0)])
def test_pair_loss_ce_non_default_scale_and_weight(dtype, scale, ce_weight):
    """scale multiplies the cosines before the softmax, ce_weight the cross-entropy term (0 leaves the anchor)."""
    s, g, t = randn(N, D, seed=13), randn(N, D, seed=14), randn(N, D, seed=15)
    check(
        lambda a, b, c: pair_loss(a, b, c, "ce", scale=scale, ce_weight=ce_weight),
        lambda a, b, c: ref_pair(a, b, c, "ce", scale=scale, ce_weight=ce_weight),
        [s, g, t],
        dtype,
    )


def test_pair_loss_mse_is_the_anchor_of_every_kind():
    """'mse' is exactly MSE(s,t) + MSE(g,t), and every other kind is that anchor plus a term of cos(s, g)."""
    s, g, t = randn(N, D, seed=16), randn(N, D, seed=17), randn(N, D, seed=18)
    anchor = ref_mse(s, t) + ref_mse(g, t)
    torch.testing.assert_close(pair_loss(s, g, t, "mse"), anchor, rtol=1e-12, atol=1e-12)
    sim = ref_cosine(s, g)
    torch.testing.assert_close(pair_loss(s, g, t, "mcl") - pair_loss(s, g, t, "mse"), ref_mse(sim, ref_cosine(t, t)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pair_loss(s, g, t, "bool") - pair_loss(s, g, t, "mse"), ref_mse(sim, torch.eye(N, dtype=torch.float64)), rtol=1e-10, atol=1e-12)


def test_pair_loss_ce_with_one_pair_is_the_anchor():
    """With N=1 the softmax has a single entry, so the cross-entropy is 0 for any scale and weight."""
    s, g, t = randn(1, D, seed=19), randn(1, D, seed=20), randn(1, D, seed=21)
    torch.testing.assert_close(pair_loss(s, g, t, "ce", scale=7.0, ce_weight=3.0), pair_loss(s, g, t, "mse"), rtol=0, atol=1e-14)


def test_pair_loss_ce_defaults_are_scale_20_weight_001():
    """The seed's defaults (scale 20, weight 0.01) are what a plain 'ce' call uses."""
    s, g, t = randn(N, D, seed=22), randn(N, D, seed=23), randn(N, D, seed=24)
    torch.testing.assert_close(pair_loss(s, g, t, "ce"), ref_pair(s, g, t, "ce", scale=20.0, ce_weight=0.01), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(pair_loss(s, g, t, "ce"), pair_loss(s, g, t, "ce", scale=5.0))


def test_pair_loss_unknown_kind_raises():
    """A misspelt kind fails loudly, naming the allowed ones, instead of silently training something else."""
    x = randn(2, 3, seed=25)
    with pytest.raises(ValueError, match="mcl, mse, ce, bool.*'infonce'"):
        pair_loss(x, x, x, "infonce")


def unit_rows(n: int, seed: int) -> torch.Tensor:
    x = randn(n, D, seed=seed)
    return x / torch.sqrt((x * x).sum(1, keepdim=True))


@pytest.mark.parametrize("n", [N, 1])
def test_pair_loss_closed_form_zero_when_all_equal_unit(n):
    """source == target == teacher (unit rows): cos(s, g) = cos(t, t) and the anchor is 0, so mcl = mse = 0."""
    u = unit_rows(n, seed=26)
    for kind in ("mcl", "mse"):
        assert abs(pair_loss(u, u.clone(), u.clone(), kind).item()) < 1e-14, kind
    # bool is not 0 here: the random rows are not orthogonal (unless n == 1)
    bool_value = pair_loss(u, u, u, "bool").item()
    if n == 1:
        assert abs(bool_value) < 1e-14
    else:
        assert bool_value > 1e-3


def test_pair_loss_closed_form_bool_zero_for_orthonormal_rows():
    """Orthonormal rows equal across s, g, t: cos(s, g) = I and the anchor is 0, so bool = 0 (and mcl too)."""
    q, _ = torch.linalg.qr(randn(D, D, seed=27))
    rows = q.T[:N].contiguous()  # N orthonormal rows of length D
    torch.testing.assert_close(rows @ rows.T, torch.eye(N, dtype=torch.float64), rtol=0, atol=1e-12)
    assert abs(pair_loss(rows, rows, rows, "bool").item()) < 1e-14
    assert abs(pair_loss(rows, rows, rows, "mcl").item()) < 1e-14
    # ce is not 0: the softmax of 20·I still gives the off-diagonal entries some mass
    expected_ce = 0.01 * (math.log(math.exp(20.0) + (N - 1)) - 20.0)
    assert pair_loss(rows, rows, rows, "ce").item() == pytest.approx(expected_ce, rel=1e-9)


# ------------------------------------------------------------------------------ loss modules


class FakeSentenceModel(nn.Module):
    """A stand-in for a SentenceTransformer: sentence_embedding = x @ W."""

    def __init__(self, d_in: int, d_out: int, dtype=torch.float64) -> None:
        super().__init__()
        self.W = nn.Parameter(randn(d_in, d_out, seed=30).to(dtype))

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"sentence_embedding": features["x"] @ self.W}


@pytest.mark.parametrize("n_columns", [1, 2])
def test_sentence_mse_loss_module_equals_function_and_reaches_W(n_columns):
    """Stage 3 module: mean over columns of MSE(x_c W, labels); the gradient reaches the model's weight."""
    model = FakeSentenceModel(5, D)
    xs = [randn(N, 5, seed=31 + c) for c in range(n_columns)]
    labels = randn(N, D, seed=40).float()  # labels come in float32 and are cast to the embedding's dtype
    loss = SentenceMSELoss(model)([{"x": x} for x in xs], labels)
    W = model.W.detach()
    expected = sum(ref_mse(x @ W, labels.double()) for x in xs) / n_columns
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    W_ref = W.clone().requires_grad_(True)
    (sum(ref_mse(x @ W_ref, labels.double()) for x in xs) / n_columns).backward()
    assert model.W.grad is not None and model.W.grad.abs().sum() > 0
    torch.testing.assert_close(model.W.grad, W_ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", PAIR_LOSSES)
def test_pair_distill_loss_module_equals_function_and_reaches_W(kind):
    """Stage 4 module: pair_loss on the two columns' embeddings with the teacher's as labels; W gets the gradient."""
    model = FakeSentenceModel(5, D)
    xs, xg, t = randn(N, 5, seed=41), randn(N, 5, seed=42), randn(N, D, seed=43)
    module = PairDistillLoss(model, kind=kind, scale=10.0, ce_weight=0.5)
    assert module.get_config_dict() == {"kind": kind, "scale": 10.0, "ce_weight": 0.5}
    loss = module([{"x": xs}, {"x": xg}], t.float())
    W = model.W.detach()
    expected = pair_loss(xs @ W, xg @ W, t.float().double(), kind, 10.0, 0.5)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, ref_pair(xs @ W, xg @ W, t.float().double(), kind, 10.0, 0.5), rtol=1e-10, atol=1e-12)
    loss.backward()
    W_ref = W.clone().requires_grad_(True)
    ref_pair(xs @ W_ref, xg @ W_ref, t.float().double(), kind, 10.0, 0.5).backward()
    assert model.W.grad is not None and model.W.grad.abs().sum() > 0
    torch.testing.assert_close(model.W.grad, W_ref.grad, rtol=1e-9, atol=1e-12)


def test_pair_distill_loss_module_rejects_unknown_kind():
    """The module checks its kind at construction, before any training step."""
    with pytest.raises(ValueError, match="pair loss must be one of"):
        PairDistillLoss(FakeSentenceModel(2, 2), kind="triplet")


class FakeEmbeddings(nn.Module):
    """BERT-like embedding layer: word + (optional) token-type embeddings."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.word_embeddings = nn.Embedding(vocab, hidden, dtype=torch.float64)
        self.token_type_embeddings = nn.Embedding(2, hidden, dtype=torch.float64)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.word_embeddings(input_ids)
        if token_type_ids is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        return x


class FakeAutoModel(nn.Module):
    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embeddings = FakeEmbeddings(vocab, hidden)


class FakeTransformerModule(nn.Module):
    """model[0] of a SentenceTransformer: holds ``auto_model``."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.auto_model = FakeAutoModel(vocab, hidden)


@pytest.mark.parametrize("with_token_types", [True, False])
def test_embedding_layer_mse_loss_module(with_token_types):
    """Stage 2 module: masked mean of the embedding layer's output vs labels; padding ignored, gradient to the table."""
    V, H = 11, 6
    model = nn.ModuleList([FakeTransformerModule(V, H)])
    emb = model[0].auto_model.embeddings
    input_ids = torch.tensor([[3, 5, 7, 0, 0], [1, 2, 3, 4, 9], [8, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    token_types = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    labels = randn(3, H, seed=50).float()
    features = {"input_ids": input_ids, "attention_mask": mask}
    if with_token_types:
        features["token_type_ids"] = token_types
    loss = EmbeddingLayerMSELoss(model)([features], labels)

    # reference: look the rows up by hand, average over the mask, MSE to the (float64-cast) labels
    word, types = emb.word_embeddings.weight.detach(), emb.token_type_embeddings.weight.detach()
    tokens = torch.stack([torch.stack([word[int(i)] + (types[int(tt)] if with_token_types else 0.0) for i, tt in zip(r, rt)]) for r, rt in zip(input_ids, token_types)])
    expected = ref_mse(ref_masked_mean(tokens, mask), labels.double())
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)

    loss.backward()
    g = emb.word_embeddings.weight.grad
    assert g is not None
    # token id 0 only appears at padded positions: no gradient; ids 4 and 9 only in the full row: some
    assert torch.equal(g[0], torch.zeros(H, dtype=torch.float64))
    assert g[4].abs().sum() > 0 and g[9].abs().sum() > 0
    # ids never used get nothing
    assert torch.equal(g[6], torch.zeros(H, dtype=torch.float64)) and torch.equal(g[10], torch.zeros(H, dtype=torch.float64))
    tg = emb.token_type_embeddings.weight.grad
    if with_token_types:
        assert tg is not None and tg.abs().sum() > 0
    else:
        assert tg is None


def test_embedding_layer_mse_loss_module_works_with_sequential():
    """model[0] indexing also works with an nn.Sequential wrapper (as a SentenceTransformer is one)."""
    model = nn.Sequential(FakeTransformerModule(7, 4))
    ids = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[1, 1, 0]])
    w = model[0].auto_model.embeddings.word_embeddings.weight.detach()
    labels = ((w[1] + w[2]) / 2).unsqueeze(0)  # exactly the masked mean: the loss is 0
    loss = EmbeddingLayerMSELoss(model)([{"input_ids": ids, "attention_mask": mask}], labels)
    assert abs(loss.item()) < 1e-15
