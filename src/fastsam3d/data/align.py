"""Label maps onto the voxel grid of their image.

Datasets often store labels with another index order than the image: TotalSegmentator's DICOM
sample has its labels as an LAS NIfTI while the series reads as LPS, and converters differ in
which axes they flip. Both files describe the same world positions, so the labels are moved
onto the image grid through the world (RAS+ mm) frame:

- same grid: the array as is;
- the same voxel centres in another axis order or direction (a signed permutation of axes and
  an integer shift): an exact re-indexing, voxels outside the label array read 0;
- anything else (other spacing, rotation, sub-voxel shift): nearest-neighbour resampling
  (:func:`scipy.ndimage.affine_transform` with ``order=0``), outside reads 0.
"""

from __future__ import annotations

import numpy as np

from .volume import Volume, VolumeError


def _where(volume: Volume) -> str:
    path = volume.source.path if volume.source is not None else None
    return f"{path}" if path is not None else "labels"


def labels_on_grid(labels: Volume, grid: Volume, tol: float = 1e-3) -> np.ndarray:
    """The label values at the voxel centres of ``grid``.

    Args:
        labels: a label map (integer values); any voxel grid overlapping ``grid``.
        grid: the image whose ``(I, J, K)`` grid the result is on.
        tol: in voxels, how close the index map must be to a signed permutation with an integer
            shift to count as exact.

    Returns:
        ``(I, J, K)`` array of ``labels.array``'s dtype.

    Raises:
        VolumeError: when no labelled voxel of ``labels`` falls on ``grid`` (the files do not
            overlap: wrong pairing, or a broken header).
    """
    if labels.shape == grid.shape and np.allclose(labels.affine, grid.affine, atol=tol):
        return labels.array
    # grid voxel index -> label voxel index
    index_map = np.linalg.solve(labels.affine, grid.affine)
    linear, shift = index_map[:3, :3], index_map[:3, 3]
    rounded = np.round(linear)
    exact = (
        np.allclose(linear, rounded, atol=tol)
        and np.allclose(shift, np.round(shift), atol=tol)
        and np.all(np.abs(rounded).sum(axis=0) == 1)
        and np.all(np.abs(rounded).sum(axis=1) == 1)
    )
    if exact:
        out = _reindex(labels.array, rounded.astype(int), np.round(shift).astype(int), grid.shape)
    else:
        from scipy.ndimage import affine_transform

        out = affine_transform(
            labels.array,
            linear,
            offset=shift,
            output_shape=grid.shape,
            output=labels.array.dtype,
            order=0,
            mode="grid-constant",  # edge voxels cover half a voxel beyond their centre
            cval=0,
        )
    if labels.array.any() and not out.any():
        raise VolumeError(
            f"{_where(labels)}: no labelled voxel falls on the image grid {grid.shape} "
            f"(label affine {np.round(labels.affine, 3).tolist()}, image affine "
            f"{np.round(grid.affine, 3).tolist()}); are these files a pair?"
        )
    return out


def _reindex(
    array: np.ndarray, perm: np.ndarray, shift: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """``out[i] = array[perm @ i + shift]`` for a signed permutation ``perm``; 0 outside."""
    indices = []
    for label_axis in range(3):
        grid_axis = int(np.flatnonzero(perm[label_axis])[0])
        sign = perm[label_axis, grid_axis]
        idx = sign * np.arange(shape[grid_axis]) + shift[label_axis]
        inside = (idx >= 0) & (idx < array.shape[label_axis])
        indices.append((grid_axis, np.clip(idx, 0, array.shape[label_axis] - 1), inside))
    # gather along label axes, then order the result's axes as the grid's
    order = [grid_axis for grid_axis, _, _ in indices]
    picked = array[np.ix_(*(idx for _, idx, _ in indices))]
    ok = [inside for _, _, inside in indices]  # (not np.ix_: it reads booleans as masks)
    mask = ok[0][:, None, None] & ok[1][None, :, None] & ok[2][None, None, :]
    picked = np.where(mask, picked, 0).astype(array.dtype, copy=False)
    return np.ascontiguousarray(np.transpose(picked, np.argsort(order)))
