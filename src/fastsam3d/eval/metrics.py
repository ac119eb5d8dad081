"""Overlap and boundary metrics on boolean masks (numpy).

Conventions: both masks empty -> ``nan`` (undefined; averaged with ``nanmean``, as upstream
does for Dice); exactly one empty -> 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import edt
import numpy as np
from scipy import ndimage

from ..errors import InputError


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """``2 |P & G| / (|P| + |G|)``."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise InputError(f"shapes differ: {p.shape} vs {g.shape}")
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, g).sum()) / total


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one 6-neighbour outside it (the image border counts as
    outside)."""
    m = np.asarray(mask, bool)
    if not m.any():
        return m.copy()
    eroded = ndimage.binary_erosion(
        m, structure=ndimage.generate_binary_structure(3, 1), border_value=0
    )
    return m & ~eroded


def normalized_surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0
) -> float:
    """Normalised surface Dice (Nikolov et al. 2021) with voxel surfaces.

    ``(|S_P within tol of S_G| + |S_G within tol of S_P|) / (|S_P| + |S_G|)``, where ``S`` are
    the :func:`surface_voxels` and distances are Euclidean in mm between voxel centres
    (anisotropic ``spacing``). Each surface voxel counts once (no surface-area weighting).
    """
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise InputError(f"shapes differ: {p.shape} vs {g.shape}")
    sp, sg = surface_voxels(p), surface_voxels(g)
    n_p, n_g = int(sp.sum()), int(sg.sum())
    if n_p == 0 and n_g == 0:
        return float("nan")
    if n_p == 0 or n_g == 0:
        return 0.0
    # work inside the bounding box of both surfaces, grown by the tolerance
    both = np.argwhere(sp | sg)
    margin = np.ceil(tolerance_mm / np.asarray(spacing, float)).astype(int) + 1
    lo = np.maximum(both.min(axis=0) - margin, 0)
    hi = np.minimum(both.max(axis=0) + margin + 1, p.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sp, sg = sp[box], sg[box]
    aniso = tuple(float(s) for s in spacing)
    to_g = edt.edt(~sg, anisotropy=aniso, black_border=False, parallel=1)
    to_p = edt.edt(~sp, anisotropy=aniso, black_border=False, parallel=1)
    close = int((to_g[sp] <= tolerance_mm).sum()) + int((to_p[sg] <= tolerance_mm).sum())
    return close / (n_p + n_g)
