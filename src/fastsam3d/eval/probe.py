"""Does a model look at the image? The image-dependence probe.

For each structure, one click at the centre of the structure (the centre simulator's first
click) is decoded twice in the same region: once from the real image's embedding and once from
the embedding of a constant image (every voxel 0 after normalisation: no anatomy at all). A model
that draws "a blob around the click" gives the same mask for both; a model that segments what it
sees does not. The score of a structure is the fraction of voxels that change,
``min(1, |A xor B| / |A|)`` (``A`` the real image's mask on the model's ``S^3`` region; 1 means
the two masks have nothing in common, and a blank-image mask many times larger than ``A`` counts
no more than that).

``replace`` chooses what is taken from the constant image: everything ``encode`` returns
(``"all"``, the default), only the ViT's embedding (``"vit"``) or only the high-resolution
features handed to the decoder (``"features"``). The part-wise forms show which path a model
with both actually uses (a model can look at the image through its features alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..contract import ConfiguredModel
from ..data.frame import FrameSpec, normalize_roi, resample_to_roi, roi_around
from ..data.volume import Volume
from ..errors import InputError
from ..modeling.sam3d import upsample_logits
from .clicks import CenterClicker, deepest_voxel

PARTS = ("all", "vit", "features")


@dataclass(frozen=True)
class ClickRegion:
    """One positive click in a structure and the model-frame region around it.

    ``image``: ``(S, S, S)`` normalised region; ``inside``: ``(S, S, S)`` bool, the structure
    resampled into the region; ``point``: ``(3,)`` the click in region voxel coordinates.
    """

    image: torch.Tensor
    inside: torch.Tensor
    point: np.ndarray


def deepest_click_region(volume: Volume, truth: np.ndarray, frame: FrameSpec) -> ClickRegion:
    """The region a first click at ``truth``'s deepest voxel opens (``truth``: ``(I, J, K)``
    bool on ``volume``'s grid), as the probes of the training scripts use it."""
    return click_region(volume, truth, frame, deepest_voxel(truth, volume.spacing))


def click_region(
    volume: Volume, truth: np.ndarray, frame: FrameSpec, click: np.ndarray
) -> ClickRegion:
    """The region a first click at ``click`` (``(3,)`` voxel index of ``volume``) opens, with
    ``truth`` (``(I, J, K)`` bool on ``volume``'s grid) resampled into it."""
    roi = roi_around(volume, click, frame)
    image = normalize_roi(resample_to_roi(volume, roi), frame.normalization)
    inside = resample_to_roi(Volume(truth.astype(np.float32), volume.affine), roi) > 0.5
    point = (roi.roi_from_volume(volume) @ np.r_[click, 1.0])[:3]
    return ClickRegion(image, inside, point)


@dataclass(frozen=True)
class ProbeResult:
    """One structure: ``changed`` = min(1, |A xor B| / |A|); ``voxels`` = |A| (model-frame
    voxels)."""

    structure: str
    changed: float
    voxels: int


def image_dependence(
    model: ConfiguredModel,
    volume: Volume,
    structures: Sequence[tuple[str, np.ndarray]],
    frame: FrameSpec | None = None,
    seed: int = 0,
    replace: str = "all",
) -> list[ProbeResult]:
    """The probe on ``structures`` (``(name, (I, J, K) bool mask)``) of one volume.

    Args:
        model: a :class:`~fastsam3d.Sam3D` or a prepared runtime (``encode``/``decode``).
        volume: the image.
        structures: ground-truth masks on the volume's grid (they place the click).
        frame: model frame (default: the model's input size, 1.5 mm, z-normalised).
        seed: seed of the click choice among equally central voxels.
        replace: ``"all"``, ``"vit"`` or ``"features"``: the part of the encoder's output
            taken from the constant image (the parts need a :class:`~fastsam3d.Sam3D` with
            high-resolution features).
    """
    if replace not in PARTS:
        raise InputError(f"replace={replace!r}: expected one of {', '.join(PARTS)}")
    if replace != "all" and not model.cfg.encoder.feature_channels:
        raise InputError(
            f"replace={replace!r} needs a model with high-resolution decoder features "
            "(EncoderConfig.feature_channels); this one has none: use replace='all'"
        )
    vit_channels = model.cfg.prompt.embed_dim
    frame = frame or FrameSpec.for_model(model.cfg)
    size, low = frame.size, model.cfg.low_res_size
    device, dtype = model.device, model.dtype
    rng = np.random.default_rng(seed)
    results = []
    for name, gt in structures:
        click = CenterClicker().next_click(np.zeros_like(gt), gt, rng, volume.spacing, 0)
        if click is None:
            continue
        roi = roi_around(volume, np.asarray(click.index, dtype=np.float64), frame)
        to_roi = roi.roi_from_volume(volume)
        point = to_roi[:3, :3] @ np.asarray(click.index, dtype=np.float64) + to_roi[:3, 3]
        image = normalize_roi(resample_to_roi(volume, roi), frame.normalization)
        constant = torch.zeros_like(image)
        masks = []
        with torch.inference_mode():
            real_embedding = model.encode(image[None, None].to(device=device, dtype=dtype))
            blank_embedding = model.encode(constant[None, None].to(device=device, dtype=dtype))
            blank_embedding = _mix(real_embedding, blank_embedding, replace, vit_channels)
            for embedding in (real_embedding, blank_embedding):
                logits, _ = model.decode(
                    embedding,
                    torch.from_numpy(point[None, None].astype(np.float32)).to(device),
                    torch.ones(1, 1, dtype=torch.long, device=device),
                    mask_logits=torch.zeros(1, 1, low, low, low, device=device, dtype=dtype),
                )
                masks.append((upsample_logits(logits.float(), size)[0, 0] > 0).cpu().numpy())
        real, blank = masks
        voxels = int(real.sum())
        changed = min(1.0, float((real ^ blank).sum()) / max(voxels, 1))
        results.append(ProbeResult(name, changed, voxels))
    return results


def _mix(real: torch.Tensor, blank: torch.Tensor, replace: str, vit_channels: int) -> torch.Tensor:
    """``encode`` output ``(1, C, G, G, G)`` with ``replace`` taken from ``blank`` (the ViT's
    embedding is the first ``vit_channels`` channels, the packed features the rest)."""
    if replace == "all":
        return blank
    if replace == "vit":
        return torch.cat([blank[:, :vit_channels], real[:, vit_channels:]], dim=1)
    return torch.cat([real[:, :vit_channels], blank[:, vit_channels:]], dim=1)
