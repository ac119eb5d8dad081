"""Dilated ("3D sparse flash") attention, FastSAM3D paper section 2.3 after LongNet.

Self-attention (:func:`dilated_self_attention`): the flattened token sequence of length ``N`` is
cut into segments of ``w`` tokens; inside each segment head ``h`` keeps every ``r``-th token
starting at offset ``h % r``; attention runs inside each sparse segment. All segments and heads
go through *one* batched 4-D SDPA call (flash kernel on CPU, flash / memory-efficient kernels on
CUDA), and outputs are scattered back to their original token positions. A token that a head
does not select gets zero from that head; with ``r <= H`` every token is selected by some head.
Several ``(w, r)`` patterns are combined with weights proportional to their softmax denominators
(LongNet), i.e. one softmax over the union, with multiplicity, of each pattern's keys.

Cross-attention (:func:`dilated_cross_attention`, queries outside the key sequence such as the
decoder's prompt tokens attending to image tokens): queries have no segment, so a pattern only
dilates the keys: head ``h`` sees keys ``h % r, h % r + r, ...``.

Shapes: ``q, k, v`` are ``(B, H, N, c)``; outputs ``(B, H, N_q, c)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..config import SparsePattern

BiasFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Additive bias: ``(q_index (H, ..., n, 1), k_index (H, ..., 1, n)) -> (B, H, ..., n, n)``."""


def sparse_positions(
    num_tokens: int, pattern: SparsePattern, num_heads: int, device: torch.device
) -> torch.Tensor:
    """Token positions of every sparse segment of every head.

    Returns:
        ``(H, N / w, w / r)`` long tensor; row ``[h, s]`` is
        ``s*w + h%r + [0, r, 2r, ...]``.
    """
    w, r = pattern.segment_length, pattern.dilation
    if num_tokens % w:
        raise ValueError(f"segment_length {w} does not divide {num_tokens} tokens")
    seg_start = torch.arange(0, num_tokens, w, device=device)[:, None]
    within = torch.arange(0, w, r, device=device)[None, :]
    offsets = torch.arange(num_heads, device=device) % r
    return (seg_start + within)[None] + offsets[:, None, None]


def _gather_heads(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x (B, H, N, c)``, ``index (H, ...)`` -> ``(B, H, ..., c)`` with per-head positions."""
    heads = torch.arange(x.shape[1], device=x.device).view(-1, *([1] * (index.dim() - 1)))
    return x[:, heads, index]


def _segment_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor,
    k_index: torch.Tensor,
    bias_fn: BiasFn | None,
    need_lse: bool,
    impl: str = "sdpa",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention inside index groups: ``q_index (H, S, n_q)``, ``k_index (H, S, n_k)``.

    ``impl="eager"`` computes ``softmax(q k^T * scale + bias) v`` explicitly (the reference and
    the "no flash" row of the benchmark); ``"sdpa"`` makes one fused 4-D SDPA call.

    Returns ``out (B, H, S, n_q, c)`` and, if asked, ``lse (B, H, S, n_q)``.
    """
    b, h, _, c = q.shape
    n_groups, n_q, n_k = q_index.shape[1], q_index.shape[2], k_index.shape[2]
    qs, ks, vs = _gather_heads(q, q_index), _gather_heads(k, k_index), _gather_heads(v, k_index)
    bias = None if bias_fn is None else bias_fn(q_index[..., :, None], k_index[..., None, :])
    flat = (b, h * n_groups)
    if impl == "eager":
        scores = (qs @ ks.transpose(-2, -1)) * c**-0.5
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(dim=-1) @ vs
    else:
        out = F.scaled_dot_product_attention(
            qs.reshape(*flat, n_q, c),
            ks.reshape(*flat, n_k, c),
            vs.reshape(*flat, n_k, c),
            attn_mask=None if bias is None else bias.reshape(*flat, n_q, n_k),
        ).view(b, h, n_groups, n_q, c)
    lse = None
    if need_lse:
        scores = (qs @ ks.transpose(-2, -1)) * c**-0.5
        if bias is not None:
            scores = scores + bias
        lse = torch.logsumexp(scores, dim=-1)
    return out, lse


def _mix(outputs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    """Combine per-pattern outputs ``(B, H, N, c)`` by softmax denominators ``exp(lse)``.

    ``lse`` is ``-inf`` where a pattern did not select the query; a query selected by no
    pattern gets zero output.
    """
    lse = torch.stack(lses)  # (P, B, H, N)
    top = lse.amax(dim=0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weight = torch.exp(lse - top)
    total = weight.sum(dim=0)
    mixed = (weight[..., None] * torch.stack(outputs)).sum(dim=0)
    return mixed / torch.where(total > 0, total, torch.ones_like(total))[..., None]


def dilated_self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    patterns: Sequence[SparsePattern],
    bias_fn: BiasFn | None = None,
    impl: str = "sdpa",
) -> torch.Tensor:
    """Sparse self-attention of ``(B, H, N, c)`` tensors; returns ``(B, H, N, c)``.

    Args:
        q, k, v: ``(B, H, N, c)``; scale ``c ** -0.5``.
        patterns: one or more :class:`~fastsam3d.config.SparsePattern`.
        bias_fn: optional additive bias for index pairs (e.g. relative position).
        impl: ``"sdpa"`` (fused kernel) or ``"eager"`` (explicit softmax).
    """
    b, h, n, c = q.shape
    if (
        impl == "sdpa"
        and len(patterns) == 1
        and patterns[0].dilation == 1
        and patterns[0].segment_length == n
    ):
        full = torch.arange(n, device=q.device)
        mask = None if bias_fn is None else bias_fn(full[None, :, None], full[None, None, :])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    need_lse = len(patterns) > 1
    outputs: list[torch.Tensor] = []
    lses: list[torch.Tensor] = []
    batch = torch.arange(b, device=q.device)[:, None, None, None]
    heads = torch.arange(h, device=q.device)[None, :, None, None]
    for pattern in patterns:
        index = sparse_positions(n, pattern, h, q.device)  # (H, S, g)
        out, lse = _segment_attention(q, k, v, index, index, bias_fn, need_lse, impl)
        where = (batch, heads, index[None])  # scatter back (functional: exporters keep it)
        outputs.append(q.new_zeros(b, h, n, c).index_put(where, out))
        if lse is not None:
            lses.append(q.new_full((b, h, n), float("-inf")).index_put(where, lse))
    return outputs[0] if not need_lse else _mix(outputs, lses)


def dilated_cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, patterns: Sequence[SparsePattern]
) -> torch.Tensor:
    """Queries ``(B, H, M, c)`` attend to dilated keys ``(B, H, N, c)``; returns ``(B, H, M, c)``.

    Head ``h`` sees keys ``h % r + r * j``; ``segment_length`` does not apply (queries belong to
    no segment). Several dilations are mixed by softmax denominators.
    """
    _b, h, m, _c = q.shape
    n = k.shape[2]
    q_index = torch.arange(m, device=q.device).expand(h, 1, m)
    outputs: list[torch.Tensor] = []
    lses: list[torch.Tensor] = []
    need_lse = len(patterns) > 1
    for pattern in patterns:
        r = pattern.dilation
        if n % r:
            raise ValueError(f"dilation {r} does not divide the {n} keys")
        k_index = (
            torch.arange(0, n, r, device=q.device)[None, None, :]
            + (torch.arange(h, device=q.device) % r)[:, None, None]
        )
        out, lse = _segment_attention(q, k, v, q_index, k_index, None, need_lse)
        outputs.append(out[:, :, 0])
        if lse is not None:
            lses.append(lse[:, :, 0])
    return outputs[0] if not need_lse else _mix(outputs, lses)
