"""Simulated users: where the next click goes, given the current prediction and the truth.

Every simulator takes an explicit ``numpy.random.Generator``; the same seed gives the same
clicks. Masks are ``(I, J, K)`` bool arrays on one grid with voxel ``spacing`` in mm.

- :class:`UpstreamClicker`: SAM-Med3D / FastSAM3D evaluation (docs/upstream.md U7): clicks 1 and 2
  in the inner core of the larger error region (Euclidean distance transform, candidates with
  distance > half the maximum, uniform choice), later clicks uniform in the error region.
  ``logit_quirk=True`` reproduces upstream's reading of the prediction as ``logit > 0.5``
  (instead of ``logit > 0``) where logits are available.
- :class:`CenterClicker`: the centre of the largest error (RITM / SAM2's
  ``sample_one_point_from_error_center``): the error voxel farthest from the error's boundary.
- :class:`RandomClicker`: uniform over the error region.
- :class:`MixedClicker` (training): mostly the centre rule, sometimes the upstream core rule.

A click is positive when it lies in a false-negative voxel (missed truth) and negative in a
false-positive one. Simulators return ``None`` when there is no error left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import edt
import numpy as np
from scipy import ndimage

from ..errors import InputError


@dataclass(frozen=True, slots=True)
class SimulatedClick:
    """Voxel index ``(i, j, k)`` and polarity."""

    index: tuple[int, int, int]
    positive: bool


class ClickSimulator(Protocol):
    """What evaluation protocols need from a simulator."""

    name: str
    prediction_threshold: float
    """Logit threshold at which a protocol binarises the prediction *for the simulator*."""

    def next_click(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        rng: np.random.Generator,
        spacing: Sequence[float],
        step: int,
    ) -> SimulatedClick | None:
        """The click after ``step`` earlier clicks (0-based)."""
        ...


def deepest_voxel(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``(3,)`` float64 index of the voxel of ``mask`` farthest (in mm) from its boundary: the
    first click of a probe (the first one in the array order where several tie)."""
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    return np.array(np.unravel_index(int(np.argmax(depth)), mask.shape), dtype=np.float64)


def first_center_clicks(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``(N, 3)`` voxel indices the centre-of-error simulator (:class:`CenterClicker`) may pick
    as its first click on ``mask`` (nothing predicted yet): the voxels farthest (in mm) from
    its boundary, the scan's edge counting as boundary, in C order; it draws one uniformly."""
    candidates = _centre_candidates(np.asarray(mask, bool), np.zeros(mask.shape, bool), spacing)
    if candidates is None:
        raise InputError("empty mask: no first click")
    return candidates


def inner_half_voxels(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``(N, 3)`` voxel indices of ``mask``'s inner half: farther (in mm) from its boundary
    than half its deepest voxel (upstream's first-click rule), in C order."""
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    return np.argwhere(depth > depth.max() / 2)


def _errors(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise InputError(f"prediction {p.shape} and truth {g.shape} differ in shape")
    return g & ~p, p & ~g


def _bounding_box(region: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every voxel of ``region`` (``None`` if it is empty), from its
    projections on each axis (several times faster than listing its voxels)."""
    box = []
    for axis in range(region.ndim):
        others = tuple(a for a in range(region.ndim) if a != axis)
        hit = np.flatnonzero(region.any(axis=others))
        if len(hit) == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _depth_bound(box: tuple[slice, ...], spacing: Sequence[float]) -> float:
    """An upper bound (mm) of any voxel's distance to the boundary of a region in ``box``: a
    voxel ``x`` of an ``e``-voxel extent is at most ``min(x + 1, e - x) <= ceil(e / 2)`` voxels
    from the background just outside the box along that axis."""
    return min(
        math.ceil((b.stop - b.start) / 2) * float(s) for b, s in zip(box, spacing, strict=True)
    )


def _inner_distance(
    region: np.ndarray, spacing: Sequence[float], box: tuple[slice, ...]
) -> np.ndarray:
    """Distance (mm) of each voxel of ``region`` to its boundary, on the region's bounding box
    ``box`` (padded by one background voxel, as upstream pads before ``edt``)."""
    padded = np.pad(region[box], 1)
    dist = edt.edt(
        padded, anisotropy=tuple(float(s) for s in spacing), black_border=True, parallel=1
    )
    return dist[1:-1, 1:-1, 1:-1]


def _deepest_error(
    fn: np.ndarray, fp: np.ndarray, spacing: Sequence[float]
) -> tuple[float, np.ndarray, tuple[slice, ...]] | None:
    """The error region (false negatives or false positives) whose deepest voxel lies farther
    from its boundary, as ``(depth mm, distances on its box, box)``; ties go to the false
    negatives; ``None`` without errors.

    The same answer as transforming both regions, with one distance transform where the
    other region's box cannot hold a deeper voxel (:func:`_depth_bound`): the region with
    the larger bound goes first, and the second is transformed only if it could still win.
    """
    boxes = ((r, _bounding_box(r), name) for r, name in ((fn, "fn"), (fp, "fp")))
    regions = [(r, box, name) for r, box, name in boxes if box is not None]
    if not regions:
        return None
    regions.sort(key=lambda r: -_depth_bound(r[1], spacing))  # stable: fn first on equal bounds
    best: tuple[float, np.ndarray, tuple[slice, ...], str] | None = None
    for region, box, name in regions:
        if best is not None:
            bound = _depth_bound(box, spacing) * (1 + 1e-5)  # margin for float32 distances
            if bound < best[0]:
                continue
        dist = _inner_distance(region, spacing, box)
        top = float(dist.max())
        if best is None or top > best[0] or (top == best[0] and name == "fn"):
            best = (top, dist, box, name)
    assert best is not None
    return best[0], best[1], best[2]


def _centre_candidates(
    fn: np.ndarray, fp: np.ndarray, spacing: Sequence[float]
) -> np.ndarray | None:
    """``(N, 3)`` voxel indices (C order) of the larger error's deepest voxels: the clicks
    :class:`CenterClicker` chooses among; ``None`` without errors."""
    best = _deepest_error(fn, fp, spacing)
    if best is None:
        return None
    top, dist, box = best
    return np.argwhere(dist == top) + np.array([s.start for s in box])


def _pick(candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return candidates[int(rng.integers(len(candidates)))]


def _to_click(index: np.ndarray, fn: np.ndarray) -> SimulatedClick:
    i, j, k = (int(v) for v in index)
    return SimulatedClick((i, j, k), bool(fn[i, j, k]))


class UpstreamClicker:
    """SAM-Med3D / FastSAM3D's evaluation clicks (see the module docstring).

    Args:
        logit_quirk: view the prediction as ``logit > 0.5`` (upstream's code) instead of
            ``logit > 0``.
        core_clicks: how many clicks use the distance-transform rule (2 upstream).
    """

    name = "upstream"

    def __init__(self, logit_quirk: bool = False, core_clicks: int = 2) -> None:
        self.prediction_threshold = 0.5 if logit_quirk else 0.0
        self.core_clicks = core_clicks

    def next_click(self, pred, gt, rng, spacing, step):  # type: ignore[no-untyped-def]
        fn, fp = _errors(pred, gt)
        if not (fn.any() or fp.any()):
            return None
        if step >= self.core_clicks:
            return _to_click(_pick(np.argwhere(fn | fp), rng), fn)
        best = _deepest_error(fn, fp, spacing)
        assert best is not None
        top, dist, box = best  # ties go to the false negatives (upstream: positive iff fn > fp)
        local = _pick(np.argwhere(dist > top / 2), rng)
        return _to_click(local + np.array([s.start for s in box]), fn)


class CenterClicker:
    """The centre of the largest error: the error voxel farthest from the error's boundary
    (false negatives win ties, then a uniform choice among equally deep voxels)."""

    name = "center"
    prediction_threshold = 0.0

    def next_click(self, pred, gt, rng, spacing, step):  # type: ignore[no-untyped-def]
        fn, fp = _errors(pred, gt)
        candidates = _centre_candidates(fn, fp, spacing)
        if candidates is None:
            return None
        return _to_click(_pick(candidates, rng), fn)


class RandomClicker:
    """A uniformly random voxel of the error region."""

    name = "random"
    prediction_threshold = 0.0

    def next_click(self, pred, gt, rng, spacing, step):  # type: ignore[no-untyped-def]
        fn, fp = _errors(pred, gt)
        errors = np.argwhere(fn | fp)
        if len(errors) == 0:
            return None
        return _to_click(_pick(errors, rng), fn)


class MixedClicker:
    """For training: the centre of the largest error (as users and the evaluation click) with
    probability ``center``, otherwise a uniform voxel of the inner half of the larger error
    (the upstream core rule), so the model also sees off-centre clicks."""

    name = "mixed"
    prediction_threshold = 0.0

    def __init__(self, center: float = 0.7) -> None:
        self.center = center
        self._center = CenterClicker()
        self._core = UpstreamClicker(core_clicks=10**9)

    def next_click(self, pred, gt, rng, spacing, step):  # type: ignore[no-untyped-def]
        chosen = self._center if rng.random() < self.center else self._core
        return chosen.next_click(pred, gt, rng, spacing, step)


IN_PLANE_ONLY = 1e6
"""Through-plane spacing (mm) given to a one-slice slab: far beyond any in-plane distance, so the
distance transforms measure in-plane distances only."""


def next_click_on_slice(
    simulator: ClickSimulator,
    pred: np.ndarray,
    gt: np.ndarray,
    rng: np.random.Generator,
    spacing: Sequence[float],
    step: int,
    axis: int,
    slice_index: int,
) -> SimulatedClick | None:
    """``simulator``'s click on one slice of ``(I, J, K)`` masks, from that slice's 2D error only.

    The slice is handed to the 3D simulator as a one-voxel slab whose through-plane spacing is
    :data:`IN_PLANE_ONLY`, so the same rules (centre of the largest error, upstream's core, ...)
    apply to the slice's in-plane geometry. Returns the click's ``(i, j, k)`` in the volume.
    """
    pick = [slice(None)] * 3
    pick[axis] = slice(slice_index, slice_index + 1)
    plane = tuple(pick)
    flat = [float(v) for v in spacing]
    flat[axis] = IN_PLANE_ONLY
    click = simulator.next_click(pred[plane], gt[plane], rng, flat, step)
    if click is None:
        return None
    index = list(click.index)
    index[axis] = slice_index
    return SimulatedClick((index[0], index[1], index[2]), click.positive)


EVAL_SIMULATORS = ("upstream", "center", "random")
"""Click simulators an evaluation can use (training adds ``"mixed"``)."""


def make_simulator(name: str, logit_quirk: bool = False) -> ClickSimulator:
    """``"upstream"``, ``"center"``, ``"random"`` or ``"mixed"`` (training)."""
    if name == "upstream":
        return UpstreamClicker(logit_quirk=logit_quirk)
    if logit_quirk:
        raise InputError("the logit quirk belongs to the upstream simulator")
    if name == "center":
        return CenterClicker()
    if name == "random":
        return RandomClicker()
    if name == "mixed":
        return MixedClicker()
    raise InputError(f"unknown simulator {name!r}; choose upstream, center, random or mixed")
