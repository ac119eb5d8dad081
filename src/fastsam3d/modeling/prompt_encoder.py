"""3D prompt encoder: points and a previous low-resolution mask -> sparse and dense embeddings.

Coordinate frame: points are voxel indices ``(i0, i1, i2)`` of the ``S^3`` model input, in
tensor axis order (dims 2, 3, 4 of the ``(B, 1, S, S, S)`` image). A voxel's centre is at
``index + 0.5``.

Two upstream facts reproduced here (docs/upstream.md U4):

- The dense positional encoding at embedding-grid cell ``(i, j, k)`` is the Fourier encoding of
  ``((j + .5) / G, (i + .5) / G, (k + .5) / G)``: axes 0 and 1 are swapped relative to how points
  are encoded (``((a + .5) / S, (b + .5) / S, (c + .5) / S)``). The released weights learned
  with this, so it stays.
- The encoding of ``c in [0, 1]^3`` is ``[sin, cos, sin](2 pi (2c - 1) @ G_mat)`` (the third block
  repeats ``sin``), with ``G_mat`` a ``(3, D/3)`` persistent buffer that must be loaded.

Models trained here (``PromptEncoderConfig(swap_pe_axes=False)``) encode grid cells and points
the same way.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PromptEncoderConfig
from .layers import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3D coordinates in ``[0, 1]^3`` (always computed in float32)."""

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int, swap_axes: bool = True) -> None:
        super().__init__()
        self.swap_axes = swap_axes
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 3)`` in ``[0, 1]`` -> ``(..., 3 * F)`` float32."""
        proj = (2.0 * coords.float() - 1.0) @ self.positional_encoding_gaussian_matrix.float()
        proj = 2.0 * math.pi * proj
        sin = torch.sin(proj)
        return torch.cat([sin, torch.cos(proj), sin], dim=-1)

    def dense(self, grid: int) -> torch.Tensor:
        """Positional encoding of a ``grid^3`` lattice: ``(3F, grid, grid, grid)`` float32."""
        device = self.positional_encoding_gaussian_matrix.device
        centres = (torch.arange(grid, device=device, dtype=torch.float32) + 0.5) / grid
        a0, a1, a2 = torch.meshgrid(centres, centres, centres, indexing="ij")
        # upstream's axis-0/1 swap (kept for its weights; off for models trained here)
        coords = torch.stack([a1, a0, a2] if self.swap_axes else [a0, a1, a2], dim=-1)
        return self.encode(coords).permute(3, 0, 1, 2)


class PromptEncoder3D(nn.Module):
    """Embeds point prompts (sparse) and a mask prompt (dense).

    Args:
        cfg: prompt encoder config (embedding dim ``D``).
        grid: side ``G`` of the image embedding.
        image_size: side ``S`` of the model input.
        mask_size: side ``L`` of the mask prompt, the model's logits (default ``4G``; ``8G``
            for decoders with a fine stage, whose logits are area-pooled to ``4G`` here).
    """

    def __init__(
        self, cfg: PromptEncoderConfig, grid: int, image_size: int, mask_size: int | None = None
    ) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.embed_dim = dim
        self.grid = grid
        self.image_size = image_size
        self._mask_size = 4 * grid if mask_size is None else mask_size
        if self._mask_size % (4 * grid):
            raise ValueError(f"mask_size {mask_size} is not a multiple of 4 x grid {grid}")
        self.pe_layer = PositionEmbeddingRandom3D(dim // 3, swap_axes=cfg.swap_pe_axes)
        self.click_maps = cfg.click_maps
        self.click_map_sigma = cfg.click_map_sigma
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, dim)
        mid = cfg.mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(3 if cfg.click_maps else 1, mid, kernel_size=2, stride=2),
            LayerNorm3d(mid),
            nn.GELU(),
            nn.Conv3d(mid, cfg.mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(cfg.mask_in_chans),
            nn.GELU(),
            nn.Conv3d(cfg.mask_in_chans, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)
        self.fine_embed: nn.Conv3d | None = None
        if cfg.fine_channels:
            self.fine_embed = nn.Conv3d(3, cfg.fine_channels, kernel_size=1)

    @property
    def mask_size(self) -> int:
        """Side of the mask prompt (the low-resolution logits): ``4 G``, or ``8 G`` with a fine
        stage."""
        return self._mask_size

    def dense_pe(self) -> torch.Tensor:
        """``(1, D, G, G, G)`` positional encoding of the image embedding (float32)."""
        return self.pe_layer.dense(self.grid)[None]

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse embeddings of points plus upstream's pad point.

        Args:
            points: ``(B, N, 3)`` voxel indices of the model input (tensor axis order).
            labels: ``(B, N)`` 1 foreground, 0 background, -1 ignored.

        Returns:
            ``(B, N + 1, D)`` float32: one token per point and a final pad token (label -1).
        """
        b = points.shape[0]
        centres = points.float() + 0.5
        pad_point = centres.new_zeros(b, 1, 3)
        pad_label = labels.new_full((b, 1), -1)
        centres = torch.cat([centres, pad_point], dim=1)
        labels = torch.cat([labels, pad_label], dim=1)[..., None]
        pe = self.pe_layer.encode(centres / self.image_size)
        not_a_point = self.not_a_point_embed.weight.float()
        negative, positive = (cast(nn.Embedding, e).weight.float() for e in self.point_embeddings)
        pe = torch.where(labels == -1, not_a_point, pe)
        pe = pe + (labels == 0) * negative + (labels == 1) * positive
        return pe

    def render_clicks(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Gaussian click maps ``(B, 2, 4G, 4G, 4G)`` float32: positive, negative.

        Each map is the maximum over its clicks of ``exp(-d^2 / (2 sigma^2))``, ``d`` the distance
        in mask-grid cells from the cell centre to the click (a voxel index of the model input;
        cell ``c`` covers voxels ``[c s, (c + 1) s)``, ``s = S / 4G``). Padding (-1) is ignored.
        """
        size = 4 * self.grid
        stride = self.image_size / size
        centres = (torch.arange(size, device=points.device, dtype=torch.float32) + 0.5) * stride
        # (B, N, 3, L): per-axis squared distance in cells
        d2 = ((points.float()[..., None] + 0.5 - centres) / stride).square()
        g = torch.exp(-d2 / (2.0 * self.click_map_sigma**2))
        maps = g[:, :, 0, :, None, None] * g[:, :, 1, None, :, None] * g[:, :, 2, None, None, :]
        out = []
        for value in (1, 0):
            chosen = (labels == value).float()[:, :, None, None, None]
            out.append((maps * chosen).amax(dim=1))
        return torch.stack(out, dim=1)

    def mask_input(
        self,
        mask_logits: torch.Tensor | None,
        points: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Click-map models: ``(B, 3, 4G, 4G, 4G)`` = previous logits (``None``: zeros) and the
        positive and negative click maps, in the module's dtype."""
        maps = self.render_clicks(points, labels)
        if mask_logits is None:
            mask_logits = maps.new_zeros(points.shape[0], 1, *maps.shape[2:])
        elif mask_logits.shape[-1] != maps.shape[-1]:  # fine-stage logits: back to 4G
            mask_logits = F.avg_pool3d(mask_logits, mask_logits.shape[-1] // maps.shape[-1])
        dense_in = torch.cat([mask_logits.to(maps.dtype), maps], dim=1)
        return dense_in.to(self.no_mask_embed.weight.dtype)

    def embed_mask(
        self,
        mask_logits: torch.Tensor | None,
        batch: int,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Dense embedding ``(B, D, G, G, G)`` of previous logits ``(B, 1, 4G, 4G, 4G)``.

        ``None`` gives the learned no-mask embedding, broadcast (upstream's ``masks=None``).
        With ``click_maps``, the click maps of ``points``/``labels`` are stacked with the
        logits (``None``: zeros) instead.
        """
        if self.click_maps:
            if points is None or labels is None:
                raise ValueError("this prompt encoder embeds click maps: pass points and labels")
            return self.mask_downscaling(self.mask_input(mask_logits, points, labels))
        if mask_logits is None:
            g = self.grid
            weight = self.no_mask_embed.weight
            return weight.view(1, -1, 1, 1, 1).expand(batch, -1, g, g, g)
        return self.mask_downscaling(mask_logits)

    def embed_all(
        self, points: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(sparse (B, N + 1, D), dense (B, D, G, G, G), fine (B, F, 4G, 4G, 4G) or None)``:
        :meth:`forward` plus the full-resolution embedding of the mask input for models with
        ``fine_channels`` (the click maps are rendered once for both)."""
        if self.fine_embed is None:
            sparse, dense = self(points, labels, mask_logits)
            return sparse, dense, None
        dtype = self.no_mask_embed.weight.dtype
        sparse = self.embed_points(points, labels).to(dtype)
        dense_in = self.mask_input(mask_logits, points, labels)
        return sparse, self.mask_downscaling(dense_in), self.fine_embed(dense_in)

    def forward(
        self, points: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sparse (B, N + 1, D), dense (B, D, G, G, G))`` in the module's dtype."""
        dtype = self.no_mask_embed.weight.dtype
        sparse = self.embed_points(points, labels).to(dtype)
        return sparse, self.embed_mask(mask_logits, points.shape[0], points, labels)
