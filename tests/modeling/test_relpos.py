"""The decomposed relative-position bias and the pad-free window closed form."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from fastsam3d.modeling import relpos


def _bias_from_spec(q: torch.Tensor, tables: list[torch.Tensor], side: int) -> torch.Tensor:
    """docs/upstream.md U2, written out with loops (one head, no batch):
    bias[(qd,qh,qw)->(kd,kh,kw)] =
        q(qd,qh,qw).Rd[qd-kw] + q(qd,qh,kd).Rh[qh-kw] + q(qd,qh,kh).Rw[kh-kw]
    with R[i - j] = rel_pos[i - j + side - 1]."""
    g = q.shape[0]
    rd, rh, rw = tables
    n = g**3
    bias = torch.zeros(n, n, dtype=q.dtype)
    coords = list(itertools.product(range(g), repeat=3))
    for qi, (qd, qh, qw) in enumerate(coords):
        for ki, (kd, kh, kw) in enumerate(coords):
            bias[qi, ki] = (
                q[qd, qh, qw] @ rd[qd - kw + side - 1]
                + q[qd, qh, kd] @ rh[qh - kw + side - 1]
                + q[qd, qh, kh] @ rw[kh - kw + side - 1]
            )
    return bias


@pytest.mark.parametrize(("g", "side"), [(2, 2), (3, 3), (3, 5)])
def test_dense_bias_matches_the_documented_formula(g: int, side: int, gen: torch.Generator) -> None:
    c = 4
    q = torch.randn(1, 1, g, g, g, c, generator=gen, dtype=torch.float64)
    tables = [torch.randn(2 * side - 1, c, generator=gen, dtype=torch.float64) for _ in range(3)]
    terms = relpos.rel_pos_terms(q, *tables, key_extent=g)
    ours = relpos.dense_bias(terms)[0, 0]
    torch.testing.assert_close(ours, _bias_from_spec(q[0, 0], tables, side))


def test_gather_bias_equals_dense_entries(gen: torch.Generator) -> None:
    g, c, heads = 4, 5, 3
    q = torch.randn(2, heads, g, g, g, c, generator=gen, dtype=torch.float64)
    tables = [torch.randn(2 * g - 1, c, generator=gen, dtype=torch.float64) for _ in range(3)]
    terms = relpos.rel_pos_terms(q, *tables, key_extent=g)
    dense = relpos.dense_bias(terms)
    qi = torch.randint(0, g**3, (heads, 2, 5), generator=gen)
    ki = torch.randint(0, g**3, (heads, 2, 6), generator=gen)
    got = relpos.gather_bias(terms, qi[..., :, None], ki[..., None, :])
    heads_idx = torch.arange(heads)[:, None, None, None]
    want = dense[:, heads_idx, qi[..., :, None], ki[..., None, :]]
    torch.testing.assert_close(got, want)


def _padded_window_reference(
    q_real: torch.Tensor,
    k_real: torch.Tensor,
    v_real: torch.Tensor,
    b_q: torch.Tensor,
    b_k: torch.Tensor,
    b_v: torch.Tensor,
    tables: list[torch.Tensor],
    side: int,
) -> torch.Tensor:
    """Materialise the S^3 window: pad tokens carry q=b_q, k=b_k, v=b_v; softmax over all keys."""
    b, h, g = q_real.shape[:3]
    c = q_real.shape[-1]

    def pad(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        out = fill.view(1, h, 1, 1, 1, c).expand(b, h, side, side, side, c).clone()
        out[:, :, :g, :g, :g] = x
        return out

    q, k, v = pad(q_real, b_q), pad(k_real, b_k), pad(v_real, b_v)
    terms = relpos.rel_pos_terms(q, *tables, key_extent=side)
    bias = relpos.dense_bias(terms)
    n = side**3
    scores = (q.reshape(b, h, n, c) @ k.reshape(b, h, n, c).transpose(-1, -2)) * c**-0.5 + bias
    out = scores.softmax(-1) @ v.reshape(b, h, n, c)
    return out.view(b, h, side, side, side, c)[:, :, :g, :g, :g]


@pytest.mark.parametrize(("g", "side"), [(2, 3), (3, 5), (4, 6), (2, 7)])
def test_pad_free_window_equals_materialised_padding(
    g: int, side: int, gen: torch.Generator
) -> None:
    b, h, c = 2, 3, 4
    kw = {"generator": gen, "dtype": torch.float64}
    q, k, v = (torch.randn(b, h, g, g, g, c, **kw) for _ in range(3))
    b_q, b_k, b_v = (torch.randn(h, c, **kw) for _ in range(3))
    tables = [0.5 * torch.randn(2 * side - 1, c, **kw) for _ in range(3)]
    want = _padded_window_reference(q, k, v, b_q, b_k, b_v, tables, side)

    n = g**3
    terms = relpos.rel_pos_terms(q, *tables, key_extent=side)
    pad = relpos.window_pad_logsumexp(q, terms, b_q, b_k, tables[1], tables[2], c**-0.5)
    mask = torch.cat([relpos.dense_bias(terms.crop_keys(g)), pad.reshape(b, h, n, 1)], dim=-1)
    k_ext = torch.cat(
        [k.reshape(b, h, n, c), torch.zeros(b, h, 1, c, **{"dtype": torch.float64})], 2
    )
    v_ext = torch.cat([v.reshape(b, h, n, c), b_v[None, :, None].expand(b, h, 1, c)], 2)
    got = F.scaled_dot_product_attention(q.reshape(b, h, n, c), k_ext, v_ext, attn_mask=mask)
    torch.testing.assert_close(got.view(b, h, g, g, g, c), want, rtol=1e-10, atol=1e-10)


def test_pad_logsumexp_is_stable_for_large_logits(gen: torch.Generator) -> None:
    g, side, c = 2, 4, 3
    q = 40.0 * torch.randn(1, 1, g, g, g, c, generator=gen)
    tables = [torch.randn(2 * side - 1, c, generator=gen) for _ in range(3)]
    terms = relpos.rel_pos_terms(q, *tables, key_extent=side)
    out = relpos.window_pad_logsumexp(
        q,
        terms,
        torch.randn(1, c, generator=gen),
        torch.randn(1, c, generator=gen),
        tables[1],
        tables[2],
        c**-0.5,
    )
    assert torch.isfinite(out).all()


def test_relative_table_rejects_too_small_tables() -> None:
    with pytest.raises(ValueError, match="cannot index"):
        relpos.relative_table(torch.zeros(5, 2), 4, 4)
