"""Feature refiner: image features correct a mask decoded from the ViT's embedding alone.

With ``DecoderConfig.refine_with_features`` the decoder keeps the encoder's high-resolution
features (and the full-resolution prompt) out of the upscaling: each mask is first decoded from
the ViT's embedding and the dense prompt only, then :class:`FeatureRefiner` adds a correction
computed from ``[mask logits, features, fine prompt]`` on the logit grid. Its last layer starts
at zero, so training begins with the ViT's masks and the features can only refine them; when the
features are added before the hypernetwork product instead, they carry the whole prediction and
the decoder stops reading the ViT (experiments e03-e11).

Frame: everything lives on the ``4G^3`` low-resolution logit grid of the model input
(``4 x 4 x 4`` input voxels per cell for ``128^3`` inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureRefiner(nn.Module):
    """``logits (B, M, L, L, L)`` + features -> corrected logits.

    Per mask: a pointwise projection of ``[logit, f4, f8 upsampled x2, fine]`` to ``width``
    channels, one ``3^3`` convolution and a pointwise output that starts at zero (the features
    bring their own context from the stem; on CPU, depthwise and dilated 3D convolutions train
    slower than this full one at width 8). The features' share of the projection is computed
    once per image and shared by its masks.
    """

    def __init__(self, feature_channels: int, fine_channels: int, width: int = 8) -> None:
        super().__init__()
        self.from_logit = nn.Conv3d(1, width, 1)
        self.from_features = nn.Conv3d(feature_channels, width, 1, bias=False)
        self.from_fine = nn.Conv3d(fine_channels, width, 1, bias=False) if fine_channels else None
        self.spatial = nn.Sequential(nn.GELU(), nn.Conv3d(width, width, 3, padding=1), nn.GELU())
        self.out = nn.Conv3d(width, 1, 1)
        self.zero_output()

    def zero_output(self) -> None:
        """Make the correction exactly zero (the refiner's starting point)."""
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        logits: torch.Tensor,
        features: list[torch.Tensor],
        fine: torch.Tensor | None,
    ) -> torch.Tensor:
        """Corrected logits.

        Args:
            logits: ``(B, M, L, L, L)`` masks decoded from the ViT's embedding.
            features: ``[(B or 1, f8, L/2, ...), (B or 1, f4, L, ...)]`` encoder features.
            fine: ``(B, F, L, L, L)`` full-resolution prompt embedding, or ``None``.

        Returns:
            ``(B, M, L, L, L)``.
        """
        b, m, *grid = logits.shape
        f8, f4 = features
        coarse_features = F.interpolate(f8, scale_factor=2.0, mode="nearest")
        image = self.from_features(torch.cat([f4, coarse_features], dim=1))
        shared = image.expand(b, -1, -1, -1, -1)
        if (fine is None) != (self.from_fine is None):
            raise ValueError(
                "pass the fine prompt embedding exactly when the refiner was built for one"
            )
        if fine is not None and self.from_fine is not None:
            shared = shared + self.from_fine(fine)
        flat = logits.reshape(b * m, 1, *grid)
        hidden = self.from_logit(flat) + shared.repeat_interleave(m, dim=0)
        correction = self.out(self.spatial(hidden))
        return logits + correction.view(b, m, *grid)
