"""A 3D image with its geometry: the one volume type of the package.

Coordinate conventions (used everywhere in fastsam3d):

- **Voxel index** ``(i, j, k)``: position in :attr:`Volume.array`, which is stored in the file's
  own index order: ``i`` along the file's first axis, as nibabel, ITK-SNAP and 3D Slicer show
  it (NIfTI: as stored; ITK formats and DICOM: ``i`` = column, ``j`` = row, ``k`` = slice). Voxel
  ``(i, j, k)`` is the *centre* of that voxel; continuous indices are allowed.
- **World** coordinates in millimetres, either RAS+ (+x towards the patient's Right, +y
  Anterior, +z Superior: nibabel's and NIfTI's convention) or LPS+ (+x Left, +y Posterior,
  +z Superior: ITK's and DICOM's). :attr:`Volume.affine` maps voxel indices to RAS+; LPS+ is RAS+
  with x and y negated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import InputError

WorldConvention = Literal["ras", "lps"]

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""4x4 matrix that flips x and y: maps LPS+ to RAS+ (and back: it is its own inverse)."""


class VolumeError(InputError):
    """A volume cannot be read, used or written; the message names the file and the problem."""


@dataclass(frozen=True)
class VolumeSource:
    """Where a volume came from and what is needed to write data back on its exact grid.

    Attributes:
        path: file or DICOM folder.
        format: ``"nifti"``, ``"nrrd"``, ``"mha"``, ``"mhd"``, ``"dicom"`` or ``"array"``.
        nifti_header: the NIfTI header (qform/sform and codes kept exactly), for NIfTI inputs.
        itk_geometry: ``(origin, spacing, direction)`` as ITK read them (LPS), for ITK inputs.
        metadata: selected text metadata (e.g. DICOM modality, series description).
    """

    path: Path | None
    format: str
    nifti_header: Any = None
    itk_geometry: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scalar image.

    Attributes:
        array: ``(I, J, K)`` voxel values in the file's index order (any numeric dtype).
        affine: ``(4, 4)`` float64, voxel index ``(i, j, k, 1)`` -> world RAS+ mm.
        source: provenance and write-back information (``None`` for arrays built in memory).
    """

    array: np.ndarray
    affine: np.ndarray
    source: VolumeSource | None = None

    def __post_init__(self) -> None:
        where = f"{self.source.path}: " if self.source and self.source.path else ""
        if self.array.ndim != 3:
            raise VolumeError(f"{where}expected a 3D array, got shape {self.array.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise VolumeError(f"{where}affine must be a finite 4x4 matrix, got {self.affine!r}")
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(spacing <= 0) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise VolumeError(
                f"{where}voxel spacing must be positive and the axes independent, got spacing "
                f"{tuple(np.round(spacing, 6))} (affine {affine.tolist()})"
            )
        object.__setattr__(self, "affine", affine)

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        affine: np.ndarray | None = None,
    ) -> Volume:
        """A volume from an ``(I, J, K)`` array with an axis-aligned RAS+ grid (or ``affine``)."""
        if affine is None:
            affine = np.diag([*map(float, spacing), 1.0])
        return cls(
            np.asarray(array), np.asarray(affine, dtype=np.float64), VolumeSource(None, "array")
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        i, j, k = self.array.shape
        return (i, j, k)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``i, j, k``."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    def world_affine(self, convention: WorldConvention = "ras") -> np.ndarray:
        """Voxel index -> world mm in the named convention."""
        if convention == "ras":
            return self.affine
        if convention == "lps":
            return RAS_FROM_LPS @ self.affine
        raise InputError(f"world convention must be 'ras' or 'lps', got {convention!r}")

    def index_to_world(self, points: np.ndarray, convention: WorldConvention = "ras") -> np.ndarray:
        """``(N, 3)`` voxel indices -> ``(N, 3)`` world mm."""
        m = self.world_affine(convention)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return pts @ m[:3, :3].T + m[:3, 3]

    def world_to_index(self, points: np.ndarray, convention: WorldConvention = "ras") -> np.ndarray:
        """``(N, 3)`` world mm -> ``(N, 3)`` continuous voxel indices."""
        m = np.linalg.inv(self.world_affine(convention))
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return pts @ m[:3, :3].T + m[:3, 3]

    def describe(self) -> str:
        """One line: shape, spacing, orientation codes, dtype, value range."""
        codes = "".join(orientation_codes(self.affine))
        spacing = "x".join(f"{s:g}" for s in self.spacing)
        return (
            f"{self.shape[0]}x{self.shape[1]}x{self.shape[2]} voxels, {spacing} mm, {codes}, "
            f"{self.array.dtype}"
        )


def orientation_codes(affine: np.ndarray) -> tuple[str, str, str]:
    """Closest world direction of each voxel axis, e.g. ``("R", "A", "S")`` (as nibabel's
    ``aff2axcodes``: the letter the axis points *towards*)."""
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    codes = []
    for axis in np.asarray(affine)[:3, :3].T:
        w = int(np.argmax(np.abs(axis)))
        codes.append(labels[w][1] if axis[w] > 0 else labels[w][0])
    return (codes[0], codes[1], codes[2])


def check_voxels(volume: Volume) -> None:
    """Raise :class:`VolumeError` for non-finite or non-numeric voxels."""
    where = volume.source.path if volume.source and volume.source.path else "image"
    arr = volume.array
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise VolumeError(
                f"{where}: {bad} voxels are NaN or infinite; replace them (e.g. with the "
                "background value) before segmenting"
            )
    elif arr.dtype.kind not in "iub":
        raise VolumeError(f"{where}: unsupported voxel type {arr.dtype}; expected real numbers")
