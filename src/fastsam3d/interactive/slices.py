"""Slice-by-slice segmentation of a volume with a 2D SAM-family model (issue 16).

The paper compares FastSAM3D with 2D SAMs (SAM ViT-B, MedSAM, MobileSAM, TinySAM, SAM-Med2D)
applied slice by slice; :class:`SliceSession` is that predictor, for any
:class:`~fastsam3d.sam2d.contract.PromptableModel2D`.

Frames:

- **Voxel index** ``(i, j, k)`` of the volume (:mod:`fastsam3d.data.volume`). Slices are taken
  along ``axis`` (default 2, axial for RAS-ish scans); slice ``s`` is the plane
  ``index[axis] == s``. The other two axes in increasing order are the slice's in-plane axes
  ``(a, b)``: ``(i, j)`` for axis 2, ``(i, k)`` for axis 1, ``(j, k)`` for axis 0.
- **Slice image** ``(H, W) = (n_b, n_a)``: column ``x = a``, row ``y = b``, no flips. This is
  how ITK/DICOM-read axial images are stored (column = ``i``, row = ``j``) and so how the 2D
  models saw CT/MR slices in training.
- **Model input** ``(1, 3, S, S)``, ``S = model.input_size``: the slice resized to
  ``(h, w)`` (``sam``: longest side ``S``, then zero padding at the bottom/right; ``medsam``
  and ``sam-med2d``: ``(S, S)``). Prompts are ``(x, y)`` input pixels, pixel centres at
  integers. A slice point maps through the half-pixel-centred geometry of the resize:
  ``x_in = (x + 0.5) * w / W - 0.5``, ``y_in = (y + 0.5) * h / H - 0.5`` (SAM's own
  ``apply_coords`` scales ``x * w / W``: up to half an input pixel away; SAM-Med2D's
  nearest-neighbour resize samples source pixel ``floor(x_in * W / S)``, within half an input
  pixel of this mapping).
- **Masks**: the model's low-resolution logits ``(1, 1, m, m)`` are upsampled (bilinear) to
  ``S``, cropped to ``(h, w)``, resized (bilinear) to ``(H, W)`` and thresholded at 0 (the
  contract's rule; SAM's ``postprocess_masks``).

Preprocessing, as each model's authors do it (:func:`prepare_slice`):

1. Intensities to 8 bits (all modes; MedSAM's ``pre_CT_MR.py``, bounds computed once per
   volume): CT is clipped to a window, default level 40 / width 400 HU (soft tissue, MedSAM's
   default), MR to the 0.5 / 99.5 percentiles of the volume's voxels > 0 (voxels equal to 0
   stay 0); then scaled to 0-255 and truncated to integers as ``np.uint8`` does. (MedSAM
   scales by the clipped volume's own min/max, which equal the bounds whenever the volume
   spans them.) :class:`SliceIntensity` configures this.
2. ``sam`` (SAM's ``SamPredictor.set_image`` and ``Sam.preprocess``; MobileSAM, TinySAM):
   grey to 3 channels; ``ResizeLongestSide``: longest side ``S``, the other
   ``int(n * S / max(H, W) + 0.5)``, bilinear (torchvision resizes the PIL image; torch's
   antialiased bilinear matches it) and back to 8 bits; ``(v - mean) / std`` per channel with
   the ImageNet mean ``(123.675, 116.28, 103.53)`` and std ``(58.395, 57.12, 57.375)`` on
   0-255; zero padding at the bottom/right after normalising.
3. ``medsam`` (MedSAM's ``MedSAM_Inference.py``): 8-bit grey to 3 channels; scikit-image
   ``resize`` to ``(S, S)`` with ``order=3`` (cubic spline), ``preserve_range``,
   ``anti_aliasing``; to ``uint8`` (clipped to 0-255 first: a plain cast wraps cubic
   overshoots); min-max over the image to ``[0, 1]`` (range floored at 1e-8); no mean/std
   (MedSAM calls the image encoder directly, skipping ``Sam.preprocess``); no padding.
4. ``sam-med2d`` (SAM-Med2D's ``SammedPredictor.set_image``): 8-bit grey to 3 channels;
   ``(v - mean) / std`` with SAM's mean/std; resized to ``(S, S)`` (256) nearest-neighbour
   (``cv2.INTER_NEAREST``, which torch's ``"nearest"`` reproduces), aspect ratio not kept.
   (Their ``test.py`` instead pads slices smaller than 256 on both sides, centred.)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..data.volume import Volume, check_voxels
from ..errors import InputError
from ..sam2d.contract import Preprocessing2D, PromptableModel2D

Modality = Literal["auto", "ct", "mr"]
Multimask = Literal["auto", "on", "off"]
Seed = Literal["auto", "box", "mask", "box+mask"]

PIXEL_MEAN = (123.675, 116.28, 103.53)
"""SAM's per-channel (RGB) mean on 0-255, also SAM-Med2D's."""
PIXEL_STD = (58.395, 57.12, 57.375)
"""SAM's per-channel (RGB) standard deviation on 0-255, also SAM-Med2D's."""
PREPROCESSING: tuple[Preprocessing2D, ...] = ("sam", "medsam", "sam-med2d")


# -- intensities --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceIntensity:
    """How voxel values become 8-bit grey levels.

    Attributes:
        modality: ``"ct"`` (window), ``"mr"`` (percentiles), or ``"auto"``: the DICOM modality
            when the volume has one, else CT when the volume's minimum is below -500 (air in
            HU), else MR.
        window: CT ``(level, width)`` in HU; default soft tissue ``(40, 400)``.
        percentiles: MR lower/upper percentiles of the voxels > 0.
    """

    modality: Modality = "auto"
    window: tuple[float, float] = (40.0, 400.0)
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.modality not in ("auto", "ct", "mr"):
            raise InputError(f"modality must be 'auto', 'ct' or 'mr', got {self.modality!r}")
        if not self.window[1] > 0:
            raise InputError(f"the CT window width must be positive, got {self.window}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {lo, hi}")


@dataclass(frozen=True)
class IntensityBounds:
    """Values ``low``/``high`` map to 0/255; ``keep_zero``: voxels equal to 0 stay 0 (MR)."""

    low: float
    high: float
    keep_zero: bool
    modality: Literal["ct", "mr"]


def intensity_bounds(volume: Volume, intensity: SliceIntensity) -> IntensityBounds:
    """The 8-bit mapping of ``volume`` (once per volume, as MedSAM's preprocessing)."""
    array = volume.array
    modality = intensity.modality
    if modality == "auto":
        tag = (volume.source.metadata.get("modality", "") if volume.source else "").upper()
        if tag in ("CT", "MR"):
            modality = "ct" if tag == "CT" else "mr"
        else:
            modality = "ct" if array.size and float(array.min()) < -500 else "mr"
    if modality == "ct":
        level, width = intensity.window
        return IntensityBounds(level - width / 2, level + width / 2, False, "ct")
    positive = array[array > 0]
    values = positive if positive.size else array.reshape(-1)
    low, high = np.percentile(values.astype(np.float64), intensity.percentiles)
    return IntensityBounds(float(low), float(high), True, "mr")


def to_uint8(values: np.ndarray, bounds: IntensityBounds) -> np.ndarray:
    """Clip to the bounds, scale to 0-255 and truncate (as ``np.uint8`` does); same shape."""
    x = np.clip(values.astype(np.float64), bounds.low, bounds.high)
    scaled = np.floor((x - bounds.low) / max(bounds.high - bounds.low, 1e-8) * 255.0)
    if bounds.keep_zero:
        scaled[values == 0] = 0
    return np.clip(scaled, 0, 255).astype(np.uint8)


# -- geometry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceGeometry:
    """A slice of ``(height, width)`` pixels in a model input of side ``size``: resized to
    ``(resized_height, resized_width)`` at the top-left, the rest padding."""

    height: int
    width: int
    size: int
    resized_height: int
    resized_width: int

    @classmethod
    def of(cls, height: int, width: int, size: int, mode: Preprocessing2D) -> SliceGeometry:
        """The geometry a preprocessing mode gives a ``(height, width)`` slice."""
        if mode == "sam":  # ResizeLongestSide.get_preprocess_shape
            scale = size / max(height, width)
            return cls(height, width, size, int(height * scale + 0.5), int(width * scale + 0.5))
        return cls(height, width, size, size, size)

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        """``(N, 2)`` slice pixels ``(x, y)`` -> ``(N, 2)`` input pixels (centres aligned)."""
        scale = np.array([self.resized_width / self.width, self.resized_height / self.height])
        out: np.ndarray = (np.asarray(xy, dtype=np.float64) + 0.5) * scale - 0.5
        return out

    def to_slice(self, xy: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_input`."""
        scale = np.array([self.resized_width / self.width, self.resized_height / self.height])
        out: np.ndarray = (np.asarray(xy, dtype=np.float64) + 0.5) / scale - 0.5
        return out


def in_plane_axes(axis: int) -> tuple[int, int]:
    """The slice's ``(a, b)`` voxel axes (image column, row) for slices along ``axis``."""
    a, b = (n for n in range(3) if n != axis)
    return a, b


def slice_image(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The ``(H, W) = (n_b, n_a)`` image of slice ``index`` along ``axis`` (row = b, col = a)."""
    return np.take(array, index, axis=axis).T


# -- model input and output ---------------------------------------------------------------------


def _channels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(PIXEL_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return mean, std


def prepare_slice(
    image: np.ndarray, mode: Preprocessing2D, geometry: SliceGeometry
) -> torch.Tensor:
    """``(H, W)`` uint8 slice -> ``(1, 3, S, S)`` float32 model input (see the module notes)."""
    grey = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    size, h, w = geometry.size, geometry.resized_height, geometry.resized_width
    if mode == "sam":
        x = F.interpolate(grey, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255).expand(1, 3, h, w)
        mean, std = _channels(x)
        return F.pad((x - mean) / std, (0, size - w, 0, size - h))
    if mode == "medsam":
        from skimage.transform import resize

        resized = resize(
            image.astype(np.float64),
            (size, size),
            order=3,
            preserve_range=True,
            anti_aliasing=True,
        )
        levels = np.clip(resized, 0, 255).astype(np.uint8).astype(np.float32)
        span = max(float(levels.max() - levels.min()), 1e-8)
        unit = torch.from_numpy((levels - levels.min()) / span)
        return unit[None, None].expand(1, 3, size, size).contiguous()
    if mode == "sam-med2d":
        x = grey.expand(1, 3, *grey.shape[2:])
        mean, std = _channels(x)
        return F.interpolate((x - mean) / std, size=(size, size), mode="nearest")
    raise InputError(f"preprocessing must be one of {PREPROCESSING}, got {mode!r}")


def logits_to_slice(logits: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
    """``(1, 1, m, m)`` low-resolution logits -> ``(H, W)`` bool slice mask (logit > 0)."""
    size = geometry.size
    up = F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False)
    up = up[..., : geometry.resized_height, : geometry.resized_width]
    out = F.interpolate(
        up, size=(geometry.height, geometry.width), mode="bilinear", align_corners=False
    )
    mask: np.ndarray = (out[0, 0] > 0).cpu().numpy()
    return mask


# -- the session --------------------------------------------------------------------------------


@dataclass
class _SliceState:
    """Prompts of one slice in slice pixels ``(x, y) = (a, b)`` and its last logits."""

    clicks: list[tuple[float, float, bool]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    user_box: bool = False
    boxes_drawn: int = 0
    logits: torch.Tensor | None = None

    @property
    def prompted_by_user(self) -> bool:
        return bool(self.clicks) or self.user_box


@dataclass(frozen=True)
class SliceResult:
    """The outcome of one slice prediction.

    Attributes:
        slice_index: the slice (index along the session's axis).
        plane: ``(n_a, n_b)`` bool mask of the slice in the volume's index order (a copy).
        logits: ``(1, 1, m, m)`` low-resolution logits (the slice's next mask prompt).
        iou: the model's IoU estimate.
        encoded: whether the slice's embedding was computed for this prediction.
        timings_ms: ``preprocess`` and ``encode`` (0 when cached), ``decode``, ``map``.
    """

    slice_index: int
    plane: np.ndarray
    logits: torch.Tensor
    iou: float
    encoded: bool
    timings_ms: dict[str, float]


class SliceSession:
    """Clicks and boxes on the slices of one volume, segmented by a 2D model slice by slice.

    Each prediction on a slice sends all of that slice's clicks, its box, and (where the model
    takes mask prompts) the slice's previous low-resolution logits; its mask replaces that
    slice of :attr:`mask`. A slice is encoded when first prompted; embeddings are kept in a
    bounded least-recently-used cache.

    Args:
        model: a :class:`~fastsam3d.sam2d.contract.PromptableModel2D` (read-only here).
        axis: the voxel axis slices are taken along (0, 1 or 2; default 2).
        intensity: the 8-bit mapping (CT window / MR percentiles).
        cache_size: slice embeddings kept.
        mask_prompt: feed the slice's previous logits back; ``None``: the model's
            ``supports_mask_prompt`` attribute if it has one, else all but ``medsam`` (MedSAM
            was trained and is run with boxes only).
        multimask: ``"auto"``: the model's three masks for a lone click (no box, no mask
            prompt), keeping the one of highest estimated IoU, as SAM advises for ambiguous
            prompts; ``"on"``/``"off"``: always/never.
    """

    def __init__(
        self,
        model: PromptableModel2D,
        *,
        axis: int = 2,
        intensity: SliceIntensity | None = None,
        cache_size: int = 32,
        mask_prompt: bool | None = None,
        multimask: Multimask = "auto",
    ) -> None:
        if not isinstance(model, PromptableModel2D):
            raise InputError(f"a 2D promptable model is needed, got {type(model).__name__}")
        if model.preprocessing not in PREPROCESSING:
            raise InputError(
                f"model {model.name!r}: preprocessing must be one of {PREPROCESSING}, "
                f"got {model.preprocessing!r}"
            )
        if isinstance(axis, bool) or axis not in (0, 1, 2):
            raise InputError(f"the slice axis must be 0, 1 or 2, got {axis!r}")
        if cache_size < 1:
            raise InputError(f"cache_size must be at least 1, got {cache_size}")
        if multimask not in ("auto", "on", "off"):
            raise InputError(f"multimask must be 'auto', 'on' or 'off', got {multimask!r}")
        self.model = model
        self.axis = axis
        self.intensity = intensity or SliceIntensity()
        self.cache_size = cache_size
        if mask_prompt is None:
            supported = getattr(model, "supports_mask_prompt", None)
            mask_prompt = model.preprocessing != "medsam" if supported is None else bool(supported)
        self.mask_prompt = mask_prompt
        self.multimask: Multimask = multimask
        self.encodes = 0
        """Slices encoded so far (cache misses)."""
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._volume: Volume | None = None
        self._bounds: IntensityBounds | None = None
        self._geometry: SliceGeometry | None = None
        self._slices: dict[int, _SliceState] = {}
        self._mask: np.ndarray | None = None

    # -- image ------------------------------------------------------------------------------

    def set_image(self, volume: Volume) -> None:
        """Use ``volume``; clears prompts, mask and cached embeddings."""
        if not isinstance(volume, Volume):
            shape = getattr(volume, "shape", None)
            what = f"an array of shape {tuple(shape)}" if shape is not None else repr(volume)
            raise InputError(
                f"set_image takes a 3D fastsam3d Volume, got {what}; "
                "wrap arrays with Volume.from_array(array, spacing)"
            )
        check_voxels(volume)
        a, b = in_plane_axes(self.axis)
        if min(volume.shape[a], volume.shape[b]) < 2:
            raise InputError(
                f"volume of shape {volume.shape} sliced along axis {self.axis} gives "
                f"{volume.shape[b]}x{volume.shape[a]} slices; slice a 2D image stored as a "
                "volume along its 1-voxel axis"
            )
        self._volume = volume
        self._bounds = intensity_bounds(volume, self.intensity)
        self._geometry = SliceGeometry.of(
            volume.shape[b], volume.shape[a], self.model.input_size, self.model.preprocessing
        )
        self._cache.clear()
        self.reset()

    @property
    def volume(self) -> Volume:
        if self._volume is None:
            raise RuntimeError("call set_image(...) first")
        return self._volume

    @property
    def geometry(self) -> SliceGeometry:
        """Where a slice sits in the model input."""
        if self._geometry is None:
            raise RuntimeError("call set_image(...) first")
        return self._geometry

    @property
    def bounds(self) -> IntensityBounds:
        """The volume's 8-bit mapping."""
        if self._bounds is None:
            raise RuntimeError("call set_image(...) first")
        return self._bounds

    def reset(self) -> None:
        """Forget prompts and mask; keep the image and cached embeddings."""
        self._slices = {}
        self._mask = np.zeros(self.volume.shape, dtype=bool)

    # -- state ------------------------------------------------------------------------------

    @property
    def mask(self) -> np.ndarray:
        """``(I, J, K)`` bool mask on the volume's grid (read-only view)."""
        if self._mask is None:
            raise RuntimeError("call set_image(...) first")
        view = self._mask.view()
        view.flags.writeable = False
        return view

    @property
    def clicks_per_slice(self) -> dict[int, int]:
        """Clicks a person made on each slice (slices without clicks left out)."""
        return {s: len(st.clicks) for s, st in sorted(self._slices.items()) if st.clicks}

    @property
    def total_clicks(self) -> int:
        """Clicks a person made on all slices (boxes and propagation not counted)."""
        return sum(len(st.clicks) for st in self._slices.values())

    @property
    def boxes_per_slice(self) -> dict[int, int]:
        """Boxes a person drew on each slice (a redrawn box counts again)."""
        return {s: st.boxes_drawn for s, st in sorted(self._slices.items()) if st.boxes_drawn}

    @property
    def total_boxes(self) -> int:
        return sum(st.boxes_drawn for st in self._slices.values())

    @property
    def predicted_slices(self) -> list[int]:
        """Slices with a prediction, in order."""
        return sorted(s for s, st in self._slices.items() if st.logits is not None)

    @property
    def cached_slices(self) -> list[int]:
        """Slices whose embedding is cached, least recently used first."""
        return list(self._cache)

    # -- prompts ----------------------------------------------------------------------------

    def add_click(self, index: Sequence[float] | np.ndarray, positive: bool = True) -> SliceResult:
        """A click at voxel ``(i, j, k)`` on slice ``round(index[axis])``; predicts that slice.

        Raises:
            InputError: not 3 finite numbers, or outside the volume.
        """
        volume = self.volume
        try:
            p = np.asarray(index, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"a click must be a voxel index (i, j, k), got {index!r}") from None
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise InputError(f"a click must be 3 finite numbers (i, j, k), got {index!r}")
        if np.any(p < 0) or np.any(p > np.array(volume.shape) - 1):
            raise InputError(
                f"voxel index {tuple(p.tolist())} lies outside the volume (indices "
                f"0..{volume.shape[0] - 1}, 0..{volume.shape[1] - 1}, 0..{volume.shape[2] - 1})"
            )
        a, b = in_plane_axes(self.axis)
        s = int(np.round(p[self.axis]))
        self._state(s).clicks.append((float(p[a]), float(p[b]), bool(positive)))
        return self._predict(s)

    def add_box(self, slice_index: int, box: Sequence[float] | np.ndarray) -> SliceResult:
        """A box ``(a0, b0, a1, b1)`` on a slice, in its in-plane voxel indices (for axis 2:
        ``(i0, j0, i1, j1)``), corners inclusive; replaces the slice's box and predicts it.

        Raises:
            InputError: the slice or box lies outside the volume, or ``a0 > a1`` / ``b0 > b1``.
        """
        volume = self.volume
        s = self._check_slice(slice_index)
        try:
            q = np.asarray(box, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"a box must be 4 numbers (a0, b0, a1, b1), got {box!r}") from None
        a, b = in_plane_axes(self.axis)
        n_a, n_b = volume.shape[a], volume.shape[b]
        if q.shape != (4,) or not np.all(np.isfinite(q)):
            raise InputError(f"a box must be 4 finite numbers (a0, b0, a1, b1), got {box!r}")
        if q[0] > q[2] or q[1] > q[3]:
            raise InputError(f"box {tuple(q.tolist())} has a0 > a1 or b0 > b1")
        if q.min() < 0 or max(q[0], q[2]) > n_a - 1 or max(q[1], q[3]) > n_b - 1:
            raise InputError(
                f"box {tuple(q.tolist())} lies outside slice {s} (in-plane indices "
                f"0..{n_a - 1} along axis {a}, 0..{n_b - 1} along axis {b})"
            )
        state = self._state(s)
        state.box = (float(q[0]), float(q[1]), float(q[2]), float(q[3]))
        state.user_box = True
        state.boxes_drawn += 1
        return self._predict(s)

    def propagate(
        self,
        start: int,
        direction: int = 1,
        *,
        max_slices: int | None = None,
        seed: Seed = "auto",
    ) -> list[SliceResult]:
        """Seed the slices after ``start`` (``direction`` +1 or -1) one by one from their
        neighbour's mask, as a user scrolling would: ``"box"``, the bounding box of the
        neighbour's mask (MedSAM's 3D inference); ``"mask"``, the neighbour's logits as the
        mask prompt; ``"auto"``: both where the model takes mask prompts, else the box.

        Stops at the volume's edge, after ``max_slices``, at a slice a person prompted (its
        prompts are theirs), or when a neighbour's mask is empty. Counts no clicks.
        """
        s = self._check_slice(start)
        if direction not in (1, -1):
            raise InputError(f"direction must be 1 or -1, got {direction!r}")
        if seed not in ("auto", "box", "mask", "box+mask"):
            raise InputError(f"seed must be 'auto', 'box', 'mask' or 'box+mask', got {seed!r}")
        if seed == "auto":
            seed = "box+mask" if self.mask_prompt else "box"
        if "mask" in seed and not self.mask_prompt:
            raise InputError(f"model {self.model.name!r} takes no mask prompt; seed with 'box'")
        if s not in self._slices or self._slices[s].logits is None:
            raise InputError(f"slice {s} has no prediction to propagate from")
        results: list[SliceResult] = []
        n = self.volume.shape[self.axis]
        while max_slices is None or len(results) < max_slices:
            nxt = s + direction
            if not 0 <= nxt < n or (nxt in self._slices and self._slices[nxt].prompted_by_user):
                break
            seeded = self._seed(s, nxt, seed)
            if seeded is None:
                break
            results.append(seeded)
            s = nxt
        return results

    # -- internals ----------------------------------------------------------------------------

    def _check_slice(self, slice_index: int) -> int:
        n = self.volume.shape[self.axis]
        if isinstance(slice_index, bool) or not isinstance(slice_index, int | np.integer):
            raise InputError(f"a slice index must be an integer, got {slice_index!r}")
        if not 0 <= int(slice_index) < n:
            raise InputError(
                f"slice {slice_index} lies outside the volume (0..{n - 1} along axis {self.axis})"
            )
        return int(slice_index)

    def _state(self, s: int) -> _SliceState:
        return self._slices.setdefault(s, _SliceState())

    def _plane(self, s: int) -> tuple[slice | int, ...]:
        index: list[slice | int] = [slice(None)] * 3
        index[self.axis] = s
        return tuple(index)

    def _seed(self, source: int, target: int, seed: Seed) -> SliceResult | None:
        """Predict ``target`` from ``source``'s mask; ``None`` when that mask is empty."""
        assert self._mask is not None
        plane = self._mask[self._plane(source)]  # (n_a, n_b)
        if not plane.any():
            return None
        state = _SliceState()
        if "box" in seed:
            a_idx, b_idx = np.nonzero(plane)
            state.box = (
                float(a_idx.min()),
                float(b_idx.min()),
                float(a_idx.max()),
                float(b_idx.max()),
            )
        if "mask" in seed:
            state.logits = self._slices[source].logits
        self._slices[target] = state
        return self._predict(target)

    def _embedding(self, s: int) -> tuple[torch.Tensor, dict[str, float]]:
        cached = self._cache.get(s)
        if cached is not None:
            self._cache.move_to_end(s)
            return cached, {"preprocess": 0.0, "encode": 0.0}
        t0 = time.perf_counter()
        image = to_uint8(slice_image(self.volume.array, self.axis, s), self.bounds)
        x = prepare_slice(image, self.model.preprocessing, self.geometry)
        t1 = time.perf_counter()
        with torch.inference_mode():
            embedding = self.model.encode(x.to(self.model.device, self.model.dtype))
        self.encodes += 1
        self._cache[s] = embedding
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        t2 = time.perf_counter()
        return embedding, {"preprocess": 1e3 * (t1 - t0), "encode": 1e3 * (t2 - t1)}

    def _prompts(
        self, state: _SliceState
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Points ``(1, N, 2)``, labels ``(1, N)`` and box ``(1, 4)`` in input pixels."""
        device, geometry = self.model.device, self.geometry
        points = labels = boxes = None
        if state.clicks:
            xy = geometry.to_input(np.array([c[:2] for c in state.clicks]))
            points = torch.as_tensor(xy[None], dtype=torch.float32, device=device)
            labels = torch.tensor([[int(c[2]) for c in state.clicks]], device=device)
        if state.box is not None:
            corners = geometry.to_input(np.array(state.box).reshape(2, 2)).reshape(1, 4)
            boxes = torch.as_tensor(corners, dtype=torch.float32, device=device)
        return points, labels, boxes

    def _predict(self, s: int) -> SliceResult:
        state = self._slices[s]
        encodes = self.encodes
        embedding, timings = self._embedding(s)
        t0 = time.perf_counter()
        points, labels, boxes = self._prompts(state)
        mask_logits = state.logits if self.mask_prompt else None
        lone_click = len(state.clicks) == 1 and boxes is None and mask_logits is None
        multimask = self.multimask == "on" or (self.multimask == "auto" and lone_click)
        with torch.inference_mode():
            logits, iou = self.model.decode(
                embedding, points, labels, boxes, mask_logits=mask_logits, multimask=multimask
            )
        best = int(torch.argmax(iou[0])) if logits.shape[1] > 1 else 0
        logits = logits[:, best : best + 1].clone()
        t1 = time.perf_counter()
        plane = logits_to_slice(logits, self.geometry).T  # (n_a, n_b)
        assert self._mask is not None
        self._mask[self._plane(s)] = plane
        state.logits = logits
        t2 = time.perf_counter()
        timings.update(decode=1e3 * (t1 - t0), map=1e3 * (t2 - t1))
        encoded = self.encodes > encodes
        return SliceResult(s, plane.copy(), logits, float(iou[0, best]), encoded, timings)
