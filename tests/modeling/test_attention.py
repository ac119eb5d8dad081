"""Encoder attention: the SDPA paths (dense, pad-free padded window) equal the eager reference."""

from __future__ import annotations

import pytest
import torch

from fastsam3d.modeling.attention import EncoderAttention


def _pair(window: int, grid: int, rel: bool, qkv_bias: bool, gen: torch.Generator):
    dim, heads = 24, 3
    side = window if window > 0 else grid
    kwargs = {"use_rel_pos": rel, "rel_pos_side": side, "window": window, "qkv_bias": qkv_bias}
    fast = EncoderAttention(dim, heads, impl="sdpa", **kwargs).double()
    ref = EncoderAttention(dim, heads, impl="eager", **kwargs).double()
    with torch.no_grad():
        for p in fast.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, grid, grid, grid, dim, generator=gen, dtype=torch.float64)
    return fast, ref, x


@pytest.mark.parametrize(
    ("window", "grid"),
    [(0, 4), (4, 4), (6, 4), (5, 3), (14, 8), (3, 6), (4, 6)],
    ids=[
        "global",
        "window=grid",
        "pad 4->6",
        "pad 3->5",
        "teacher 8->14",
        "2^3 windows",
        "padded 2^3 windows",
    ],
)
@pytest.mark.parametrize("rel", [True, False], ids=["relpos", "no-relpos"])
@pytest.mark.parametrize("qkv_bias", [True, False], ids=["bias", "no-bias"])
def test_sdpa_equals_eager(window: int, grid: int, rel: bool, qkv_bias: bool, gen) -> None:
    fast, ref, x = _pair(window, grid, rel, qkv_bias, gen)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-10, atol=1e-10)


def test_padded_window_gradients_equal_eager(gen: torch.Generator) -> None:
    fast, ref, x = _pair(6, 4, True, True, gen)
    grads = []
    for module in (fast, ref):
        module.zero_grad()
        module(x).sin().sum().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-9)


def test_rejects_non_cubic_grids() -> None:
    attn = EncoderAttention(8, 2, True, True, 4, 0)
    with pytest.raises(ValueError, match="cubic"):
        attn(torch.zeros(1, 4, 4, 2, 8))
