"""Training samples: model-frame regions around labelled structures, with augmentation.

Sample ``k`` is a pure function of ``(seed, k)``: which structure, where the region sits (the
structure's bounding-box centre, a voxel of its inner half, its deepest voxel or a first click of
the centre-of-error simulator, plus a uniform jitter; or, for a share ``exact_fraction``, a
session's region as it is), the rotation, flips and intensity changes are all drawn from
``numpy.random.default_rng(SeedSequence([seed, k]))``. Optimizer step ``s`` with a global batch
of ``G`` samples uses samples ``s*G .. s*G + G - 1``, split over processes and
gradient-accumulation micro-batches (:func:`sample_indices`), so a resumed run continues with
exactly the data it would have seen, and one process sees the same global batch as several.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data.frame import FrameSpec, Roi, normalize_roi, resample_to_roi, roi_around
from ..data.io import read_volume
from ..data.volume import Volume
from ..errors import InputError
from ..eval.clicks import deepest_voxel, first_center_clicks, inner_half_voxels
from ..eval.datasets import Case
from ..eval.runner import load_targets
from .config import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One trainable structure: case index, structure name, its voxel bounding box (``lo``,
    ``hi``: inclusive voxel indices) and its volume in mm^3."""

    case: int
    structure: str
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    mm3: float = 0.0

    @property
    def centre(self) -> np.ndarray:
        """``(3,)`` voxel index of the bounding-box centre."""
        return (np.asarray(self.lo) + np.asarray(self.hi)) / 2


@dataclass(frozen=True)
class _Placement:
    """Where sample ``index`` lies: its structure, region, generator, whether it is a session's
    region as it is (``exact``: no augmentation), and the key its crop is kept under (fixed
    session regions only)."""

    target: Target
    roi: Roi
    rng: np.random.Generator
    exact: bool
    key: tuple[int, str, tuple[int, ...]] | None


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of sample ``index`` (``stream`` separates data from clicks)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def sample_indices(
    step: int, micro: int, rank: int, world: int, batch: int, accum: int
) -> list[int]:
    """Global sample indices of one micro-batch of one process at an optimizer step."""
    global_batch = world * accum * batch
    start = step * global_batch + (micro * world + rank) * batch
    return list(range(start, start + batch))


class TrainingRegions(Dataset[dict[str, torch.Tensor]]):
    """Map-style dataset: global sample index -> ``{"image", "target", "index"}``.

    ``image`` is ``(1, S, S, S)`` float32 (normalised), ``target`` ``(M, S, S, S)`` float32 binary
    masks, ``M = targets_per_region``: the drawn structure first, then others in the region.
    """

    def __init__(
        self, cases: Sequence[Case], config: DataConfig, frame: FrameSpec, seed: int
    ) -> None:
        self.cases = [c for c in cases if c.case_id not in set(config.exclude_cases)]
        if not self.cases:
            raise InputError("no training cases left after exclude_cases")
        self.config, self.frame, self.seed = config, frame, seed
        self._cache: dict[int, tuple[Volume, dict[str, np.ndarray]]] = {}
        self._cores: dict[tuple[int, str], np.ndarray] = {}
        self._deepest_voxels: dict[tuple[int, str], np.ndarray] = {}
        self._first_click_voxels: dict[tuple[int, str], np.ndarray] = {}
        self._crops: dict[tuple[int, str, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
        self.targets = self._index_targets()
        if not self.targets:
            raise InputError(
                f"no structure of at least {config.min_volume_mm3} mm3 found"
                + (f" among {list(config.structures)}" if config.structures else "")
            )
        sizes = np.array([t.mm3 for t in self.targets], dtype=np.float64)
        weights = sizes**config.size_power
        self.target_probabilities = weights / weights.sum()
        """``(len(targets),)`` chance of each structure per sample (``[data] size_power``)."""

    def _load(self, n: int) -> tuple[Volume, dict[str, np.ndarray]]:
        if n in self._cache:
            return self._cache[n]
        case = self.cases[n]
        volume = read_volume(case.image, channel=case.channel)
        masks = {s.name: m for s, m in load_targets(case, volume)}
        if self.config.cache:
            self._cache[n] = (volume, masks)
        return volume, masks

    def _index_targets(self) -> list[Target]:
        targets = []
        wanted = set(self.config.structures)
        for n in range(len(self.cases)):
            volume, masks = self._load(n)
            voxel_mm3 = float(np.prod(volume.spacing))
            for name, mask in sorted(masks.items()):
                if wanted and name not in wanted:
                    continue
                if mask.sum() * voxel_mm3 < self.config.min_volume_mm3:
                    continue
                idx = np.argwhere(mask)
                lo, hi = idx.min(axis=0), idx.max(axis=0)
                targets.append(
                    Target(
                        n,
                        name,
                        (int(lo[0]), int(lo[1]), int(lo[2])),
                        (int(hi[0]), int(hi[1]), int(hi[2])),
                        len(idx) * voxel_mm3,
                    )
                )
        log.info("training on %d structures of %d cases", len(targets), len(self.cases))
        return targets

    def __len__(self) -> int:
        return 2**62  # indices are drawn by the sampler; every index is a valid sample

    def region(self, index: int) -> tuple[Target, Roi, np.random.Generator]:
        """The structure and region of sample ``index`` (and the generator, for augmentation)."""
        placement = self._place(index)
        return placement.target, placement.roi, placement.rng

    def _place(self, index: int) -> _Placement:
        rng = sample_rng(self.seed, index)
        c = self.config
        if c.size_power == 0:  # the draw of every run before size_power existed
            target = self.targets[int(rng.integers(len(self.targets)))]
        else:
            target = self.targets[int(rng.choice(len(self.targets), p=self.target_probabilities))]
        exact = c.exact_fraction > 0 and bool(rng.random() < c.exact_fraction)
        volume, _ = self._load(target.case)
        centre, key = target.centre, None
        if c.region_centre == "core":
            core = self._structure_voxels(self._cores, target, inner_half_voxels)
            centre = core[int(rng.integers(len(core)))].astype(np.float64)
        elif c.region_centre == "deepest":
            centre = self._structure_voxels(self._deepest_voxels, target, deepest_voxel)
        elif c.region_centre == "first_click":
            clicks = self._structure_voxels(self._first_click_voxels, target, first_center_clicks)
            centre = clicks[int(rng.integers(len(clicks)))].astype(np.float64)
        session = c.region_centre in ("deepest", "first_click")
        if exact or (session and c.jitter_mm == 0 and c.augment.rotate_deg == 0):
            key = (target.case, target.structure, tuple(int(v) for v in centre))
        if not exact:
            jitter_world = rng.uniform(-c.jitter_mm, c.jitter_mm, 3)
            centre = centre + np.linalg.solve(volume.affine[:3, :3], jitter_world)
        roi = roi_around(volume, centre, self.frame, clamp=session)  # as a session shifts it
        angle = c.augment.rotate_deg
        if angle > 0 and not exact:
            roi = _rotated(roi, rng.normal(size=3), np.radians(rng.uniform(-angle, angle)))
        return _Placement(target, roi, rng, exact, key)

    def _structure_voxels(
        self,
        cache: dict[tuple[int, str], np.ndarray],
        target: Target,
        rule: Callable[[np.ndarray, Sequence[float]], np.ndarray],
    ) -> np.ndarray:
        """``rule(mask, spacing)`` on ``target``'s mask (voxel indices: its inner half, its
        deepest voxel, the simulator's first clicks), computed once per structure in ``cache``."""
        key = (target.case, target.structure)
        if key not in cache:
            volume, masks = self._load(target.case)
            cache[key] = rule(masks[target.structure], volume.spacing)
        return cache[key]

    def _crop(
        self, target: Target, roi: Roi, key: tuple[int, str, tuple[int, ...]] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, S, S)`` normalised image and binary mask of ``target`` in ``roi`` (kept under
        ``key``, a fixed session region, when ``cache`` is on)."""
        if key is not None and key in self._crops:
            return self._crops[key]
        volume, masks = self._load(target.case)
        image = normalize_roi(resample_to_roi(volume, roi), self.frame.normalization)
        mask_volume = Volume(masks[target.structure].astype(np.float32), volume.affine)
        mask = (resample_to_roi(mask_volume, roi) > 0.5).float()
        if self.config.cache and key is not None:
            self._crops[key] = (image, mask)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        placement = self._place(index)
        target, roi, rng = placement.target, placement.roi, placement.rng
        image, mask = self._crop(target, roi, placement.key)
        if self.config.targets_per_region > 1:
            mask = torch.stack([mask, *self._other_targets(target, mask, roi, rng)])
        else:
            mask = mask[None]
        aug = self.config.augment
        if aug.flip and not placement.exact:  # an exact sample is the session's region as it is
            axes = [a for a in range(3) if rng.random() < 0.5]
            if axes:
                image, mask = image.flip(axes), mask.flip([a + 1 for a in axes])
        if aug.intensity_scale and not placement.exact:
            image = image * float(1 + rng.uniform(-aug.intensity_scale, aug.intensity_scale))
        if aug.intensity_shift and not placement.exact:
            image = image + float(rng.uniform(-aug.intensity_shift, aug.intensity_shift))
        return {
            "image": image[None].contiguous(),
            "target": mask.contiguous(),
            "index": torch.tensor(index),
        }

    def _other_targets(
        self, drawn: Target, drawn_mask: torch.Tensor, roi: Roi, rng: np.random.Generator
    ) -> list[torch.Tensor]:
        """``targets_per_region - 1`` masks ``(S, S, S)`` of other structures in ``roi``
        (random order; repeated, drawn one included, when fewer appear)."""
        volume, masks = self._load(drawn.case)
        to_volume = roi.volume_from_roi(volume)
        c = np.array(np.meshgrid(*[[-0.5, roi.size - 0.5]] * 3, indexing="ij")).reshape(3, -1).T
        corners = c @ to_volume[:3, :3].T + to_volume[:3, 3]
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        candidates = [
            t
            for t in self.targets
            if t.case == drawn.case
            and t.structure != drawn.structure
            and np.all(np.asarray(t.hi) >= lo)
            and np.all(np.asarray(t.lo) <= hi)
        ]
        wanted = self.config.targets_per_region - 1
        found: list[torch.Tensor] = []
        for n in rng.permutation(len(candidates)):
            other = candidates[int(n)]
            mask_volume = Volume(masks[other.structure].astype(np.float32), volume.affine)
            mask = (resample_to_roi(mask_volume, roi) > 0.5).float()
            if mask.sum() >= self.config.min_voxels_in_region:
                found.append(mask)
                if len(found) == wanted:
                    return found
        found = found or [drawn_mask]
        return [found[i % len(found)] for i in range(wanted)]


def _rotated(roi: Roi, axis: np.ndarray, angle: float) -> Roi:
    """``roi`` rotated by ``angle`` (radians) about ``axis`` through its centre."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    centre = roi.center_world
    affine = roi.affine.copy()
    affine[:3, :3] = rot @ roi.affine[:3, :3]
    c = (roi.size - 1) / 2
    affine[:3, 3] = centre - affine[:3, :3] @ np.full(3, c)
    return Roi(affine, roi.size)


class StepBatches(Sampler[list[int]]):
    """Batches of global sample indices for one process, from ``start_step`` to ``steps``."""

    def __init__(
        self, start_step: int, steps: int, rank: int, world: int, batch: int, accum: int
    ) -> None:
        self.start_step, self.steps = start_step, steps
        self.rank, self.world, self.batch, self.accum = rank, world, batch, accum

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            for micro in range(self.accum):
                yield sample_indices(step, micro, self.rank, self.world, self.batch, self.accum)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum
