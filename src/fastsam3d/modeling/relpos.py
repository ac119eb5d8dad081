"""The 3D decomposed relative-position bias exactly as the released weights were trained with.

Upstream (SAM-Med3D / FastSAM3D ``add_decomposed_rel_pos``) computes three per-query terms

    rel_d[qd, qh, qw, t] = q(qd, qh, qw) . R_d[qd - t]
    rel_h[qd, qh, qw, t] = q(qd, qh, qw) . R_h[qh - t]
    rel_w[qd, qh, qw, t] = q(qd, qh, qw) . R_w[qw - t]

(``q`` the un-scaled per-head query, ``R_*[i - j] = rel_pos_*[i - j + S - 1]`` with ``S`` the side
of the table: the window side, or the token grid for global blocks), and then adds them to the
``(qd, qh, qw, kd, kh, kw)`` logits with a broadcast that does not follow the docstring. What is
really added is

    bias[(qd, qh, qw) -> (kd, kh, kw)] = rel_d[qd, qh, qw, kw] + rel_h[qd, qh, kd, kw]
                                         + rel_w[qd, qh, kh, kw]

i.e. the d-term varies along the key's w axis, and the h/w terms use the query *at other
positions* (``qw := kd`` and ``qw := kh``) of the same ``(qd, qh)`` row. We reproduce that
(docs/upstream.md U2). Terms are kept factorised as :class:`RelPosTerms`; the bias is
materialised densely (``dense_bias``), gathered for sparse index pairs (``gather_bias``) or
reduced analytically over padding keys (``window_pad_logsumexp``).

Shapes: ``B`` batch, ``H`` heads, ``G`` token grid side, ``K`` key extent per axis (``G`` or the
window side ``S``), ``c`` head dim. Query grids are ``(B, H, G, G, G, c)`` in (d, h, w) order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def relative_table(rel_pos: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """``R[i, j] = rel_pos[i - j + S - 1]`` for ``i < n_q, j < n_k``.

    Args:
        rel_pos: ``(2S - 1, c)`` learned table.
        n_q, n_k: query / key index ranges (both ``<= S``).

    Returns:
        ``(n_q, n_k, c)``.
    """
    side = (rel_pos.shape[0] + 1) // 2
    if n_q > side or n_k > side:
        raise ValueError(f"relative table of side {side} cannot index {n_q}x{n_k} positions")
    qi = torch.arange(n_q, device=rel_pos.device)[:, None]
    kj = torch.arange(n_k, device=rel_pos.device)[None, :]
    return rel_pos[qi - kj + side - 1]


@dataclass(frozen=True)
class RelPosTerms:
    """Factorised bias terms of one attention call.

    ``d``: ``(B, H, G, G, G, K)`` indexed ``[qd, qh, qw, kw]``;
    ``h``: ``(B, H, G, G, G, K)`` indexed ``[qd, qh, kd, kw]`` (kd < G: real positions only);
    ``w``: ``(B, H, G, G, G, K)`` indexed ``[qd, qh, kh, kw]``.
    """

    d: torch.Tensor
    h: torch.Tensor
    w: torch.Tensor

    def crop_keys(self, n: int) -> RelPosTerms:
        """Restrict the key w-axis to ``[0, n)``."""
        return RelPosTerms(self.d[..., :n], self.h[..., :n], self.w[..., :n])


def rel_pos_terms(
    q: torch.Tensor,
    rel_pos_d: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    key_extent: int,
) -> RelPosTerms:
    """Compute upstream's ``rel_d, rel_h, rel_w`` for a cubic query grid.

    Args:
        q: ``(B, H, G, G, G, c)`` un-scaled queries.
        rel_pos_*: ``(2S - 1, c)`` tables with ``S >= key_extent >= G``.
        key_extent: ``K``, the key index range of the last axis (``G``, or ``S`` to include the
            padding positions of a window).
    """
    g = q.shape[2]
    r_d = relative_table(rel_pos_d, g, key_extent)
    r_h = relative_table(rel_pos_h, g, key_extent)
    r_w = relative_table(rel_pos_w, g, key_extent)
    return RelPosTerms(
        d=torch.einsum("bnxyzc,xtc->bnxyzt", q, r_d),
        h=torch.einsum("bnxyzc,ytc->bnxyzt", q, r_h),
        w=torch.einsum("bnxyzc,ztc->bnxyzt", q, r_w),
    )


def dense_bias(terms: RelPosTerms) -> torch.Tensor:
    """Materialise the ``(B, H, N, N)`` bias (``N = G^3``, keys restricted to the real grid).

    Written without in-place writes so that graph exporters (ONNX) capture it faithfully.
    """
    b, n_heads, g = terms.d.shape[:3]
    # [qd, qh, qw, kd, kh, kw] <- d[qd, qh, qw, kw] + h[qd, qh, kd, kw] + w[qd, qh, kh, kw]
    d = terms.d[:, :, :, :, :, None, None, :]
    h = terms.h[:, :, :, :, None, :, None, :]
    w = terms.w[:, :, :, :, None, None, :, :]
    return ((d + h) + w).reshape(b, n_heads, g**3, g**3)


def gather_bias(terms: RelPosTerms, q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
    """Bias for arbitrary (per-head) index pairs without materialising the dense bias.

    Args:
        terms: terms with key extent ``G``.
        q_index: ``(H, ..., n_q, 1)`` flat query positions in ``[0, G^3)``.
        k_index: ``(H, ..., 1, n_k)`` flat key positions.

    Returns:
        ``(B, H, ..., n_q, n_k)``; entry = ``bias[q_index, k_index]`` of :func:`dense_bias`.
    """
    b, n_heads, g = terms.d.shape[:3]
    heads = torch.arange(n_heads, device=q_index.device).view(-1, *([1] * (q_index.dim() - 1)))
    kd, kh, kw = k_index // (g * g), (k_index // g) % g, k_index % g
    q_row = q_index // g
    d = terms.d.reshape(b, n_heads, g**3, g)[:, heads, q_index, kw]
    h = terms.h.reshape(b, n_heads, g * g, g * g)[:, heads, q_row, kd * g + kw]
    w = terms.w.reshape(b, n_heads, g * g, g * g)[:, heads, q_row, kh * g + kw]
    return d + h + w


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.logsumexp`` written out (OpenVINO mis-reads ONNX ``ReduceLogSumExp``)."""
    top = x.amax(dim=dim, keepdim=True)
    return (top + torch.log(torch.exp(x - top).sum(dim=dim, keepdim=True))).squeeze(dim)


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) + exp(b))``, stable, from ops every graph exporter knows (max, exp, log)."""
    top = torch.maximum(a, b)
    return top + torch.log(torch.exp(a - top) + torch.exp(b - top))


def window_pad_logsumexp(
    q: torch.Tensor,
    terms: RelPosTerms,
    q_bias: torch.Tensor,
    k_bias: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Log of the total softmax mass of the padding keys of a zero-padded window, per query.

    Upstream pads the ``G^3`` token grid at the high end to one ``S^3`` window (``S > G``) and
    lets the padding tokens take part in attention unmasked. Padding tokens are zero vectors after
    the norm, so their query/key/value equal the qkv biases ``b_q, b_k, b_v``. A real query's
    logit to a padding key ``(kd, kh, kw)`` (at least one index ``>= G``) is

        s * q . b_k + rel_d[kw] + rel_h'[kd, kw] + rel_w'[kh, kw]

    where ``rel_h'[kd, .]`` / ``rel_w'[kh, .]`` use ``b_q`` in place of the query when the index
    is ``>= G``. Summing ``exp`` of that over the padding set ``[0,S)^3 \\ [0,G)^3`` factorises per
    ``kw`` as ``Sh_all * Sw_all - [kw < G] Sh_real * Sw_real`` (with ``Sh = sum_kd exp(rel_h')``);
    the subtraction is rewritten as a sum of positive terms so it is computed stably in log space.
    All padding keys share the value ``b_v``, so attention over the real keys plus one extra key
    with logit = this quantity and value ``b_v`` is exactly upstream's padded attention.

    Args:
        q: ``(B, H, G, G, G, c)`` un-scaled real queries.
        terms: :func:`rel_pos_terms` of ``q`` with key extent ``S``.
        q_bias, k_bias: ``(H, c)`` query / key parts of the qkv bias (zeros without bias).
        rel_pos_h, rel_pos_w: ``(2S - 1, c)`` tables.
        scale: the attention scale ``c ** -0.5``.

    Returns:
        ``(B, H, G, G, G)`` log-mass of the padding keys.
    """
    g = q.shape[2]
    side = terms.d.shape[-1]
    n_pad = side - g
    if n_pad <= 0:
        raise ValueError(f"window side {side} must exceed the grid {g} to have padding")
    # h-term: real kd < G from the queries of the row, kd >= G all equal b_q . R_h[qh - kw]
    lh_real = _logsumexp(terms.h, dim=4)  # (B, H, G(qd), G(qh), S(kw))
    r_h = relative_table(rel_pos_h, g, side)  # (G(qh), S, c)
    lh_pad = torch.einsum("nc,ytc->nyt", q_bias, r_h)[None, :, None] + math.log(n_pad)
    # w-term: real kh < G from the queries, kh >= G equal b_q . R_w[kh - kw]
    lw_real = _logsumexp(terms.w, dim=4)  # (B, H, G, G, S)
    r_w = relative_table(rel_pos_w, side, side)[g:]  # (S - G, S, c)
    lw_pad = _logsumexp(torch.einsum("nc,utc->nut", q_bias, r_w), dim=1)[None, :, None, None]
    lw_all = _logaddexp(lw_real, lw_pad)
    # log sum over (kd, kh) not both real, for each (qd, qh, kw)
    partial = _logaddexp(lh_real + lw_pad, lh_pad + lw_all)  # kw < G
    full = _logaddexp(lh_real, lh_pad) + lw_all  # kw >= G: every (kd, kh) is padding
    is_real_kw = torch.arange(side, device=q.device) < g
    per_kw = torch.where(is_real_kw, partial, full)  # (B, H, G, G, S)
    lse = _logsumexp(terms.d + per_kw[:, :, :, :, None, :], dim=-1)  # (B, H, G, G, G)
    return lse + scale * torch.einsum("bnxyzc,nc->bnxyz", q, k_bias)
