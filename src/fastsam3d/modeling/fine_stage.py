"""The decoder's fine stage: mask logits at ``S/2`` instead of ``S/4``.

SAM's decoder (and the lite family's, up to here) returns logits on a ``4G`` grid: 32^3 cells of
6 mm for a 128^3 region at 1.5 mm. A structure a few millimetres thick (a rib, the pancreas, a
small vessel) covers a fraction of each cell it crosses, and trilinear reading draws it only
from well-calibrated logits in those cells. With the true mask's cell shares as logits
(``python -m fastsam3d.train.output_ceiling``), a 32^3 grid allows a mean Dice of 0.808 on the
held-out CT's 31 structures and 0.902 on ten of the training CT's; the fine stage adds
a third upscaling step to ``8G`` (3 mm cells: 0.897 and 0.955):

- :class:`~fastsam3d.modeling.image_encoder.FineFeatures` (encoder side, once per region):
  ``(B, 1, S, S, S)`` image -> ``(B, C, S/2, S/2, S/2)``: a stride-2 ``2^3`` convolution and
  a residual ``3^3`` one;
- :class:`FineStage` (decoder side, per click): the ``4G`` upscaled decoder features
  ``(B, w4, 4G, ...)`` -> a ``2^3`` transposed convolution to ``(B, C, 8G, ...)`` plus the image's
  ``S/2`` features -> dot product with one hypernetwork vector per mask token, added to the
  ``4G`` logits upsampled (trilinear, ``align_corners=False``, as the logits are read).

The hypernetworks' last layers start at zero, so a trained model that gains the stage gives the
same masks (up to the resampling of the logits) until the stage is trained.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .detail import unpack
from .layers import MLP


def sub_cells(packed: torch.Tensor) -> torch.Tensor:
    """``(B, C * 8^3, G, G, G)`` (``pack(features, 8)``, as ``encode`` stores the ``S/2``
    features) -> ``(B, C * 8, 4G, 4G, 4G)``: the ``8G`` features with each ``4G`` cell's
    ``2^3`` sub-cells in channels ``(c, sub)`` (``pack(features, 2)``), in one copy."""
    b, c512, g1, g2, g3 = packed.shape
    c = c512 // 512
    # packed offset u = 2 q + r along each axis: q the 4G cell in the G cell, r the sub-cell
    x = packed.view(b, c, 4, 2, 4, 2, 4, 2, g1, g2, g3)
    x = x.permute(0, 1, 3, 5, 7, 8, 2, 9, 4, 10, 6)  # (b, c, r1, r2, r3, g1, q1, g2, q2, g3, q3)
    return x.reshape(b, c * 8, 4 * g1, 4 * g2, 4 * g3)


class FineStage(nn.Module):
    """``4G`` logits, decoder features and mask tokens -> ``8G`` logits."""

    def __init__(self, token_dim: int, in_channels: int, channels: int, num_masks: int) -> None:
        super().__init__()
        # a 2^3 stride-2 transposed convolution, written as a 1x1 convolution to the 8
        # sub-cells' channels and a depth-to-space (the same map; several times faster on CPU)
        self.up = nn.Conv3d(in_channels, channels * 8, kernel_size=1)
        self.act = nn.GELU()
        self.hypernetworks = nn.ModuleList(
            MLP(token_dim, token_dim, channels, 3) for _ in range(num_masks)
        )
        self.zero_output()

    def zero_output(self) -> None:
        """Make the correction exactly zero (the stage's starting point)."""
        for mlp in self.hypernetworks:
            last = cast(nn.Linear, cast(MLP, mlp).layers[-1])
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(
        self,
        logits: torch.Tensor,
        upscaled: torch.Tensor,
        features: torch.Tensor,
        tokens: torch.Tensor,
        which: range,
    ) -> torch.Tensor:
        """Args:
            logits: ``(B, M, 4G, 4G, 4G)`` the masks ``which`` (indices of the mask tokens).
            upscaled: ``(B, w4, 4G, 4G, 4G)`` the decoder's last upscaled features.
            features: ``(B or 1, C * 8, 4G, 4G, 4G)`` the image's ``S/2`` features, each ``4G``
                cell's ``2^3`` sub-cells in channels (:func:`sub_cells`).
            tokens: ``(B, M, D)`` the mask tokens' outputs of the transformer, for ``which``.

        Returns:
            ``(B, M, 8G, 8G, 8G)`` logits.
        """
        # computed on the 4G grid with the 8 sub-cells of each cell in channels (c, sub): the
        # same map as at 8G without moving the wide tensors through a depth-to-space, and the
        # 1x1 convolution as a matmul (a plain layout: oneDNN's blocked one makes the
        # broadcast add and the reshapes copy)
        b, _, *cells = upscaled.shape
        weight = self.up.weight.flatten(1)  # (C * 8, w4)
        assert self.up.bias is not None
        bias = self.up.bias[None, :, None].expand(b, -1, upscaled[0, 0].numel())
        x = torch.baddbmm(bias, weight.expand(b, -1, -1), upscaled.flatten(2))
        x = self.act(x + features.to(x.dtype).flatten(2))  # (B, C * 8, (4G)^3)
        hyper = torch.stack(
            [self.hypernetworks[m](tokens[:, i]) for i, m in enumerate(which)], dim=1
        )
        correction = (hyper @ x.view(b, hyper.shape[-1], -1)).view(b, -1, *cells)
        correction = unpack(correction, 2)  # (B, M * 8, 4G^3) -> (B, M, 8G^3)
        spatial = correction.shape[2:]
        coarse = F.interpolate(logits, size=spatial, mode="trilinear", align_corners=False)
        return coarse + correction
