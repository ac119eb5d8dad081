"""What the slice-wise predictor, evaluation and benchmarks need from a 2D promptable model.

Frames: a slice is prepared as the model's authors do (intensity normalisation, resize of the
longest side to ``input_size``, zero padding at the bottom/right) into ``(B, 3, S, S)`` with
``S = input_size``; prompts are in that padded input's pixel coordinates, ``(x, y)`` =
(column, row). Masks come back as low-resolution logits ``(B, M, m, m)`` with
``m = mask_size`` (``S / 4``), which the caller upsamples to ``S``, crops the padding from and
resizes to the slice's size; foreground where the logit is > 0.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch

Preprocessing2D = Literal["sam", "medsam", "sam-med2d"]
"""How a slice becomes the model's input, as each model's authors do it:

- ``sam``: 8-bit RGB (the slice windowed to 0-255, repeated on 3 channels), longest side resized
  to ``input_size``, per-channel ImageNet mean/std normalisation, zero padding (SAM ViT-B,
  MobileSAM, TinySAM).
- ``medsam``: min-max to [0, 1] after clipping to the 0.5/99.5 intensity percentiles (CT may be
  windowed first), 3 channels, resized (not padded) to ``input_size`` x ``input_size``.
- ``sam-med2d``: as ``sam`` but resized to ``input_size`` = 256 x 256 without keeping the aspect
  ratio, with SAM-Med2D's normalisation.
(The predictor implements these; this literal names them.)
"""


@runtime_checkable
class PromptableModel2D(Protocol):
    """``encode`` once per slice, ``decode`` per prompt."""

    @property
    def name(self) -> str: ...

    @property
    def input_size(self) -> int:
        """Side ``S`` of the square model input (1024, or 256 for SAM-Med2D)."""
        ...

    @property
    def mask_size(self) -> int:
        """Side ``m`` of the low-resolution logits and of the mask prompt (``S / 4``)."""
        ...

    @property
    def preprocessing(self) -> Preprocessing2D: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` prepared input -> image embedding ``(B, 256, S/16, S/16)``."""
        ...

    def decode(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits ``(B, M, m, m)`` and IoU estimates ``(B, M)``.

        ``points`` ``(B, N, 2)`` (x, y) in input pixels with ``labels`` ``(B, N)`` (1
        foreground, 0 background); ``boxes`` ``(B, 4)`` (x0, y0, x1, y1); ``mask_logits``
        ``(B, 1, m, m)`` the previous prediction; ``M`` is 3 with ``multimask`` else 1.
        """
        ...
