"""Interactive segmentation of one volume from clicks.

Coordinates: a click is a voxel index ``(i, j, k)`` of the array the user passed (the file's own
index order for volumes read from files, see :mod:`fastsam3d.data.volume`), or world millimetres
with the convention named explicitly (``world="ras"`` or ``"lps"``).

Protocol: each prediction sends the *newest* click(s) plus the previous low-resolution logits as
the mask prompt (how upstream's released weights are evaluated, docs/upstream.md U5, U7), or every
click of the region plus the previous logits (``prompting="all"``, the newer SAM-Med3D protocol
and how ``fastsam3d-lite`` is trained); the first prediction in a region sends an all-zero mask.
The default, ``"auto"``, is what the model's config names (:func:`model_prompting`).

Regions: the model sees one ``128^3`` ROI (1.5 mm voxels) at a time. The first click places a
ROI around itself; the image embedding of a ROI is computed once and cached (in an
:class:`~fastsam3d.interactive.cache.EmbeddingCache`, which sessions on the same image may
share); clicks inside the ROI only run the prompt encoder and decoder; a click outside starts a
new ROI (``MaskResult.new_region``). The mask lives on the original grid: each prediction
recomputes the voxels its ROI covers and leaves the rest as they were, so objects larger than
one ROI can be built from several regions. A new ROI starts from what the session already has:
the part of the mask it covers (earlier regions, or a mask given to :meth:`Session.set_mask`)
becomes its first mask prompt (:func:`mask_prompt`), so the new region refines that mask
instead of redrawing it from its clicks alone (``carry_mask=False``: an all-zero prompt).

One loaded model can serve many sessions: a session never changes the model, seeds, thread
counts or global flags; it runs under ``torch.inference_mode`` on the model's device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..contract import PromptableModel
from ..data.frame import (
    FrameSpec,
    Roi,
    canonical_axes,
    normalize_roi,
    resample_to_roi,
    roi_around,
    roi_values_to_volume,
)
from ..data.volume import Volume, WorldConvention, check_voxels
from ..errors import InputError
from ..modeling.sam3d import Sam3D
from .cache import EmbeddingCache

log = logging.getLogger(__name__)

Prompting = Literal["newest", "all", "auto"]
Box3 = tuple[slice, slice, slice]


@dataclass(frozen=True, slots=True)
class Click:
    """A point prompt: voxel index ``(i, j, k)`` of the session's volume (continuous)."""

    index: tuple[float, float, float]
    positive: bool


@dataclass(frozen=True)
class MaskResult:
    """The outcome of one prediction.

    Attributes:
        mask: ``(I, J, K)`` bool on the original grid (a copy: the session's state after this
            prediction).
        logits: ``(1, 1, L, L, L)`` low-resolution logits in the ROI (``L = 32``).
        iou: the model's IoU estimate.
        roi: the region the model saw.
        changed: index box of the original grid that this prediction recomputed.
        new_region: whether this prediction started a new ROI.
        timings_ms: ``preprocess`` (resample + normalise) and ``encode`` (both 0 when the ROI
            embedding was cached), ``decode``, ``map`` (back to the original grid and mask
            update), ``total``.
    """

    mask: np.ndarray
    logits: torch.Tensor
    iou: float
    roi: Roi
    changed: Box3
    new_region: bool
    timings_ms: dict[str, float]


@dataclass
class _Step:
    n_clicks: int
    roi: Roi | None
    logits: torch.Tensor | None
    box: Box3
    previous_bits: np.ndarray  # the mask block before this step, np.packbits (8x smaller)

    def previous_block(self) -> np.ndarray:
        shape = tuple(sl.stop - sl.start for sl in self.box)
        count = int(np.prod(shape))
        return np.unpackbits(self.previous_bits, count=count).astype(bool).reshape(shape)


class Session:
    """Click-by-click segmentation of one volume with a shared, read-only model.

    Args:
        model: a loaded model (eval mode), e.g. ``fastsam3d.load_model("fastsam3d", ckpt)``.
        frame: model-frame parameters; default: the model's input size at 1.5 mm, z-normalised.
        prompting: ``"newest"`` or ``"all"`` clicks of the region; ``"auto"`` (default): the
            model's own (:func:`model_prompting`).
        cache_size: number of ROI embeddings kept (a cache of the session's own).
        cache: share this cache with other sessions instead (e.g. the objects of one scan: a
            region one of them encoded costs the others a decode only); ``cache_size`` is then
            the cache's own.
        region_grid_mm: place a new region on the lattice point (this pitch in mm, along the
            region's axes) nearest the clicks instead of centring it on them: nearby first
            clicks of sessions sharing a cache then fall in the same region and reuse its
            embedding, with the clicks up to half a pitch off the region's centre. ``None``
            (default): centred on the clicks, as upstream places them.
        carry_mask: a new region's first prediction gets the session's mask inside it as its
            mask prompt (:func:`mask_prompt`; default); ``False``: an all-zero prompt, as for a
            first click, so the region's voxels are redrawn from its clicks alone.
        max_history: predictions that can be undone (``None``: all). Older clicks stay in
            :attr:`prompts` but can no longer be taken back; each step keeps the ROI's
            low-resolution logits and a bit-packed copy of the mask block it changed.
        runtime: how a :class:`~fastsam3d.Sam3D` runs (:mod:`fastsam3d.runtime.select`):
            ``"auto"`` picks the fastest runtime that passed the accuracy checks; ``"torch"``
            uses the model as is. Ignored for models prepared already (anything that is not a
            ``Sam3D``): to serve many sessions, prepare once with
            ``fastsam3d.runtime.select.prepare(model)`` and pass the result to each.

    Example:
        >>> session = Session(model)
        >>> session.set_image(read_volume("ct.nii.gz"))
        >>> result = session.add_click((60, 48, 70))             # positive click, (i, j, k)
        >>> result = session.add_click((64, 50, 66), positive=False)
        >>> session.undo()
        >>> write_label_map(session.mask, session.volume, "liver.nii.gz")
    """

    def __init__(
        self,
        model: PromptableModel,
        *,
        frame: FrameSpec | None = None,
        prompting: Prompting = "auto",
        cache_size: int = 4,
        runtime: str = "auto",
        max_history: int | None = None,
        cache: EmbeddingCache | None = None,
        region_grid_mm: float | None = None,
        carry_mask: bool = True,
    ) -> None:
        if isinstance(model, Sam3D) and runtime != "torch":
            from ..runtime.select import prepare

            model = prepare(model, runtime)
        self.model = model
        self.frame = frame or FrameSpec.for_model(model.cfg)
        if self.frame.size != model.cfg.image_size:
            raise InputError(
                f"frame size {self.frame.size} differs from the model input {model.cfg.image_size}"
            )
        if prompting not in ("newest", "all", "auto"):
            raise InputError(f"prompting must be 'newest', 'all' or 'auto', got {prompting!r}")
        self.prompting: Literal["newest", "all"] = (
            model_prompting(model) if prompting == "auto" else prompting
        )
        self._shared_cache = cache is not None
        self._cache = cache if cache is not None else EmbeddingCache(max(1, cache_size))
        self.cache_size = self._cache.size
        if max_history is not None and max_history < 1:
            raise InputError(f"max_history must be at least 1 or None, got {max_history}")
        self.max_history = max_history
        if region_grid_mm is not None and not region_grid_mm > 0:
            raise InputError(f"region_grid_mm must be positive or None, got {region_grid_mm}")
        self.region_grid_mm = region_grid_mm
        self.carry_mask = carry_mask
        self._volume: Volume | None = None
        self._clear_prompts()

    # -- image ------------------------------------------------------------------------------

    def set_image(
        self,
        image: Volume | np.ndarray,
        *,
        spacing: tuple[float, float, float] | None = None,
        affine: np.ndarray | None = None,
    ) -> None:
        """Use a new image; clears prompts, mask and cached embeddings (of a cache of the
        session's own; a shared cache keeps other images' entries until they age out).

        Args:
            image: a :class:`Volume`, or an ``(I, J, K)`` array with ``spacing`` (mm, default 1)
                or a full voxel-to-RAS ``affine``.
        """
        if isinstance(image, Volume):
            if spacing is not None or affine is not None:
                raise InputError("spacing/affine apply to arrays; a Volume carries its own")
            volume = image
        else:
            volume = Volume.from_array(np.asarray(image), spacing or (1.0, 1.0, 1.0), affine)
        check_voxels(volume)
        self._volume = volume
        if not self._shared_cache:
            self._cache.clear()
        self._clear_prompts()

    @property
    def volume(self) -> Volume:
        if self._volume is None:
            raise RuntimeError("call set_image(...) first")
        return self._volume

    def _clear_prompts(self) -> None:
        self._clicks: list[Click] = []
        self._pending: list[Click] = []
        self._history: list[_Step] = []
        self._roi: Roi | None = None
        self._logits: torch.Tensor | None = None
        self._mask = None if self._volume is None else np.zeros(self._volume.shape, dtype=bool)

    # -- state ------------------------------------------------------------------------------

    @property
    def mask(self) -> np.ndarray:
        """Current ``(I, J, K)`` bool mask on the original grid (read-only view)."""
        if self._mask is None:
            raise RuntimeError("call set_image(...) first")
        view = self._mask.view()
        view.flags.writeable = False
        return view

    @property
    def cache(self) -> EmbeddingCache:
        """Where this session keeps ROI embeddings (its own, or one it shares)."""
        return self._cache

    @property
    def roi(self) -> Roi | None:
        """The region of the last prediction."""
        return self._roi

    @property
    def pending_clicks(self) -> int:
        """Clicks added with ``predict=False`` that :meth:`predict` has not used yet."""
        return len(self._pending)

    @property
    def prompts(self) -> tuple[Click, ...]:
        """All clicks so far, predicted or pending, oldest first."""
        return tuple(self._clicks + self._pending)

    # -- prompts ----------------------------------------------------------------------------

    def add_click(
        self,
        point: Sequence[float] | np.ndarray,
        positive: bool = True,
        *,
        world: WorldConvention | None = None,
        predict: bool = True,
    ) -> MaskResult | None:
        """Add a click; predict at once unless ``predict=False`` (then call :meth:`predict`).

        Args:
            point: voxel index ``(i, j, k)``, or world mm when ``world`` is ``"ras"``/``"lps"``.
            positive: foreground (True) or background (False) click.
            world: the convention of ``point`` if it is in millimetres.

        Raises:
            RuntimeError: no image set. ValueError: malformed point or outside the image.
        """
        index = self._to_index(point, world)
        self._pending.append(
            Click((float(index[0]), float(index[1]), float(index[2])), bool(positive))
        )
        return self.predict() if predict else None

    def _to_index(
        self, point: Sequence[float] | np.ndarray, world: WorldConvention | None
    ) -> np.ndarray:
        volume = self.volume
        try:
            p = np.asarray(point, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"a point must be 3 numbers, got {point!r}") from None
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise InputError(f"a point must be 3 finite numbers, got {point!r}")
        if world is not None:
            p = volume.world_to_index(p, world)[0]
            lo, hi = -0.5, np.array(volume.shape) - 0.5
            what = (
                f"world point {tuple(np.round(np.asarray(point, float), 3))} mm ({world.upper()})"
            )
        else:
            lo, hi = 0.0, np.array(volume.shape) - 1
            what = f"voxel index {tuple(np.asarray(point).tolist())}"
        if np.any(p < lo) or np.any(p > hi):
            raise InputError(
                f"{what} lies outside the image (voxel indices 0..{volume.shape[0] - 1}, "
                f"0..{volume.shape[1] - 1}, 0..{volume.shape[2] - 1})"
            )
        return p

    def predict(self) -> MaskResult:
        """Predict from the pending clicks (and, per ``prompting``, earlier ones)."""
        volume = self.volume
        if not self._pending:
            raise RuntimeError("no new clicks to predict from; call add_click(...) first")
        t0 = time.perf_counter()
        pending = np.array([c.index for c in self._pending])
        roi, new_region = self._region_for(pending)
        to_roi = roi.roi_from_volume(volume)
        previous_logits = None if new_region else self._logits
        assert self._mask is not None
        if new_region and self.carry_mask and self._mask.any():  # (an empty mask: skip the work)
            previous_logits = mask_prompt(
                Volume(self._mask, volume.affine), roi, self.model.cfg.low_res_size
            )
        clicks = (
            self._pending
            if self.prompting == "newest"
            else [
                c
                for c in self._clicks + self._pending
                if roi.contains(_apply(to_roi, np.array([c.index])))[0]
            ]
        )
        coords = _apply(to_roi, np.array([c.index for c in clicks]))
        embedding, timings = self._embedding(roi)
        t1 = time.perf_counter()
        low = self.model.cfg.low_res_size
        device, dtype = self.model.device, self.model.dtype
        prompt_logits = (
            previous_logits.to(device=device, dtype=dtype)
            if previous_logits is not None
            else torch.zeros(1, 1, low, low, low, device=device, dtype=dtype)
        )
        with torch.inference_mode():
            logits, iou = self.model.decode(
                embedding,
                torch.as_tensor(coords[None], dtype=torch.float32, device=device),
                torch.tensor([[1 if c.positive else 0 for c in clicks]], device=device),
                mask_logits=prompt_logits,
            )
        t2 = time.perf_counter()
        box, values, inside = roi_values_to_volume(logits[0, 0].cpu(), roi, volume)
        assert self._mask is not None
        previous_block = self._mask[box].copy()
        foreground = values.numpy() > self.model.cfg.input.mask_threshold
        if inside is None:  # every voxel of the box lies in the ROI
            self._mask[box] = foreground
        else:
            self._mask[box] = np.where(inside.numpy(), foreground, previous_block)
        self._history.append(
            _Step(
                len(self._pending),
                self._roi,
                self._logits,
                box,
                np.packbits(previous_block, axis=None),
            )
        )
        if self.max_history is not None and len(self._history) > self.max_history:
            del self._history[0]
        self._clicks.extend(self._pending)
        self._pending = []
        self._roi, self._logits = roi, logits
        t3 = time.perf_counter()
        if new_region:
            log.info("new region of interest centred at %s mm (RAS)", np.round(roi.center_world, 1))
        timings.update(decode=1e3 * (t2 - t1), map=1e3 * (t3 - t2), total=1e3 * (t3 - t0))
        return MaskResult(
            self._mask.copy(), logits, float(iou[0, 0]), roi, box, new_region, timings
        )

    def _region_for(self, points: np.ndarray) -> tuple[Roi, bool]:
        """Keep the current ROI if it holds every point, else a new ROI around their centre
        (on the lattice with ``region_grid_mm``, when that ROI holds them all)."""
        volume = self.volume

        def holds(roi: Roi | None) -> bool:
            return roi is not None and bool(
                roi.contains(_apply(roi.roi_from_volume(volume), points)).all()
            )

        if holds(self._roi):
            assert self._roi is not None
            return self._roi, False
        centre = points.mean(axis=0)
        if self.region_grid_mm is not None:
            roi = roi_around(volume, self._on_grid(centre, self.region_grid_mm), self.frame)
            if holds(roi):
                return roi, True
        roi = roi_around(volume, centre, self.frame)
        if not holds(roi):
            raise InputError(
                "the pending clicks are too far apart for one region of interest "
                f"({self.frame.size * self.frame.spacing:.0f} mm); predict between them"
            )
        return roi, True

    def _on_grid(self, index: np.ndarray, pitch: float) -> np.ndarray:
        """The voxel index of the lattice point nearest ``index`` (a lattice of ``pitch`` mm
        along the ROI axes, through the world origin)."""
        volume = self.volume
        axes = canonical_axes(volume.affine)
        along = volume.index_to_world(index[None])[0] @ axes
        snapped: np.ndarray = volume.world_to_index(
            (axes @ (np.round(along / pitch) * pitch))[None]
        )[0]
        return snapped

    def _embedding(self, roi: Roi) -> tuple[torch.Tensor, dict[str, float]]:
        """Cached ROI embedding, and the time spent preprocessing and encoding (0 if cached)."""
        cached = self._cache.get(self.volume, self.model, self.frame, roi)
        if cached is not None:
            return cached, {"preprocess": 0.0, "encode": 0.0}
        t0 = time.perf_counter()
        image = normalize_roi(resample_to_roi(self.volume, roi), self.frame.normalization)
        t1 = time.perf_counter()
        with torch.inference_mode():
            embedding = self.model.encode(image[None, None].to(self.model.device))
        self._cache.put(self.volume, self.model, self.frame, roi, embedding)
        t2 = time.perf_counter()
        return embedding, {"preprocess": 1e3 * (t1 - t0), "encode": 1e3 * (t2 - t1)}

    # -- history ----------------------------------------------------------------------------

    def undo(self) -> bool:
        """Remove the last click (or the clicks of the last prediction) and restore the mask
        exactly as it was before. Returns False when there is nothing to undo."""
        if self._pending:
            self._pending.pop()
            return True
        if not self._history:
            return False
        step = self._history.pop()
        assert self._mask is not None
        self._mask[step.box] = step.previous_block()
        self._roi, self._logits = step.roi, step.logits
        del self._clicks[len(self._clicks) - step.n_clicks :]
        return True

    def set_mask(self, mask: np.ndarray) -> None:
        """Start from an existing ``(I, J, K)`` mask on the image's grid (an imported or
        recovered label); forgets clicks and history, keeps cached embeddings. Later clicks
        recompute the voxels of their region as usual."""
        volume = self.volume
        array = np.asarray(mask)
        if array.shape != volume.shape:
            raise InputError(f"mask shape {array.shape} differs from the image {volume.shape}")
        self._clear_prompts()
        self._mask = array.astype(bool, copy=True)

    @property
    def can_undo(self) -> bool:
        """Whether :meth:`undo` has something to take back."""
        return bool(self._pending or self._history)

    def reset(self) -> None:
        """Forget clicks and mask; keep the image and cached embeddings."""
        self.volume  # noqa: B018 (raises before set_image)
        self._clear_prompts()


CARRIED_LOGIT = 8.0
"""Magnitude of the mask prompt built from a mask: about the model's own confident logits
(``fastsam3d-lite``: background -4 to -8, foreground up to 10). Between 4 and 20, the shipped
model's Dice on the training CT at 5 and 10 clicks moved by at most 0.004."""


def mask_prompt(
    mask: Volume, roi: Roi, low_res_size: int, magnitude: float = CARRIED_LOGIT
) -> torch.Tensor | None:
    """A low-resolution mask prompt for ``roi`` from a bool mask on the original grid.

    Each cell of the ``L^3`` grid covering the ROI (``L = low_res_size``, cells of
    ``size / L`` ROI voxels) takes the foreground fraction ``f`` of its voxels (the mask
    resampled to the ROI trilinearly, 0 outside the image) as the logit
    ``magnitude * (2 f - 1)``: ``+magnitude`` inside, ``-magnitude`` outside.

    Returns:
        ``(1, 1, L, L, L)`` float32, or ``None`` when no foreground falls in the ROI (the
        caller then sends the all-zero prompt of a first click).
    """
    if roi.size % low_res_size:
        raise InputError(f"ROI size {roi.size} is not a multiple of the grid {low_res_size}")
    fraction = F.avg_pool3d(resample_to_roi(mask, roi)[None, None], roi.size // low_res_size)
    if not bool((fraction > 0).any()):
        return None
    return magnitude * (2 * fraction - 1)


def model_prompting(model: PromptableModel) -> Literal["newest", "all"]:
    """The clicks a model expects per prediction: its config's ``prompt.prompting`` (our
    models), the model's own ``prompting`` attribute (the random-walker baseline), else
    ``"newest"`` (upstream's released weights)."""
    prompt = getattr(getattr(model, "cfg", None), "prompt", None)
    value = getattr(prompt, "prompting", None) or getattr(model, "prompting", None)
    return "all" if value == "all" else "newest"


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to ``(N, 3)`` points."""
    return points @ matrix[:3, :3].T + matrix[:3, 3]
