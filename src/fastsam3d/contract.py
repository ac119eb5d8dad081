"""What sessions, the server, evaluation and the runtimes need from a model.

:class:`~fastsam3d.modeling.sam3d.Sam3D`, the runtimes' wrappers (oneDNN, ONNX Runtime,
OpenVINO) and model-free baselines all satisfy :class:`PromptableModel`; code above the
modeling layer takes this type instead of a concrete class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .config import InputConfig, ModelConfig


class RegionSizes(Protocol):
    """The model frame: a region of ``image_size^3`` voxels, logits of ``low_res_size^3``, and
    the input contract (spacing, normalisation, threshold)."""

    @property
    def image_size(self) -> int: ...

    @property
    def low_res_size(self) -> int: ...

    @property
    def input(self) -> InputConfig: ...


@dataclass(frozen=True)
class RegionFrame:
    """:class:`RegionSizes` of a model that has no :class:`~fastsam3d.config.ModelConfig`
    (baselines, test doubles)."""

    image_size: int = 128
    low_res_size: int = 32
    input: InputConfig = field(default_factory=InputConfig)


@runtime_checkable
class PromptableModel(Protocol):
    """``encode`` once per region, ``decode`` per click.

    Shapes: ``encode(image (B, 1, S, S, S)) -> embedding``; ``decode(embedding, points
    (B, N, 3) in region voxel indices, labels (B, N) 1/0, mask_logits (B, 1, L, L, L) or None)
    -> (logits (B, M, L, L, L), iou (B, M))`` with ``S = cfg.image_size`` and
    ``L = cfg.low_res_size``.
    """

    @property
    def cfg(self) -> RegionSizes: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode(self, image: torch.Tensor) -> torch.Tensor: ...

    def decode(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class ConfiguredModel(PromptableModel, Protocol):
    """A :class:`PromptableModel` with its whole :class:`~fastsam3d.config.ModelConfig` (the
    network and its runtimes' wrappers, not the baselines): what needs to know the encoder's
    or the prompt encoder's widths takes this."""

    @property
    def cfg(self) -> ModelConfig: ...
