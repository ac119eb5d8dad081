"""A model-free reference: scikit-image's random walker driven by the same clicks.

:class:`RandomWalkerBaseline` offers the model interface the protocols and the
:class:`~fastsam3d.interactive.session.Session` use (``cfg.image_size``, ``cfg.low_res_size``,
``encode``, ``decode``), so it sees exactly the region and the clicks a network sees. Its
"embedding" is the normalised region downsampled to the low-resolution grid (32^3); every
prediction solves the random-walker problem there with the positive clicks as foreground seeds
and the negative clicks plus the region's outer border as background seeds, and returns the
foreground probability as logits. It uses all clicks of the region (``prompting = "all"``):
seeds accumulate, as a user of such a tool expects.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..contract import RegionFrame


class RandomWalkerBaseline:
    """Random walker (Grady 2006) on the low-resolution region grid.

    Args:
        image_size: region side in voxels (the model frame's, 128).
        low_res_size: grid the walker runs on and the logits' size (32).
        beta: edge-weight sharpness (scikit-image's parameter; data are z-normalised).
    """

    name = "random-walker"
    prompting = "all"

    def __init__(self, image_size: int = 128, low_res_size: int = 32, beta: float = 130.0) -> None:
        self.cfg = RegionFrame(image_size, low_res_size)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.beta = beta

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, 1, S, S, S)`` -> ``(1, 1, L, L, L)`` block means."""
        factor = self.cfg.image_size // self.cfg.low_res_size
        return F.avg_pool3d(image.float(), factor)

    def decode(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(1, 1, L, L, L)`` from seeds at the clicks; IoU estimate fixed at 1."""
        from skimage.segmentation import random_walker

        n_low, size = self.cfg.low_res_size, self.cfg.image_size
        data = embedding[0, 0].cpu().numpy().astype(np.float64)
        markers = np.zeros(data.shape, dtype=np.int32)
        markers[[0, -1], :, :] = 2
        markers[:, [0, -1], :] = 2
        markers[:, :, [0, -1]] = 2
        pts = points[0].cpu().numpy()
        lab = labels[0].cpu().numpy()
        cells = np.clip(np.round((pts + 0.5) * n_low / size - 0.5), 0, n_low - 1).astype(int)
        for (i, j, k), label in zip(cells, lab, strict=True):
            if label == 0:
                markers[i, j, k] = 2
        for (i, j, k), label in zip(cells, lab, strict=True):
            if label == 1:
                markers[i, j, k] = 1
        if not (markers == 1).any():
            logits = np.full(data.shape, -10.0)
        else:
            with warnings.catch_warnings():  # tiny excursions outside [0, 1] are clipped below
                warnings.filterwarnings("ignore", message="The probability range is outside")
                prob = random_walker(
                    data, markers, beta=self.beta, mode="cg_j", return_full_prob=True, tol=1e-4
                )
            fg = np.clip(prob[0], 1e-6, 1 - 1e-6)
            logits = np.log(fg / (1 - fg))
        out = torch.from_numpy(logits.astype(np.float32))[None, None]
        return out, torch.ones(1, 1)
