"""training.kv.adapters.KVAdapter: identity, group and dense head mixing on known inputs, shapes,
training and a state_dict roundtrip."""

from __future__ import annotations

import pytest
import torch

from training.kv.adapters import AdapterShapeError, KVAdapter

# ------------------------------------------------------------------------------------------ helpers


def cache(heads: int, dim: int, seed: int = 0, batch: int = 2, length: int = 3) -> torch.Tensor:
    """A teacher cache (B, L, H, d)."""
    return torch.randn(batch, length, heads, dim, generator=torch.Generator().manual_seed(seed))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------- identity


def test_identity_when_shapes_match():
    adapter = KVAdapter(4, 8, 4, 8)
    assert adapter.identity
    assert n_params(adapter) == 0 and list(adapter.state_dict()) == []
    x = cache(4, 8)
    assert adapter(x) is x
    assert "identity=True" in repr(adapter)


def test_learn_identity_starts_as_identity():
    adapter = KVAdapter(4, 8, 4, 8, learn_identity=True)
    assert not adapter.identity and n_params(adapter) == 8 * 8 + 4 * 4
    torch.testing.assert_close(adapter.dim.weight, torch.eye(8), rtol=0, atol=0)
    torch.testing.assert_close(adapter.mix, torch.eye(4), rtol=0, atol=0)
    x = cache(4, 8)
    torch.testing.assert_close(adapter(x), x, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------- group init


def test_group_init_mean_of_pairs():
    adapter = KVAdapter(4, 6, 2, 6, head_mixing="group")
    torch.testing.assert_close(adapter.mix.detach(), torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]), rtol=0, atol=0)
    x = cache(4, 6, seed=1)
    out = adapter(x)
    assert out.shape == (2, 3, 2, 6)
    torch.testing.assert_close(out[:, :, 0], (x[:, :, 0] + x[:, :, 1]) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, :, 1], (x[:, :, 2] + x[:, :, 3]) / 2, rtol=0, atol=1e-6)
    # A known input: head h filled with the value h.
    known = torch.arange(4.0)[None, None, :, None].expand(1, 1, 4, 6)
    torch.testing.assert_close(adapter(known), torch.tensor([0.5, 2.5])[None, None, :, None].expand(1, 1, 2, 6), rtol=0, atol=1e-6)


def test_group_init_mean_of_groups_of_three():
    adapter = KVAdapter(6, 4, 2, 4)  # auto -> group
    x = cache(6, 4, seed=2)
    out = adapter(x)
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0:3].mean(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, :, 1], x[:, :, 3:6].mean(2), rtol=0, atol=1e-6)


def test_group_init_expansion_like_gqa():
    adapter = KVAdapter(2, 6, 4, 6, head_mixing="group")
    torch.testing.assert_close(
        adapter.mix.detach(), torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), rtol=0, atol=0
    )
    x = cache(2, 6, seed=3)
    out = adapter(x)
    assert out.shape == (2, 3, 4, 6)
    # The same as grouped-query attention repeating each K/V head for its query heads.
    torch.testing.assert_close(out, x.repeat_interleave(2, dim=2), rtol=0, atol=1e-6)
    known = torch.tensor([1.0, 7.0])[None, None, :, None].expand(1, 1, 2, 6)
    torch.testing.assert_close(adapter(known), torch.tensor([1.0, 1.0, 7.0, 7.0])[None, None, :, None].expand(1, 1, 4, 6), rtol=0, atol=1e-6)


def test_same_heads_other_dims_keeps_heads_apart():
    adapter = KVAdapter(2, 8, 2, 4)
    torch.testing.assert_close(adapter.mix.detach(), torch.eye(2), rtol=0, atol=0)
    x = cache(2, 8, seed=4)
    out = adapter(x)
    assert out.shape == (2, 3, 2, 4)
    torch.testing.assert_close(out, x @ adapter.dim.weight.T, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------- dense


def test_dense_three_onto_two():
    adapter = KVAdapter(3, 6, 2, 6, head_mixing="dense")
    assert adapter.mix.shape == (2, 3)
    torch.testing.assert_close(adapter.mix.detach(), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), rtol=0, atol=0)
    x = cache(3, 6, seed=5)
    out = adapter(x)
    assert out.shape == (2, 3, 2, 6)
    torch.testing.assert_close(out, x[:, :, :2], rtol=0, atol=1e-6)
    auto = KVAdapter(3, 6, 2, 6)  # auto falls back to dense
    torch.testing.assert_close(auto.mix, adapter.mix, rtol=0, atol=0)


def test_dense_two_onto_three():
    adapter = KVAdapter(2, 4, 3, 4, head_mixing="dense")
    torch.testing.assert_close(adapter.mix.detach(), torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), rtol=0, atol=0)
    assert adapter(cache(2, 4)).shape == (2, 3, 3, 4)


def test_dense_where_groups_divide_starts_as_group():
    torch.testing.assert_close(KVAdapter(4, 6, 2, 6, head_mixing="dense").mix, KVAdapter(4, 6, 2, 6, head_mixing="group").mix)


def test_group_with_non_dividing_heads_raises():
    with pytest.raises(AdapterShapeError, match="3 key/value heads and the student 2.*use head_mixing 'dense'"):
        KVAdapter(3, 8, 2, 8, head_mixing="group")
    with pytest.raises(ValueError):  # AdapterShapeError is a ValueError
        KVAdapter(2, 8, 5, 8, head_mixing="group")


def test_bad_head_mixing():
    with pytest.raises(ValueError, match="head_mixing must be one of"):
        KVAdapter(4, 8, 2, 8, head_mixing="sparse")


# ------------------------------------------------------------------------------ shapes and training


@pytest.mark.parametrize(
    "h_t,d_t,h_s,d_s",
    [(4, 16, 2, 8), (2, 8, 4, 16), (3, 12, 2, 8), (5, 64, 3, 32), (9, 8, 3, 64), (1, 8, 4, 8)],
)
def test_output_shapes_and_dtype(h_t, d_t, h_s, d_s):
    adapter = KVAdapter(h_t, d_t, h_s, d_s)
    assert not adapter.identity
    assert adapter.dim.weight.shape == (d_s, d_t) and adapter.mix.shape == (h_s, h_t)
    x = cache(h_t, d_t, batch=3, length=5)
    out = adapter(x)
    assert out.shape == (3, 5, h_s, d_s) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() > 0
    assert adapter(x.to(torch.bfloat16)).dtype == torch.float32  # computed in the adapter's dtype
    assert f"teacher=({h_t}, {d_t}), student=({h_s}, {d_s})" in repr(adapter)


def test_rectangular_dim_map_is_orthogonal():
    torch.manual_seed(0)
    down = KVAdapter(2, 16, 2, 8).dim.weight  # (8, 16): orthonormal rows
    torch.testing.assert_close(down @ down.T, torch.eye(8), rtol=0, atol=1e-5)
    up = KVAdapter(2, 8, 2, 16).dim.weight  # (16, 8): orthonormal columns
    torch.testing.assert_close(up.T @ up, torch.eye(8), rtol=0, atol=1e-5)


def test_adapter_trains():
    torch.manual_seed(0)
    adapter = KVAdapter(4, 16, 2, 8)
    x = cache(4, 16, seed=6)
    target = torch.randn(2, 3, 2, 8, generator=torch.Generator().manual_seed(7))
    opt = torch.optim.Adam(adapter.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (adapter(x) - target).pow(2).mean()
        loss.backward()
        assert adapter.dim.weight.grad.abs().max() > 0 and adapter.mix.grad.abs().max() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # Gradients also flow back to an input that asks for them.
    x_grad = x.clone().requires_grad_(True)
    adapter(x_grad).sum().backward()
    assert x_grad.grad is not None and x_grad.grad.abs().max() > 0


def test_state_dict_roundtrip(tmp_path):
    torch.manual_seed(0)
    adapter = KVAdapter(3, 12, 2, 8)
    with torch.no_grad():
        adapter.mix.add_(torch.randn_like(adapter.mix))
    assert set(adapter.state_dict()) == {"dim.weight", "mix"}
    torch.save(adapter.state_dict(), tmp_path / "adapter.pt")
    torch.manual_seed(1)
    fresh = KVAdapter(3, 12, 2, 8)
    x = cache(3, 12, seed=8)
    assert not torch.equal(fresh(x), adapter(x))
    fresh.load_state_dict(torch.load(tmp_path / "adapter.pt", weights_only=True))
    assert torch.equal(fresh(x), adapter(x))
    with pytest.raises(RuntimeError):
        KVAdapter(3, 12, 2, 16).load_state_dict(adapter.state_dict())
