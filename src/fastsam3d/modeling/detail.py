"""Image detail for the mask decoder: statistics of the input on the logit grid and a refiner.

The ViT sees the volume in 16^3 patches; its embedding cannot say where inside a patch an edge
lies. :func:`image_detail` summarises every ``f^3`` block of the normalised input (``f = S / 4G``,
4 for 128^3 inputs) by its mean, maximum, minimum and standard deviation, on the ``4G^3`` grid
of the low-resolution logits. :func:`pack` folds that grid into extra channels of the ``G^3``
embedding (space to depth), so the embedding stays one tensor that sessions cache and runtimes
export unchanged; :func:`unpack` undoes it. :class:`DetailRefiner` adds a correction to each
mask's logits from ``[logits, detail]`` with dilated convolutions (receptive field 15 cells,
60 mm at 1.5 mm voxels); its last layer starts at zero, so a model gains it without changing
its outputs until trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_STATS = 4


def image_detail(image: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, 1, S, S, S)`` -> ``(B, 4, S/f, S/f, S/f)``: block mean, max, min, std."""
    mean = F.avg_pool3d(image, factor)
    square = F.avg_pool3d(image * image, factor)
    high = F.max_pool3d(image, factor)
    low = -F.max_pool3d(-image, factor)
    std = (square - mean * mean).clamp_min(0).sqrt()
    return torch.cat([mean, high, low, std], dim=1)


def pack(detail: torch.Tensor, factor: int) -> torch.Tensor:
    """Space to depth: ``(B, C, L, L, L)`` -> ``(B, C f^3, L/f, L/f, L/f)``."""
    b, c, l1, l2, l3 = detail.shape
    f = factor
    x = detail.view(b, c, l1 // f, f, l2 // f, f, l3 // f, f)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * f**3, l1 // f, l2 // f, l3 // f)


def unpack(packed: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of :func:`pack`."""
    b, cf, g1, g2, g3 = packed.shape
    f = factor
    c = cf // f**3
    x = packed.view(b, c, f, f, f, g1, g2, g3).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, g1 * f, g2 * f, g3 * f)


class DetailRefiner(nn.Module):
    """``logits (B, M, L, L, L)`` + ``detail (B or 1, 4, L, L, L)`` -> corrected logits."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 1 + N_STATS
        for dilation in (1, 2, 4):
            layers += [nn.Conv3d(width, channels, 3, padding=dilation, dilation=dilation)]
            layers += [nn.GELU()]
            width = channels
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv3d(channels, 1, 1)
        self.zero_output()

    def zero_output(self) -> None:
        """Make the correction exactly zero (the refiner's starting point)."""
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        b, m, *grid = logits.shape
        flat = logits.reshape(b * m, 1, *grid)
        stats = detail.expand(b, -1, -1, -1, -1).repeat_interleave(m, dim=0)
        correction = self.out(self.body(torch.cat([flat, stats.to(flat.dtype)], dim=1)))
        return logits + correction.view(b, m, *grid)
