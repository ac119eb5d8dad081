"""Click similarity: how much each token of the image embedding resembles the clicked tokens.

The lite model's ViT embedding separates large organs better than its decoder uses: the cosine
similarity of every token to the token under a click in an organ, thresholded, covers far more
of the organ than the decoder's own one-click mask, a compact blob (model card). The
decoder could learn this read-out (its output token attends to the clicked token), but did
not in thousands of steps. :func:`click_similarity` computes it directly
from the embedding and the clicks, and :class:`SimilarityPrompt` feeds it to the decoder
(image tokens, upscaled features and, weighted per mask, the logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def click_similarity(
    embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, image_size: int
) -> torch.Tensor:
    """Per token, the largest cosine similarity to a positive and to a negative click's token.

    A click's token vector is the trilinear interpolation of the unit-normalised embedding at
    the click (token centres at voxel ``(i + 0.5) S / G - 0.5``), normalised again.

    Args:
        embedding: ``(B or 1, D, G, G, G)`` image embedding (the ViT's, without features).
        points: ``(B, N, 3)`` voxel indices of the ``S^3`` model input, tensor axis order.
        labels: ``(B, N)``: 1 positive, 0 negative, -1 padding (ignored).
        image_size: ``S``.

    Returns:
        ``(B, 2, G, G, G)`` in ``[-1, 1]``, the embedding's dtype: channel 0 the maximum over
        positive clicks, channel 1 over negative clicks; 0 where a region has no click of
        that kind.
    """
    b = points.shape[0]
    g = embedding.shape[-1]
    unit = F.normalize(embedding.float(), dim=1).expand(b, -1, -1, -1, -1)
    cells = torch.arange(g, device=points.device, dtype=torch.float32)
    u = (points.float() + 0.5) * (g / image_size) - 0.5  # (B, N, 3) in token units
    u = u.clamp(0.0, g - 1.0)
    w = torch.relu(1.0 - (u[..., None] - cells).abs())  # (B, N, 3, G) per-axis weights
    weights = w[:, :, 0, :, None, None] * w[:, :, 1, None, :, None] * w[:, :, 2, None, None, :]
    query = F.normalize(torch.einsum("bnijk,bcijk->bnc", weights, unit), dim=-1)
    sim = torch.einsum("bnc,bcijk->bnijk", query, unit)  # (B, N, G, G, G)
    out = []
    for value in (1, 0):
        chosen = (labels == value)[:, :, None, None, None]
        best = torch.where(chosen, sim, torch.full_like(sim, -2.0)).amax(dim=1)
        out.append(torch.where(best > -1.5, best, torch.zeros_like(best)))
    return torch.stack(out, dim=1).to(embedding.dtype)


class SimilarityPrompt(nn.Module):
    """The click-similarity maps as prompts of the mask decoder, on three paths:

    - ``tokens``: 1x1 convolution to the image tokens' width, added before the two-way
      transformer (``G^3``);
    - ``upscaled``: trilinear to ``4G``, 1x1 convolution, added to the upscaled features before
      the hypernetwork read-out;
    - ``logits``: each mask token sets its own weights of the two maps and an offset
      (``GAIN`` times a linear function of the token), added to its logits, so a prompt can
      take the clicked tissue's extent directly (a large organ) or ignore it (a rib).

    Every path starts at zero, so a model gains them without changing its outputs until trained.

    Args:
        dim: width ``D`` of the decoder's tokens.
        fine_channels: width ``w4`` of the upscaled features at ``4G``.
        logits: add the ``logits`` path (else only the first two).
    """

    GAIN = 8.0
    """Scale of the per-mask weights: a zero-initialised linear layer trained at the model's
    learning rate would take thousands of steps to reach the weights (~10) that make a
    similarity of one to a few tenths decide a cell."""

    def __init__(self, dim: int, fine_channels: int, logits: bool = True) -> None:
        super().__init__()
        self.coarse = nn.Conv3d(2, dim, kernel_size=1)
        self.fine = nn.Conv3d(2, fine_channels, kernel_size=1)
        self.mix = nn.Linear(dim, 3) if logits else None
        self.zero_output()

    def zero_output(self) -> None:
        """Make every path exactly zero (the starting point: the decoder as without it)."""
        layers: list[nn.Conv3d | nn.Linear] = [self.coarse, self.fine]
        if self.mix is not None:
            layers.append(self.mix)
        for layer in layers:
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def tokens(self, similarity: torch.Tensor) -> torch.Tensor:
        """``(B, 2, G, G, G)`` -> ``(B, D, G, G, G)``, added to the image tokens."""
        return self.coarse(similarity)

    def upscaled(self, similarity: torch.Tensor) -> torch.Tensor:
        """``(B, 2, G, G, G)`` -> ``(B, w4, 4G, 4G, 4G)`` (trilinear, then 1x1), added to the
        upscaled features."""
        return self.fine(self._up(similarity))

    def logits(self, similarity: torch.Tensor, mask_tokens: torch.Tensor) -> torch.Tensor:
        """``(B, 2, G, G, G)`` and mask tokens ``(B, M, D)`` -> ``(B, M, 4G, 4G, 4G)``, added to
        the masks' logits: ``w_pos * positive + w_neg * negative + offset`` per mask."""
        if self.mix is None:
            raise RuntimeError("this similarity prompt has no logits path (similarity_logits)")
        up = self._up(similarity)  # (B, 2, L, L, L)
        mix = self.GAIN * self.mix(mask_tokens)  # (B, M, 3)
        weights, offset = mix[..., :2], mix[..., 2:]
        b, m = weights.shape[:2]
        out = (weights @ up.flatten(2)).view(b, m, *up.shape[2:])
        return out + offset[..., None, None]

    @staticmethod
    def _up(similarity: torch.Tensor) -> torch.Tensor:
        size = (4 * similarity.shape[-1],) * 3
        return F.interpolate(similarity, size=size, mode="trilinear", align_corners=False)
