"""Multi-head self-attention of the 3D ViT encoder, with upstream's relative-position bias.

One module, several ways to compute the same function (chosen by ``impl`` and the grid/window):

- ``"sdpa"``, global block: one :func:`~torch.nn.functional.scaled_dot_product_attention` call
  with the relative bias as an additive float mask.
- ``"sdpa"``, windowed block whose window is larger than the grid (the teacher: an ``8^3`` grid
  zero-padded to one ``14^3`` window): the padding tokens are never materialised. Their total
  softmax mass has a closed form (:func:`~fastsam3d.modeling.relpos.window_pad_logsumexp`), so
  attention runs over the ``G^3`` real keys plus one extra key (zero key vector, value ``b_v``,
  additive logit = that mass). Exact, about 15x cheaper than attending over ``S^3`` tokens.
- ``"sdpa"``, grid holding several windows: upstream's partition (padding materialised), one
  SDPA call over all windows.
- ``"eager"``: a literal statement of upstream's arithmetic (pad, partition windows, explicit
  ``softmax(q k^T + bias) v``). Slow; the reference the fast paths are tested against.

Sparse (dilated) attention replaces the dense call when ``sparse`` is set; it attends over the
real token grid only (windows and padding do not apply).

Tokens are channels-last grids ``(B, D, H, W, C)`` in (d, h, w) order; flat token index
``n = (d * H + h) * W + w``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AttentionImpl, SparseAttentionConfig
from . import relpos
from .sparse_attention import dilated_self_attention


class EncoderAttention(nn.Module):
    """Self-attention over a cubic token grid with decomposed 3D relative position bias.

    Args:
        dim: channels ``C``.
        num_heads: heads ``H`` (head dim ``C / H``).
        qkv_bias: learn a bias for the qkv projection.
        use_rel_pos: add upstream's decomposed relative bias.
        rel_pos_side: ``S``, side of the region the tables cover (window side, or grid side for
            global blocks); tables are ``(2S - 1, C / H)``.
        window: window side (0 = global attention).
        impl: ``"sdpa"`` or ``"eager"``.
        sparse: dilated attention patterns, or ``None`` for dense attention.
        distance_bias: add a fixed ``-slope_h * distance(i, j)`` to the logits of head ``h``
            (distance between token centres in grid cells; slopes ``2^1 ... 2^-4``, one per
            head): a 3D ALiBi that makes some heads local and others global from the start.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool,
        use_rel_pos: bool,
        rel_pos_side: int,
        window: int,
        impl: AttentionImpl = "sdpa",
        sparse: SparseAttentionConfig | None = None,
        distance_bias: bool = False,
    ) -> None:
        super().__init__()
        if distance_bias and (sparse is not None or window != 0):
            raise ValueError("distance_bias needs dense global attention (window 0, no sparse)")
        self.distance_side = rel_pos_side
        self.distance: torch.Tensor | None
        self.register_buffer(
            "distance",
            distance_bias_table(num_heads, rel_pos_side) if distance_bias else None,
            persistent=False,
        )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window = window
        self.impl = impl
        self.sparse = sparse
        self.use_rel_pos = use_rel_pos
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if use_rel_pos:
            rows = 2 * rel_pos_side - 1
            self.rel_pos_d = nn.Parameter(torch.zeros(rows, self.head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(rows, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(rows, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, G, G, G, C)`` -> ``(B, G, G, G, C)``."""
        b, g, g_h, g_w, c = x.shape
        if not g == g_h == g_w:
            raise ValueError(f"encoder attention needs a cubic token grid, got {tuple(x.shape)}")
        if self.sparse is None and (self.impl == "eager" or 0 < self.window < g):
            return self._forward_windows(x)
        q, k, v = self._project(x.reshape(b, g**3, c))
        if self.sparse is not None:
            out = self._attend_sparse(q, k, v, g)
        elif self.window == 0 or self.window == g:
            out = self._attend_dense(q, k, v, g)
        else:  # one window larger than the grid
            out = self._attend_padded_window(q, k, v, g)
        return self.proj(out.transpose(1, 2).reshape(b, g, g, g, c))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(B, H, N, N)`` (``N = G^3``, rows sum to 1) of a global dense
        block for tokens ``(B, G, G, G, C)``; for inspection (the forward pass never forms them
        on the fast path)."""
        b, g = x.shape[:2]
        if self.sparse is not None or self.window not in (0, g):
            raise ValueError("probabilities() is defined for global dense attention only")
        q, k, _ = self._project(x.reshape(b, g**3, -1))
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            logits = logits + relpos.dense_bias(self._terms(q, g, g))
        if self.distance is not None:
            logits = logits + self.distance.to(logits.dtype)
        return logits.softmax(dim=-1)

    @torch.no_grad()
    def reset_distance_bias(self) -> None:
        """Refill the distance table (a model built on the ``meta`` device has none yet)."""
        if self.distance is not None:
            table = distance_bias_table(self.num_heads, self.distance_side)
            self.distance.copy_(table.to(self.distance.device, self.distance.dtype))

    # -- fast paths --------------------------------------------------------------------------

    def _project(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, N, C)`` -> q, k, v, each ``(B, H, N, c)``."""
        b, n, _ = tokens.shape
        qkv = self.qkv(tokens).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _terms(self, q: torch.Tensor, g: int, key_extent: int) -> relpos.RelPosTerms:
        q_grid = q.unflatten(2, (g, g, g))
        return relpos.rel_pos_terms(
            q_grid, self.rel_pos_d, self.rel_pos_h, self.rel_pos_w, key_extent
        )

    def _attend_dense(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: int
    ) -> torch.Tensor:
        mask = relpos.dense_bias(self._terms(q, g, g)) if self.use_rel_pos else None
        if self.distance is not None:
            table = self.distance.to(q.dtype)
            mask = table if mask is None else mask + table
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _qkv_bias(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head ``(H, c)`` q/k/v biases (the projections of a zero token)."""
        if self.qkv.bias is None:
            zero = like.new_zeros(self.num_heads, self.head_dim)
            return zero, zero, zero
        bias = self.qkv.bias.view(3, self.num_heads, self.head_dim)
        return bias[0], bias[1], bias[2]

    def _attend_padded_window(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: int
    ) -> torch.Tensor:
        """Exact attention of a ``G^3`` grid zero-padded to one ``S^3`` window, pad-free."""
        b, h, n, c = q.shape
        side = self.window
        b_q, b_k, b_v = self._qkv_bias(q)
        if self.use_rel_pos:
            terms = self._terms(q, g, side)
            real = relpos.dense_bias(terms.crop_keys(g))
            pad_lse = relpos.window_pad_logsumexp(
                q.unflatten(2, (g, g, g)),
                terms,
                b_q,
                b_k,
                self.rel_pos_h,
                self.rel_pos_w,
                self.scale,
            ).reshape(b, h, n, 1)
        else:
            real = q.new_zeros(b, h, n, n)
            pad_lse = self.scale * (q @ b_k[:, :, None]) + math.log(side**3 - n)
        mask = torch.cat([real, pad_lse], dim=-1)  # (B, H, N, N + 1), no in-place writes
        k_ext = torch.cat([k, k.new_zeros(b, h, 1, c)], dim=2)
        v_ext = torch.cat([v, b_v[None, :, None, :].expand(b, h, 1, c)], dim=2)
        return F.scaled_dot_product_attention(q, k_ext, v_ext, attn_mask=mask)

    def _attend_sparse(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: int
    ) -> torch.Tensor:
        assert self.sparse is not None
        bias_fn = None
        if self.use_rel_pos:
            terms = self._terms(q, g, g)

            def bias_fn(qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
                return relpos.gather_bias(terms, qi, ki)

        return dilated_self_attention(
            q, k, v, self.sparse.patterns, bias_fn=bias_fn, impl=self.impl
        )

    # -- window partition (eager reference; SDPA for grids holding several windows) ----------

    def _forward_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Upstream's procedure: zero-pad to a multiple of the window, partition, attend inside
        each window (pad tokens included, unmasked), merge, crop. Global attention is the
        special case of one window covering the grid."""
        b, g, _, _, c = x.shape
        side = self.window if self.window > 0 else g
        pad = (side - g % side) % side
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad, 0, pad))
        gp = g + pad
        nw = gp // side
        # (B, nw, S, nw, S, nw, S, C) -> (B * nw^3, S^3, C)
        windows = (
            x.view(b, nw, side, nw, side, nw, side, c)
            .permute(0, 1, 3, 5, 2, 4, 6, 7)
            .reshape(-1, side**3, c)
        )
        q, k, v = self._project(windows)
        if self.impl == "eager":
            out = self._attend_eager(q, k, v, side)
        else:
            out = self._attend_dense(q, k, v, side)
        out = self.proj(out.transpose(1, 2).reshape(-1, side**3, c))
        out = (
            out.view(b, nw, nw, nw, side, side, side, c)
            .permute(0, 1, 4, 2, 5, 3, 6, 7)
            .reshape(b, gp, gp, gp, c)
        )
        return out[:, :g, :g, :g].contiguous()

    def _attend_eager(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: int
    ) -> torch.Tensor:
        """``softmax(q k^T * scale + bias) v`` with upstream's 7-D broadcast of the bias."""
        bw, h, n, _ = q.shape
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            t = self._terms(q, s, s)
            attn = (
                attn.view(bw, h, s, s, s, s, s, s)
                + t.d[:, :, :, :, :, None, None, :]
                + t.h[:, :, :, :, None, :, None, :]
                + t.w[:, :, :, :, None, None, :, :]
            ).view(bw, h, n, n)
        if self.distance is not None:
            attn = attn + self.distance.to(attn.dtype)
        return attn.softmax(dim=-1) @ v


def distance_bias_table(num_heads: int, side: int) -> torch.Tensor:
    """``(H, N, N)`` with ``N = side^3``: ``-slope_h * |p_i - p_j|`` (Euclidean, in grid cells,
    flat index ``(d * side + h) * side + w``); slopes ``2^1`` down to ``2^-4``, evenly spaced in
    log scale over the heads (one head: ``2^-1``)."""
    axis = torch.arange(side, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    distance = torch.cdist(grid, grid)
    slopes = torch.tensor([0.5]) if num_heads == 1 else 2.0 ** torch.linspace(1.0, -4.0, num_heads)
    return -slopes[:, None, None] * distance[None]
