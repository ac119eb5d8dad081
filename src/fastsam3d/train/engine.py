"""The data engine: far more varied training regions than a few labelled scans hold.

A promptable model learns "the coherent region around these clicks", not a fixed list of
organs, so any coherent region is a valid target (SAM's data engine, SegVol's pseudo-masks,
nnInteractive's supervoxels). From each training scan the engine makes:

- **targets** of three kinds: labelled structures; **pseudo-objects**, SLIC supervoxels of the
  scan at several scales, alone or merged with random neighbours; and **parts** of labelled
  structures (cut by a random plane);
- **regions** (``S^3`` model-frame cubes, ``S = 128``) placed around a random voxel of a target
  or anywhere in the scan, under a random spatial transform: rotation about a random axis,
  anisotropic scaling, flips and a smooth elastic displacement; the image is sampled
  trilinearly, label maps by nearest neighbour, in one pass;
- **image variants**: a cut field of view (a slab, as partial scans have), thick slices,
  SynthSeg-style **synthetic images** (a random grey value per label and supervoxel, blur, bias
  field, noise) so that boundaries, not memorised grey values, define an object, and intensity
  changes of the real image.

Targets live on the loss grid (``S/2``: 64^3 cells of 3 mm for the 1.5 mm frame), where the
training loss and the click simulation run. Sample ``k`` is a pure function of
``(seed, k)`` (``numpy`` generators from :func:`~fastsam3d.train.data.sample_rng`), so resumed runs
see exactly the data they would have seen. Supervoxels are computed once per scan and cached on
disk (``EngineConfig.cache_dir``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.frame import FrameSpec, normalize_roi, roi_around
from ..data.io import read_volume
from ..data.volume import Volume
from ..errors import InputError
from ..eval.datasets import Case, load_cases
from ..eval.runner import load_targets
from ..files import atomic_output
from .config import DataConfig, EngineConfig
from .data import TrainingRegions, sample_rng

log = logging.getLogger(__name__)

KINDS = ("structure", "pseudo", "part")


@dataclass
class EngineScan:
    """One training scan prepared for the engine (all arrays in the scan's voxel grid).

    Attributes:
        name: case id.
        volume: the image (raw intensities).
        labels: ``(I, J, K)`` int16 structure labels (0: none); ``names[v - 1]`` names value v.
        supervoxels: one ``(I, J, K)`` int32 map per scale (0: outside the body).
        neighbours: per scale, ``neighbours[s][v]`` the ids adjacent to supervoxel ``v``.
        seeds: per object key ``(0, v)`` (structure ``v``) / ``(1, scale, v)`` (supervoxel):
            ``(n, 3)`` random voxel indices inside it (region centres are drawn from these).
    """

    name: str
    volume: Volume
    labels: np.ndarray
    names: list[str]
    supervoxels: list[np.ndarray]
    neighbours: list[dict[int, np.ndarray]]
    seeds: dict[tuple[int, ...], np.ndarray]
    sizes: np.ndarray
    """Voxel count of each structure label value."""
    image_t: torch.Tensor
    labels_t: torch.Tensor
    supervoxels_t: list[torch.Tensor]

    def objects(self, kind: str) -> list[tuple[int, ...]]:
        """Keys of the objects of ``kind`` (``part`` targets are cut from structures)."""
        code = 1 if kind == "pseudo" else 0
        return [k for k in self.seeds if k[0] == code]


def body_mask(array: np.ndarray) -> np.ndarray:
    """Voxels inside the body: above a threshold halfway between the 2nd and 60th percentile
    (air and the scanner's padding fall below it for CT and MR alike)."""
    lo, mid = np.percentile(array, [2, 60])
    return array > lo + 0.5 * (mid - lo)


def compute_supervoxels(
    array: np.ndarray, spacing: Sequence[float], segments: int, compactness: float
) -> np.ndarray:
    """SLIC supervoxels (scikit-image) of the body: ``(I, J, K)`` int32, 0 outside the body.

    Intensities are clipped to the body's 1st-99th percentiles and scaled to ``[0, 1]``.
    """
    from skimage.segmentation import slic

    body = body_mask(array)
    lo, hi = np.percentile(array[body], [1, 99])
    scaled = np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    labels = slic(
        scaled,
        n_segments=segments,
        compactness=compactness,
        spacing=np.asarray(spacing, dtype=np.float64),
        mask=body,
        channel_axis=None,
        start_label=1,
    )
    return labels.astype(np.int32)


def adjacency(labels: np.ndarray) -> dict[int, np.ndarray]:
    """``{id: ids of face-adjacent regions}`` of a label map (0 is ignored)."""
    pairs = []
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        left, right = a[:-1].ravel(), a[1:].ravel()
        keep = (left != right) & (left > 0) & (right > 0)
        pairs.append(np.stack([left[keep], right[keep]], axis=1))
    both = np.concatenate(pairs + [p[:, ::-1] for p in pairs])
    both = np.unique(both, axis=0)
    out: dict[int, np.ndarray] = {}
    if len(both):
        splits = np.flatnonzero(np.diff(both[:, 0])) + 1
        for chunk in np.split(both, splits):
            out[int(chunk[0, 0])] = chunk[:, 1].astype(np.int32)
    return out


def random_voxels(
    labels: np.ndarray, rng: np.random.Generator, per_id: int
) -> dict[int, np.ndarray]:
    """Up to ``per_id`` random voxel indices ``(n, 3)`` inside each non-zero label."""
    flat = labels.ravel()
    chosen: dict[int, list[int]] = {}
    for _ in range(per_id):
        order = rng.permutation(flat.size)
        ids, first = np.unique(flat[order], return_index=True)
        for v, f in zip(ids.tolist(), order[first].tolist(), strict=True):
            if v > 0:
                chosen.setdefault(v, []).append(f)
    return {
        v: np.stack(np.unravel_index(np.unique(fs), labels.shape), axis=1)
        for v, fs in chosen.items()
    }


def prepare_scan(case: Case, config: EngineConfig, min_voxels: int) -> EngineScan:
    """Read a scan, its labels, and its supervoxels (cached on disk)."""
    volume = read_volume(case.image, channel=case.channel)
    targets = load_targets(case, volume)
    labels = np.zeros(volume.shape, dtype=np.int16)
    names = []
    for structure, mask in targets:
        if mask.sum() >= min_voxels:
            names.append(structure.name)
            labels[mask] = len(names)
    array = np.asarray(volume.array, dtype=np.float32)
    supervoxels = [
        _cached_supervoxels(case, array, volume.spacing, n, config) for n in config.supervoxels
    ]
    rng = np.random.default_rng(0)
    seeds: dict[tuple[int, ...], np.ndarray] = {}
    for v, voxels in random_voxels(labels, rng, 32).items():
        seeds[(0, v)] = voxels
    neighbours = []
    for s, sv in enumerate(supervoxels):
        sizes = np.bincount(sv.ravel())
        for v, voxels in random_voxels(sv, rng, 4).items():
            if sizes[v] >= min_voxels:
                seeds[(1, s, v)] = voxels
        neighbours.append(adjacency(sv))
    log.info(
        "engine: %s: %d structures, supervoxels %s",
        case.case_id,
        len(names),
        [int(sv.max()) for sv in supervoxels],
    )
    return EngineScan(
        case.case_id,
        volume,
        labels,
        names,
        supervoxels,
        neighbours,
        seeds,
        np.bincount(labels.ravel().astype(np.int64), minlength=len(names) + 1),
        torch.from_numpy(array)[None, None],
        torch.from_numpy(labels.astype(np.float32))[None, None],
        [torch.from_numpy(sv.astype(np.float32))[None, None] for sv in supervoxels],
    )


def _cached_supervoxels(
    case: Case, array: np.ndarray, spacing: Sequence[float], segments: int, config: EngineConfig
) -> np.ndarray:
    digest = hashlib.sha256(array.tobytes())
    digest.update(repr((tuple(spacing), segments, config.compactness)).encode())
    path = Path(config.cache_dir) / f"slic-{case.case_id}-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape == array.shape:
            return cached
    sv = compute_supervoxels(array, spacing, segments, config.compactness)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, sv)
    return sv


# -- geometry ---------------------------------------------------------------------------------


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], size: int, control: int
) -> torch.Tensor:
    """A smooth random field: normal values on a ``control^3`` lattice, upsampled
    (trilinear, ``align_corners=True``) to ``size^3``; ``shape`` = channels."""
    channels = int(np.prod(shape))
    coarse = rng.normal(size=(1, channels, control, control, control)).astype(np.float32)
    fine = F.interpolate(
        torch.from_numpy(coarse), size=(size,) * 3, mode="trilinear", align_corners=True
    )
    return fine[0].reshape(*shape, size, size, size)


def _noise(rng: np.random.Generator, shape: torch.Size, sigma: float) -> torch.Tensor:
    """Gaussian noise from a torch generator seeded by ``rng`` (fast, still reproducible)."""
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return torch.randn(shape, generator=generator) * sigma


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(D, H, W)`` tensor (``sigma`` in voxels)."""
    if sigma <= 0:
        return x
    radius = max(1, round(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = x[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(k)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        y = F.conv3d(F.pad(y, pad, mode="replicate"), k.view(shape))
    return y[0, 0]


class EngineRegions(Dataset[dict[str, torch.Tensor]]):
    """Map-style dataset: global sample index -> ``{"image", "target", "index"}``.

    ``image``: ``(1, S, S, S)`` float32 normalised as the frame prescribes; ``target``:
    ``(M, S/2, S/2, S/2)`` float32 binary masks on the loss grid, ``M = targets_per_region``
    (the first is the object the region was placed around).
    """

    def __init__(
        self, cases: Sequence[Case], config: DataConfig, frame: FrameSpec, seed: int
    ) -> None:
        self.config, self.engine, self.frame, self.seed = config, config.engine, frame, seed
        cases = [c for c in cases if c.case_id not in set(config.exclude_cases)]
        if not cases:
            raise InputError("no training cases left after exclude_cases")
        voxel_mm3 = [float(np.prod(read_volume(c.image, channel=c.channel).spacing)) for c in cases]
        self.scans = [
            prepare_scan(c, self.engine, max(1, int(config.min_volume_mm3 / v)))
            for c, v in zip(cases, voxel_mm3, strict=True)
        ]
        weights = np.array(
            [self.engine.scan_weights.get(s.name, 1.0) for s in self.scans], dtype=np.float64
        )
        self.scan_p = weights / weights.sum()
        self.loss_size = frame.size // 2
        self.min_cells = max(1, int(config.min_voxels_in_region))

    def __len__(self) -> int:
        return 2**62

    # -- one sample -----------------------------------------------------------------------

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, index)
        e = self.engine
        scan = self.scans[int(rng.choice(len(self.scans), p=self.scan_p))]
        kind = self._kind(rng)
        primary = self._pick_object(scan, kind, rng)
        if primary is None or rng.random() < e.uniform_centre:
            body = scan.labels.shape
            centre = rng.uniform(0, 1, 3) * (np.array(body) - 1)
        else:
            voxels = scan.seeds[primary[:2] if primary[0] == 0 else primary[:3]]
            centre = voxels[int(rng.integers(len(voxels)))].astype(np.float64)
            jitter = rng.uniform(-self.config.jitter_mm, self.config.jitter_mm, 3)
            centre = centre + np.linalg.solve(scan.volume.affine[:3, :3], jitter)
        scale = int(rng.integers(len(scan.supervoxels)))
        if primary is not None and primary[0] == 1:
            scale = primary[1]
        synthetic = rng.random() < e.synthetic
        image, inside, labels64, sv64, labels128, sv128 = self._sample(
            scan, centre, scale, synthetic, rng
        )
        keep = self._fov(rng)
        if keep is not None:
            image, inside = image * keep[0], inside * keep[0]
            labels64, sv64 = labels64 * keep[1], sv64 * keep[1]
            if labels128 is not None and sv128 is not None:
                labels128, sv128 = labels128 * keep[0], sv128 * keep[0]
        if synthetic:
            assert labels128 is not None
            assert sv128 is not None
            image = self._synthesise(labels128, sv128, inside, rng)
        if rng.random() < e.thick_slices:
            image = self._thick_slices(image, rng)
        image = normalize_roi(image, self.frame.normalization)
        image = self._intensity(image, rng)
        targets = self._targets(scan, primary, kind, scale, labels64, sv64, rng)
        return {
            "image": image[None].contiguous(),
            "target": torch.stack(targets).float(),
            "index": torch.tensor(index),
        }

    def _kind(self, rng: np.random.Generator) -> str:
        e = self.engine
        p = np.array([1.0 - e.pseudo - e.part, e.pseudo, e.part])
        return KINDS[int(rng.choice(3, p=p / p.sum()))]

    def _pick_object(
        self, scan: EngineScan, kind: str, rng: np.random.Generator
    ) -> tuple[int, ...] | None:
        """A random object of ``kind`` (part: its structure, with a trailing -1)."""
        keys = scan.objects(kind)
        if not keys:
            keys = scan.objects("structure") or scan.objects("pseudo")
        if not keys:
            return None
        power = self.engine.size_power
        if power and keys[0][0] == 0:
            sizes = np.array([scan.sizes[k[1]] for k in keys], dtype=np.float64) ** power
            key = keys[int(rng.choice(len(keys), p=sizes / sizes.sum()))]
        else:
            key = keys[int(rng.integers(len(keys)))]
        return (*key, -1) if kind == "part" and key[0] == 0 else key

    def _sample(
        self,
        scan: EngineScan,
        centre: np.ndarray,
        scale: int,
        synthetic: bool,
        rng: np.random.Generator,
    ) -> tuple[
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor | None,
        torch.Tensor | None,
    ]:
        """Image ``(S, S, S)`` (raw, 0 outside the scan), which of its voxels lie inside the
        scan (float 0/1), structure and supervoxel labels on the loss grid, and on the image
        grid when the image will be synthesised."""
        e, size = self.engine, self.frame.size
        roi = roi_around(scan.volume, centre, self.frame, clamp=False)
        a3 = roi.affine[:3, :3]
        c = (size - 1) / 2
        centre_w = roi.center_world
        angle = np.radians(rng.uniform(-e.rotate_deg, e.rotate_deg))
        rot = _rotation(rng.normal(size=3), angle)
        stretch = rng.uniform(1 - e.scale, 1 + e.scale, 3)
        flips = np.where(rng.random(3) < (0.5 if self.config.augment.flip else 0.0), -1.0, 1.0)
        linear = rot @ a3 @ np.diag(stretch * flips)  # ROI index offset -> world mm
        to_index = np.linalg.inv(scan.volume.affine)
        m = to_index[:3, :3] @ linear
        t = to_index[:3, :3] @ (centre_w - linear @ np.full(3, c)) + to_index[:3, 3]
        dims = np.array(scan.labels.shape, dtype=np.float64)
        # normalised grid_sample coordinates (x = axis 2, y = axis 1, z = axis 0) as an affine
        # function of the ROI index, on a coarse lattice spanning [0, S - 1]; the elastic field
        # is smooth on it, and trilinear upsampling reproduces the affine part exactly
        to_norm = np.diag(2 / np.maximum(dims - 1, 1))[::-1]
        m_n, t_n = to_norm @ m, to_norm @ t - 1
        coarse_n = 33
        u = np.linspace(0, size - 1, coarse_n)
        mesh = np.stack(np.meshgrid(u, u, u, indexing="ij"), axis=0).reshape(3, -1)
        coarse = m_n @ mesh + t_n[:, None]
        if e.elastic_mm > 0:
            field = rng.normal(size=(3, 5, 5, 5)) * rng.uniform(0, e.elastic_mm) / 2  # mm
            field_t = F.interpolate(
                torch.from_numpy(field.astype(np.float32))[None],
                size=(coarse_n,) * 3,
                mode="trilinear",
                align_corners=True,
            )[0].reshape(3, -1)
            coarse = coarse + (to_norm @ to_index[:3, :3]) @ field_t.double().numpy()
        lattice = torch.from_numpy(coarse.astype(np.float32)).view(1, 3, *(coarse_n,) * 3)

        g_full = F.interpolate(lattice, size=(size,) * 3, mode="trilinear", align_corners=True)
        g_full = g_full.permute(0, 2, 3, 4, 1)  # (1, S, S, S, 3)
        image = F.grid_sample(scan.image_t, g_full, mode="bilinear", align_corners=True)[0, 0]
        lim = 1 + 1 / np.maximum(dims[::-1] - 1, 1)
        gf = g_full[0]
        inside = (
            (gf[..., 0].abs() <= lim[0])
            & (gf[..., 1].abs() <= lim[1])
            & (gf[..., 2].abs() <= lim[2])
        ).float()
        g_loss = F.avg_pool3d(g_full.permute(0, 4, 1, 2, 3), 2).permute(0, 2, 3, 4, 1)
        labels = F.grid_sample(scan.labels_t, g_loss, mode="nearest", align_corners=True)[0, 0]
        sv_t = scan.supervoxels_t[scale]
        sv = F.grid_sample(sv_t, g_loss, mode="nearest", align_corners=True)[0, 0]
        labels128 = sv128 = None
        if synthetic:
            labels128 = F.grid_sample(scan.labels_t, g_full, mode="nearest", align_corners=True)
            sv128 = F.grid_sample(sv_t, g_full, mode="nearest", align_corners=True)
            labels128, sv128 = labels128[0, 0], sv128[0, 0]
        return image * inside, inside, labels.round(), sv.round(), labels128, sv128

    def _fov(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Masks (image grid, loss grid) of a slab along ROI axis 2, or ``None``."""
        e, size = self.engine, self.frame.size
        if rng.random() >= e.fov_cut:
            return None
        thickness = rng.uniform(*e.fov_mm) / self.frame.spacing  # in image voxels
        middle = (size - 1) / 2 + rng.uniform(-0.15, 0.15) * size
        lo, hi = middle - thickness / 2, middle + thickness / 2
        out = []
        for n in (size, self.loss_size):
            u = torch.arange(n, dtype=torch.float32) * (size / n) + (size / n - 1) / 2
            keep = ((u >= lo) & (u <= hi)).float()
            out.append(keep.view(1, 1, n).expand(n, n, n))
        return out[0], out[1]

    def _synthesise(
        self,
        labels: torch.Tensor,
        supervoxels: torch.Tensor,
        inside: torch.Tensor,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """A SynthSeg-style image: a random grey value per structure and per supervoxel of the
        rest of the body, Gaussian blur, a multiplicative bias field and noise; positive inside
        the field of view, 0 outside."""
        size = self.frame.size
        ids = torch.where(labels > 0, labels, supervoxels + 1000 * (supervoxels > 0)).long()
        table = torch.from_numpy(rng.uniform(0.05, 1.0, int(ids.max()) + 1).astype(np.float32))
        table[0] = float(rng.uniform(0.0, 0.1))
        image = table[ids]
        image = _gaussian_blur(image, float(rng.uniform(0.3, 1.5)))
        bias = torch.exp(_smooth_field(rng, (), size, 4) * float(rng.uniform(0, 0.3)))
        image = image * bias
        image = image + _noise(rng, image.shape, float(rng.uniform(0, 0.05)))
        return image.clamp_min(1e-3) * inside

    def _thick_slices(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Average ``f`` (2-3) neighbouring slices along a random axis and interpolate back."""
        axis = int(rng.integers(3))
        factor = int(rng.integers(2, 4))
        kernel = [1, 1, 1]
        kernel[axis] = factor
        pooled = F.avg_pool3d(image[None, None], kernel, ceil_mode=True)
        size = self.frame.size
        return F.interpolate(pooled, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]

    def _intensity(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Scale, shift, blur and noise of the normalised image."""
        aug, e = self.config.augment, self.engine
        if aug.intensity_scale:
            image = image * float(1 + rng.uniform(-aug.intensity_scale, aug.intensity_scale))
        if aug.intensity_shift:
            image = image + float(rng.uniform(-aug.intensity_shift, aug.intensity_shift))
        if rng.random() < e.blur:
            image = _gaussian_blur(image, float(rng.uniform(0.5, 1.2)))
        if rng.random() < e.noise:
            sigma = float(rng.uniform(0.02, 0.15))
            image = image + _noise(rng, image.shape, sigma)
        return image

    # -- targets ---------------------------------------------------------------------------

    def _targets(
        self,
        scan: EngineScan,
        primary: tuple[int, ...] | None,
        primary_kind: str,
        scale: int,
        labels: torch.Tensor,
        supervoxels: torch.Tensor,
        rng: np.random.Generator,
    ) -> list[torch.Tensor]:
        """``targets_per_region`` masks on the loss grid, the primary object's first."""
        wanted = self.config.targets_per_region
        found: list[torch.Tensor] = []
        if primary is not None:
            first = self._object_mask(scan, primary, scale, labels, supervoxels, rng)
            if first is not None:
                found.append(first)
        for _ in range(4 * wanted):
            if len(found) == wanted:
                break
            kind = self._kind(rng)
            mask = self._present_object(scan, kind, scale, labels, supervoxels, rng)
            if mask is not None:
                found.append(mask)
        if not found:  # an empty region (outside the body): the target is empty too
            found = [torch.zeros_like(labels, dtype=torch.bool)]
        return [found[i % len(found)] for i in range(wanted)]

    def _present_object(
        self,
        scan: EngineScan,
        kind: str,
        scale: int,
        labels: torch.Tensor,
        supervoxels: torch.Tensor,
        rng: np.random.Generator,
    ) -> torch.Tensor | None:
        """A random object of ``kind`` that appears in the region (``None``: none does)."""
        source = supervoxels if kind == "pseudo" else labels
        counts = torch.bincount(source.long().flatten())
        counts[0] = 0
        ok = (counts >= self.min_cells).nonzero()[:, 0]
        if len(ok) == 0:
            return None
        power = self.engine.others_size_power
        if power:
            weights = counts[ok].double().numpy() ** power
            v = int(ok[int(rng.choice(len(ok), p=weights / weights.sum()))])
        else:
            v = int(ok[int(rng.integers(len(ok)))])
        key = (1, scale, v) if kind == "pseudo" else ((0, v, -1) if kind == "part" else (0, v))
        return self._object_mask(scan, key, scale, labels, supervoxels, rng)

    def _object_mask(
        self,
        scan: EngineScan,
        key: tuple[int, ...],
        scale: int,
        labels: torch.Tensor,
        supervoxels: torch.Tensor,
        rng: np.random.Generator,
    ) -> torch.Tensor | None:
        if key[0] == 1:  # a supervoxel, merged with some of its neighbours
            ids = {key[2]}
            frontier = [key[2]]
            for _ in range(int(rng.choice(self.engine.merge_neighbours))):
                options = [
                    int(n)
                    for f in frontier
                    for n in scan.neighbours[scale].get(f, ())
                    if int(n) not in ids
                ]
                if not options:
                    break
                pick = options[int(rng.integers(len(options)))]
                ids.add(pick)
                frontier.append(pick)
            mask = torch.isin(supervoxels, torch.tensor(sorted(ids), dtype=supervoxels.dtype))
        else:
            mask = labels == key[1]
            if len(key) == 3:  # a part: the structure on one side of a random plane
                cells = mask.nonzero().float()
                if len(cells) >= 2 * self.min_cells:
                    normal = torch.from_numpy(rng.normal(size=3).astype(np.float32))
                    through = cells[int(rng.integers(len(cells)))]
                    side = (cells - through) @ normal > 0
                    if self.min_cells <= int(side.sum()) <= len(cells) - self.min_cells:
                        part = torch.zeros_like(mask)
                        kept = cells[side].long()
                        part[kept[:, 0], kept[:, 1], kept[:, 2]] = True
                        mask = part
        return mask if int(mask.sum()) >= self.min_cells else None


MIX_STREAM = 2
"""The :func:`~fastsam3d.train.data.sample_rng` stream that decides where a mixed sample comes
from (0 draws the sample itself, 1 and up its clicks)."""


class MixedRegions(Dataset[dict[str, torch.Tensor]]):
    """Sample ``k`` from the engine with probability ``share``, else a region around a labelled
    structure (``[data]``'s settings); the choice, too, is a pure function of ``(seed, k)``.

    The two kinds differ in their target grid (engine ``(M, S/2, S/2, S/2)``, regions
    ``(M, S, S, S)``); the objective pools both to its loss grid, so batches must not mix them
    (``batch_size = 1``).
    """

    def __init__(
        self, engine: EngineRegions, regions: TrainingRegions, share: float, seed: int
    ) -> None:
        self.engine, self.regions, self.share, self.seed = engine, regions, share, seed

    def __len__(self) -> int:
        return 2**62

    def from_engine(self, index: int) -> bool:
        """Whether sample ``index`` is the engine's."""
        return bool(sample_rng(self.seed, index, MIX_STREAM).random() < self.share)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return (self.engine if self.from_engine(index) else self.regions)[index]


def training_regions(
    data: DataConfig, frame: FrameSpec, seed: int
) -> TrainingRegions | EngineRegions | MixedRegions:
    """The training samples of a ``[data]`` section: the engine's regions when it is enabled
    (mixed with regions around labelled structures when ``[data.engine] share < 1``), else
    regions around the labelled structures."""
    cases = load_cases(
        data.root, data.layout, split=data.split, channel=data.channel, modality=data.modality
    )
    if not data.engine.enabled:
        return TrainingRegions(cases, data, frame, seed)
    engine = EngineRegions(cases, data, frame, seed)
    if data.engine.share >= 1.0:
        return engine
    if data.batch_size != 1:
        raise InputError(
            f"[data.engine] share = {data.engine.share} mixes target grids: needs "
            f"[data] batch_size = 1, not {data.batch_size}"
        )
    wanted = data.engine.region_cases
    known = {c.case_id for c in cases}
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise InputError(
            f"[data.engine] region_cases {unknown}: not among the training cases {sorted(known)}"
        )
    region_cases = [c for c in cases if not wanted or c.case_id in wanted]
    regions = TrainingRegions(region_cases, data, frame, seed)
    return MixedRegions(engine, regions, data.engine.share, seed)


def sample_grid(dataset: EngineRegions, indices: Sequence[int], path: Path) -> Path:
    """A PNG of what the engine makes: per sample, three orthogonal middle slices of the image
    through the primary target's centre, with every target's outline in its own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = ["#ff3b30", "#34c759", "#0a84ff", "#ffd60a", "#bf5af2", "#64d2ff"]
    fig, axes = plt.subplots(len(indices), 3, figsize=(7.5, 2.5 * len(indices)))
    axes = np.atleast_2d(axes)
    for row, index in enumerate(indices):
        sample = dataset[index]
        image_t = sample["image"][0]
        targets = F.interpolate(sample["target"][None], size=image_t.shape, mode="nearest")[0]
        image = image_t.numpy()
        cells = targets[0].nonzero()
        centre = (
            cells.float().mean(0).round().long().tolist()
            if len(cells)
            else [image.shape[0] // 2] * 3
        )
        lo, hi = np.percentile(image, [1, 99])
        for col in range(3):
            ax = axes[row, col]
            sl = [slice(None)] * 3
            sl[col] = slice(centre[col], centre[col] + 1)
            ax.imshow(
                image[tuple(sl)].squeeze(col).T, cmap="gray", vmin=lo, vmax=hi, origin="lower"
            )
            for m in range(targets.shape[0]):
                plane = targets[m][tuple(sl)].squeeze(col).T.numpy()
                if plane.any():
                    ax.contour(
                        plane, levels=[0.5], colors=colours[m % len(colours)], linewidths=0.8
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"sample {index}", fontsize=8)
    fig.suptitle(
        "data engine: image (normalised) and targets (outlines; first = primary)", fontsize=9
    )
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
