"""A tiny deterministic 2D promptable model (``PromptableModel2D``) for the slice predictor.

It paints on its ``(m, m)`` low-resolution grid (cell ``u`` covers input pixels ``4u..4u+3``;
its centre is input pixel ``4u + 1.5``), +8 inside and -8 outside:

- ``paint="disk"``: cells whose centre lies within ``radius`` input pixels of a positive point;
  negative points erase cells within ``negative_radius``.
- ``paint="columns"`` / ``"rows"``: the whole column / row band of cells ``u - 1 .. u + 1``
  around the cell ``u`` holding each positive point (1D geometry, exact after resampling).
- a box paints the cells whose centres lie inside it; a mask prompt adds ``mask_logits > 0``.

``encoded`` and ``decoded`` record every call.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from fastsam3d.sam2d.contract import Preprocessing2D


class PaintingModel2D(nn.Module):
    def __init__(
        self,
        preprocessing: Preprocessing2D = "sam",
        input_size: int = 64,
        *,
        paint: Literal["disk", "columns", "rows"] = "disk",
        radius: float = 6.0,
        negative_radius: float = 4.0,
        supports_mask_prompt: bool | None = None,
    ) -> None:
        super().__init__()
        self._preprocessing = preprocessing
        self._size = input_size
        self.paint = paint
        self.radius = radius
        self.negative_radius = negative_radius
        if supports_mask_prompt is not None:
            self.supports_mask_prompt = supports_mask_prompt
        self.conv = nn.Conv2d(3, 256, kernel_size=16, stride=16)
        nn.init.constant_(self.conv.weight, 1e-3)
        nn.init.zeros_(self.conv.bias)
        self.encoded: list[torch.Tensor] = []
        self.decoded: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return f"painting-{self._preprocessing}"

    @property
    def input_size(self) -> int:
        return self._size

    @property
    def mask_size(self) -> int:
        return self._size // 4

    @property
    def preprocessing(self) -> Preprocessing2D:
        return self._preprocessing

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        assert image.shape == (1, 3, self._size, self._size), image.shape
        self.encoded.append(image.clone())
        return self.conv(image)

    def decode(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert embedding.shape == (1, 256, self._size // 16, self._size // 16)
        self.decoded.append(
            {
                "points": None if points is None else points.clone(),
                "labels": None if labels is None else labels.clone(),
                "boxes": None if boxes is None else boxes.clone(),
                "mask_logits": None if mask_logits is None else mask_logits.clone(),
                "multimask": multimask,
            }
        )
        m = self.mask_size
        centre = torch.arange(m, dtype=torch.float32) * 4 + 1.5  # input pixels
        cy, cx = torch.meshgrid(centre, centre, indexing="ij")
        cell = torch.arange(m)
        fg = torch.zeros(m, m, dtype=torch.bool)
        if mask_logits is not None:
            assert mask_logits.shape == (1, 1, m, m)
            fg |= mask_logits[0, 0] > 0
        if boxes is not None:
            x0, y0, x1, y1 = boxes[0].tolist()
            fg |= (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
        if points is not None:
            assert labels is not None
            for (x, y), label in zip(points[0].tolist(), labels[0].tolist(), strict=True):
                if label != 1:
                    continue
                if self.paint == "disk":
                    fg |= (cx - x) ** 2 + (cy - y) ** 2 <= self.radius**2
                else:
                    u = int((x if self.paint == "columns" else y) + 0.5) // 4
                    band = (cell >= u - 1) & (cell <= u + 1)
                    fg |= band[None, :] if self.paint == "columns" else band[:, None]
            for (x, y), label in zip(points[0].tolist(), labels[0].tolist(), strict=True):
                if label == 0:
                    fg &= (cx - x) ** 2 + (cy - y) ** 2 > self.negative_radius**2
        logits = torch.where(fg, 8.0, -8.0)[None, None]
        if not multimask:
            return logits, torch.tensor([[0.9]])
        empty = torch.full_like(logits, -8.0)
        return torch.cat([empty, logits, empty], dim=1), torch.tensor([[0.1, 0.9, 0.5]])
