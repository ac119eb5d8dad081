"""The model frame: how a region of a volume is presented to the model, and mapped back.

The released weights were trained on (docs/upstream.md U6): RAS+ canonical orientation, array
axes in (x, y, z) order, 1.5 mm isotropic voxels, a ``128^3`` crop, z-normalisation over the
crop's voxels > 0. A :class:`Roi` is one such crop placed in world space: a cube of ``size^3``
voxels of ``spacing`` mm whose axes are the volume's own axes permuted and flipped to point
towards R, A and S (so axis-aligned scans are resampled without rotation, as TorchIO's
``ToCanonical`` + ``Resample`` do; oblique scans keep their slice orientation).

The :class:`Roi` is the exact record of the mapping: ``Roi.affine`` takes ROI indices to world
RAS+, the volume's affine takes voxel indices there too, so points go in and logits come back
through one 4x4 matrix (:meth:`Roi.volume_from_roi`). Images are sampled trilinearly (0 outside
the volume); low-resolution logits are interpolated trilinearly *at each original voxel* and
thresholded there (the mask is not a nearest-neighbour copy of a 128^3 result). Axis-aligned
mappings use separable 1-D interpolation (an order of magnitude faster than ``grid_sample``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Normalization
from ..contract import RegionSizes
from ..errors import InputError
from .volume import Volume


@dataclass(frozen=True, slots=True)
class FrameSpec:
    """Model-frame parameters.

    Attributes:
        size: ROI side in voxels (the model's input size, 128 for the released models).
        spacing: isotropic voxel size in mm (1.5 for the released models).
        normalization: ``"zscore_positive"``: subtract the mean and divide by the standard
            deviation of the ROI's voxels > 0 (upstream's ``ZNormalization(x > 0)``);
            ``"none"``: the volume is already normalised.
    """

    size: int = 128
    spacing: float = 1.5
    normalization: Normalization = "zscore_positive"

    @classmethod
    def for_model(cls, cfg: RegionSizes) -> FrameSpec:
        """The frame a model's weights expect: its input size, spacing and normalisation."""
        return cls(cfg.image_size, cfg.input.spacing, cfg.input.normalization)

    def __post_init__(self) -> None:
        if self.size < 2 or self.spacing <= 0:
            raise InputError(f"invalid frame: size {self.size}, spacing {self.spacing}")
        if self.normalization not in ("zscore_positive", "none"):
            raise InputError(
                f"normalization must be 'zscore_positive' or 'none', got {self.normalization!r}"
            )


@dataclass(frozen=True, eq=False)
class Roi:
    """A region of interest in the model frame.

    Attributes:
        affine: ``(4, 4)`` ROI index ``(u0, u1, u2)`` -> world RAS+ mm. Tensor axis ``a`` of the
            model input is ROI axis ``a``.
        size: side in voxels.
    """

    affine: np.ndarray
    size: int

    @property
    def center_world(self) -> np.ndarray:
        """World RAS+ position of the ROI centre."""
        c = (self.size - 1) / 2
        return (self.affine @ np.array([c, c, c, 1.0]))[:3]

    def volume_from_roi(self, volume: Volume) -> np.ndarray:
        """``(4, 4)`` ROI index -> volume voxel index."""
        return np.linalg.inv(volume.affine) @ self.affine

    def roi_from_volume(self, volume: Volume) -> np.ndarray:
        """``(4, 4)`` volume voxel index -> ROI index."""
        return np.linalg.inv(self.affine) @ volume.affine

    def contains(self, roi_points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Which ``(N, 3)`` ROI-index points lie inside the cube (shrunk by ``margin`` voxels)."""
        p = np.asarray(roi_points).reshape(-1, 3)
        return np.all((p >= -0.5 + margin) & (p <= self.size - 0.5 - margin), axis=1)

    def key(self) -> bytes:
        """Hashable identity (for caches)."""
        return np.round(self.affine, 6).tobytes() + self.size.to_bytes(4, "little")


def canonical_axes(affine: np.ndarray) -> np.ndarray:
    """World directions of the ROI axes: the volume's axes permuted/flipped to point to R, A, S.

    Returns:
        ``(3, 3)`` rotation; column ``a`` is ROI axis ``a`` in RAS+ (identity for axis-aligned
        volumes).
    """
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    axes = np.zeros((3, 3))
    free_world, free_vol = [0, 1, 2], [0, 1, 2]
    weights = np.abs(direction)
    for _ in range(3):  # greedy assignment, strongest alignment first
        sub = weights[np.ix_(free_world, free_vol)]
        w_idx, v_idx = np.unravel_index(int(np.argmax(sub)), sub.shape)
        w, v = free_world[w_idx], free_vol[v_idx]
        axes[:, w] = direction[:, v] * np.sign(direction[w, v])
        free_world.remove(w)
        free_vol.remove(v)
    u, _, vt = np.linalg.svd(axes)  # nearest rotation (guards against sheared affines)
    return u @ vt


def roi_around(
    volume: Volume, center_index: np.ndarray, spec: FrameSpec, clamp: bool = True
) -> Roi:
    """A ROI centred on a voxel index, shifted to stay inside the volume where it can.

    Along each ROI axis (``clamp=True``): if the volume is longer than the ROI, the centre is
    moved just enough for the ROI to lie inside the volume (more image, less padding; the point
    stays inside); if it is shorter, the ROI is centred on the volume (padding on both sides).
    ``clamp=False`` keeps the centre where it is (upstream's ``CropOrPad`` around a label).
    """
    axes = canonical_axes(volume.affine)
    half = spec.spacing * (spec.size - 1) / 2
    center = volume.index_to_world(np.asarray(center_index, dtype=np.float64))[0]
    corners = (
        np.array(np.meshgrid(*[[0, n - 1] for n in volume.shape], indexing="ij")).reshape(3, -1).T
    )
    extent = volume.index_to_world(corners) @ axes  # corner coordinates along the ROI axes
    lo, hi = extent.min(axis=0), extent.max(axis=0)
    along = center @ axes
    for a in range(3 if clamp else 0):
        if hi[a] - lo[a] >= 2 * half:
            along[a] = np.clip(along[a], lo[a] + half, hi[a] - half)
        else:
            along[a] = (lo[a] + hi[a]) / 2
    center = axes @ along
    affine = np.eye(4)
    affine[:3, :3] = axes * spec.spacing
    affine[:3, 3] = center - axes @ np.full(3, half)
    # snap ROI voxel 0 onto a volume voxel centre (at most half a volume voxel away): volume
    # voxel centres then fall on ROI voxel centres whenever the spacing ratio is an integer, as
    # in upstream's resampling (which keeps the volume's origin), and round trips are exact
    to_vol = np.linalg.inv(volume.affine) @ affine
    if _axis_aligned(to_vol) is not None:
        # the origin becomes exactly the world position of a voxel index: equal clicks given as
        # indices or as world coordinates then yield bit-identical regions
        origin_index = np.round(to_vol[:3, 3])
        affine[:3, 3] = volume.affine[:3, :3] @ origin_index + volume.affine[:3, 3]
    return Roi(affine, spec.size)


def _axis_aligned(matrix: np.ndarray, tol: float = 1e-6) -> np.ndarray | None:
    """For a 3x3 matrix with one dominant entry per column (others ~0): the row of each column."""
    m = np.abs(matrix[:3, :3])
    rows = np.argmax(m, axis=0)
    if len(set(rows.tolist())) != 3:
        return None
    off = m.copy()
    off[rows, [0, 1, 2]] = 0
    return rows if off.max() <= tol * m.max() else None


def _taps(
    positions: np.ndarray, n: int, inside_lo: float = -np.inf, inside_hi: float = np.inf
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-tap linear interpolation of a length-``n`` signal at ``positions``.

    Positions are clamped to ``[0, n - 1]`` (edge replication); positions outside
    ``[inside_lo, inside_hi]`` get zero weights. Returns ``(i0, i1, w0, w1)``.
    """
    x = np.clip(positions, 0.0, n - 1)
    i0 = np.minimum(np.floor(x).astype(np.int64), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    w1 = (x - i0).astype(np.float32)
    w0 = (1.0 - w1).astype(np.float32)
    valid = (positions >= inside_lo) & (positions <= inside_hi)
    w0[~valid] = 0.0
    w1[~valid] = 0.0
    return torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(w0), torch.from_numpy(w1)


def _apply_taps(
    x: torch.Tensor, dim: int, taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Interpolate ``x`` along ``dim`` (gathers: each output reads two inputs)."""
    i0, i1, w0, w1 = taps
    shape = [1] * x.dim()
    shape[dim] = -1
    return x.index_select(dim, i0) * w0.view(shape) + x.index_select(dim, i1) * w1.view(shape)


def _dense_taps(
    taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], n: int
) -> torch.Tensor:
    """The ``(len, n)`` matrix of :func:`_taps` (for upsampling a small grid by matmuls)."""
    i0, i1, w0, w1 = taps
    m = torch.zeros(len(i0), n)
    rows = torch.arange(len(i0))
    m.index_put_((rows, i0), w0, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m


def _footprint(
    matrix: np.ndarray, size: float, shape: tuple[int, int, int], margin: int = 1
) -> tuple[slice, slice, slice]:
    """Index bounding box (clipped to ``shape``) of the cube ``[-0.5, size-0.5]^3`` mapped by
    ``matrix``, grown by ``margin`` voxels."""
    c = np.array(np.meshgrid(*[[-0.5, size - 0.5]] * 3, indexing="ij")).reshape(3, -1).T
    mapped = c @ matrix[:3, :3].T + matrix[:3, 3]
    lo = np.floor(mapped.min(axis=0)).astype(int) - margin
    hi = np.ceil(mapped.max(axis=0)).astype(int) + margin + 1
    lo = np.clip(lo, 0, shape)
    hi = np.clip(hi, 0, shape)
    return (
        slice(int(lo[0]), int(hi[0])),
        slice(int(lo[1]), int(hi[1])),
        slice(int(lo[2]), int(hi[2])),
    )


def resample_to_roi(volume: Volume, roi: Roi) -> torch.Tensor:
    """The ROI's ``(size, size, size)`` float32 image: trilinear, 0 outside the volume.

    A ROI voxel whose centre lies within half a voxel of the volume's outermost voxel centres
    takes the edge value; further out it is 0 (TorchIO's ``CropOrPad`` pads with 0).
    """
    size = roi.size
    to_vol = roi.volume_from_roi(volume)
    box = _footprint(to_vol, size, volume.shape)
    out = torch.zeros(size, size, size)
    if any(s.stop <= s.start for s in box):
        return out
    block = torch.from_numpy(np.asarray(volume.array[box], dtype=np.float32))
    start = np.array([s.start for s in box], dtype=np.float64)
    n = np.array(volume.shape)
    rows = _axis_aligned(to_vol)
    u = np.arange(size, dtype=np.float64)
    if rows is not None:
        # shrink the largest block axes first; every step gathers two taps per output
        x = block
        for a in sorted(range(3), key=lambda a: -block.shape[rows[a]]):
            p = int(rows[a])
            pos = to_vol[p, a] * u + to_vol[p, 3] - start[p]  # block index along axis p
            taps = _taps(pos, block.shape[p], -0.5 - start[p], n[p] - 0.5 - start[p])
            x = _apply_taps(x, p, taps)
        return x.permute([int(r) for r in rows]).contiguous()  # block axis rows[a] -> ROI axis a
    grid = np.stack(np.meshgrid(u, u, u, indexing="ij"), axis=-1).reshape(-1, 3)
    idx = grid @ to_vol[:3, :3].T + to_vol[:3, 3]
    inside = np.all((idx >= -0.5) & (idx <= n - 0.5), axis=1)
    local = idx - start
    dims = np.array(block.shape, dtype=np.float64)
    norm = 2 * local / np.maximum(dims - 1, 1) - 1  # align_corners=True
    g = torch.from_numpy(norm[:, ::-1].copy()).float().view(1, size, size, size, 3)
    sampled = F.grid_sample(
        block[None, None], g, mode="bilinear", padding_mode="border", align_corners=True
    )
    mask = torch.from_numpy(inside.reshape(size, size, size))
    return sampled[0, 0] * mask


def normalize_roi(image: torch.Tensor, mode: Normalization) -> torch.Tensor:
    """Upstream's ``ZNormalization(masking_method=x > 0)`` on the ROI (unbiased std).

    With fewer than 2 voxels > 0 the statistics of the whole ROI are used; a constant ROI is
    only shifted to mean 0.
    """
    if mode == "none":
        return image
    selected = image > 0
    count = int(selected.sum())
    if count < 2:
        selected, count = torch.ones_like(selected), image.numel()
    weights = selected.to(image.dtype)
    mean = (image * weights).sum() / count
    centred = image - mean
    std = torch.sqrt((centred.square() * weights).sum() / (count - 1))
    return centred / std if std > 0 else centred


def roi_values_to_volume(
    low_res: torch.Tensor, roi: Roi, volume: Volume
) -> tuple[tuple[slice, slice, slice], torch.Tensor, torch.Tensor | None]:
    """Interpolate values given on a grid covering the ROI at the original voxels it covers.

    Args:
        low_res: ``(L, L, L)`` values covering the ROI at any resolution: the model's
            low-resolution logits (``L = size / 4``) or a full-resolution array (``L = size``).
            Value ``y`` sits at ROI index ``(y + 0.5) * size / L - 0.5`` (``F.interpolate``'s
            ``align_corners=False`` convention, edges clamped), as in upstream's post-processing.
        roi, volume: the mapping.

    Returns:
        ``(box, values, inside)``: index slices of the covered block of the volume, the
        interpolated values there ``(bi, bj, bk)`` float32, and which of those voxels lie
        inside the ROI (only those may be updated); ``inside`` is ``None`` when every voxel of
        ``box`` does (axis-aligned mappings, where the box is cut to the ROI exactly).
    """
    size, n_low = roi.size, low_res.shape[0]
    to_roi = roi.roi_from_volume(volume)
    box = _footprint(np.linalg.inv(to_roi), size, volume.shape, margin=0)
    shape = tuple(s.stop - s.start for s in box)
    if 0 in shape:
        empty = torch.zeros(shape)
        return box, empty, empty.bool()
    start = np.array([s.start for s in box], dtype=np.float64)
    scale = n_low / size
    low = low_res.float()
    rows = _axis_aligned(np.linalg.inv(to_roi))  # ROI axis a <- volume axis rows[a]
    if rows is not None:
        source = [int(np.where(rows == p)[0][0]) for p in range(3)]  # volume axis p <- ROI axis
        lo, hi, mats = [], [], []
        for p in range(3):
            a = source[p]
            u = to_roi[a, p] * (np.arange(shape[p], dtype=np.float64) + start[p]) + to_roi[a, 3]
            ok = np.nonzero((u >= -0.5) & (u <= size - 0.5))[0]  # a range: u is monotonic in i
            if len(ok) == 0:
                nothing = (slice(0, 0), slice(0, 0), slice(0, 0))
                return nothing, torch.zeros(0, 0, 0), None
            lo.append(int(ok[0]))
            hi.append(int(ok[-1]) + 1)
            y = (u[lo[-1] : hi[-1]] + 0.5) * scale - 0.5
            mats.append(_dense_taps(_taps(y, n_low), n_low))
        inner = tuple(slice(box[p].start + lo[p], box[p].start + hi[p]) for p in range(3))
        # contract so that the last (largest) product runs on contiguous rows, no big permutes
        x = low.permute(source).contiguous()  # low-res grid in volume axis order
        n0 = mats[0].shape[0]
        x = (mats[0] @ x.reshape(n_low, -1)).view(n0, n_low, n_low)
        x = torch.matmul(mats[1], x)  # (n0, n1, L)
        return (inner[0], inner[1], inner[2]), x @ mats[2].T, None
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(
        -1, 3
    )
    u = (grid + start) @ to_roi[:3, :3].T + to_roi[:3, 3]
    inside = np.all((u >= -0.5) & (u <= size - 0.5), axis=1)
    y = (u + 0.5) * scale - 0.5
    norm = (2 * y + 1) / n_low - 1  # align_corners=False
    g = torch.from_numpy(norm[:, ::-1].copy()).float().view(1, *shape, 3)
    values = F.grid_sample(
        low[None, None], g, mode="bilinear", padding_mode="border", align_corners=False
    )
    return box, values[0, 0], torch.from_numpy(inside.reshape(shape))
