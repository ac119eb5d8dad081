"""Tri-planar PNG overlays of a mask on its volume, headless and deterministic.

The volume is reoriented to RAS+ voxel axes (nibabel's closest canonical orientation, no
resampling) and shown in the radiological convention: axial and coronal views have the
patient's right on the left of the image, sagittal views anterior on the left; anterior /
superior up; pixels have their true aspect ratio from the voxel spacing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.volume import Volume
from ..errors import InputError
from ..files import atomic_output


def _canonical(
    volume: Volume, *arrays: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray, tuple[float, ...]]:
    """Arrays reoriented to RAS+ axes, the index map old -> new, and the new spacing."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(volume.affine)
    out = [nio.apply_orientation(a, ornt) for a in arrays]
    spacing = tuple(float(np.asarray(volume.spacing)[int(ax)]) for ax in ornt[:, 0].argsort())
    return out, ornt, spacing


def _map_index(
    index: Sequence[float], ornt: np.ndarray, shape: Sequence[int]
) -> tuple[int, int, int]:
    """A voxel index of the original array in the reoriented array."""
    new = [0, 0, 0]
    for old_axis, (new_axis, flip) in enumerate(ornt):
        value = float(index[old_axis])
        n = shape[old_axis]
        new[int(new_axis)] = round(n - 1 - value if flip < 0 else value)
    return new[0], new[1], new[2]


@dataclass(frozen=True)
class Plane:
    """One displayed slice: ``image``/``labels`` are (rows, columns) as drawn on screen.

    ``axes`` are the RAS+ axes shown along columns and rows, ``normal`` the axis the slice cuts,
    ``aspect`` the height / width of one pixel (from the voxel spacing).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    axes: tuple[int, int]
    normal: int
    aspect: float


def display_planes(volume: Volume, mask: np.ndarray, point: Sequence[float]) -> list[Plane]:
    """Axial, coronal and sagittal slices through ``point`` (a voxel index of ``volume``).

    Radiological convention: in axial and coronal planes the patient's right is on the left of
    the screen; in sagittal planes anterior is on the left; anterior/superior point up.
    """
    if mask.shape != volume.shape:
        raise InputError(f"mask {mask.shape} and volume {volume.shape} differ in shape")
    (image, labels), ornt, spacing = _canonical(
        volume, np.asarray(volume.array, np.float32), mask.astype(np.uint8)
    )
    c = _map_index(point, ornt, volume.shape)
    cuts = [
        ("axial", (0, 1), 2, image[:, :, c[2]], labels[:, :, c[2]]),
        ("coronal", (0, 2), 1, image[:, c[1], :], labels[:, c[1], :]),
        ("sagittal", (1, 2), 0, image[c[0], :, :], labels[c[0], :, :]),
    ]
    planes = []
    for name, (a0, a1), normal, img, lab in cuts:
        # rows: the second axis (A or S) pointing up; columns: the first axis (R or A) reversed,
        # so larger R / A coordinates are on the left of the screen
        planes.append(
            Plane(
                name=name,
                image=np.ascontiguousarray(img.T[::-1, ::-1]),
                labels=np.ascontiguousarray(lab.T[::-1, ::-1]),
                axes=(a0, a1),
                normal=normal,
                aspect=spacing[a1] / spacing[a0],
            )
        )
    return planes


def render_overlay(
    volume: Volume,
    mask: np.ndarray,
    out_png: str | os.PathLike[str],
    clicks: Sequence[tuple[Sequence[float], bool]] = (),
    center: Sequence[float] | None = None,
    title: str = "",
    window: tuple[float, float] | None = None,
) -> Path:
    """Write axial, coronal and sagittal slices with the mask outlined and the clicks marked.

    Args:
        volume: the image; ``mask``: ``(I, J, K)`` bool on its grid.
        clicks: ``((i, j, k), positive)`` voxel indices of the volume.
        center: voxel index the three slices pass through (default: first click, else the mask's
            centroid, else the volume centre).
        window: intensity display range (default: CT soft tissue for CT-like data, else the 1-99
            percentiles).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if mask.shape != volume.shape:
        raise InputError(f"mask {mask.shape} and volume {volume.shape} differ in shape")
    point: Sequence[float]
    if center is not None:
        point = center
    elif clicks:
        point = clicks[0][0]
    elif mask.any():
        point = np.argwhere(mask).mean(axis=0).tolist()
    else:
        point = (np.array(volume.shape) / 2).tolist()
    planes = display_planes(volume, mask, point)
    if window is None:
        image = np.asarray(volume.array, np.float32)
        lo, hi = np.percentile(image, [1, 99])
        window = (-160.0, 240.0) if lo < -500 else (float(lo), float(hi))
    ornt = _canonical(volume)[1]
    c = _map_index(point, ornt, volume.shape)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=110)
    for ax, plane in zip(axes, planes, strict=True):
        shown_img, shown_lab, aspect = plane.image, plane.labels, plane.aspect
        ax.imshow(
            shown_img,
            cmap="gray",
            vmin=window[0],
            vmax=window[1],
            aspect=aspect,
            interpolation="nearest",
        )
        if shown_lab.any():
            ax.imshow(
                np.ma.masked_where(shown_lab == 0, shown_lab),
                cmap="autumn",
                alpha=0.35,
                aspect=aspect,
                interpolation="nearest",
            )
            ax.contour(shown_lab, levels=[0.5], colors="yellow", linewidths=0.8)
        for index, positive in clicks:
            p = _map_index(index, ornt, volume.shape)
            if abs(p[plane.normal] - c[plane.normal]) > 1:
                continue
            a0, a1 = plane.axes
            col = shown_img.shape[1] - 1 - p[a0]
            row = shown_img.shape[0] - 1 - p[a1]
            ax.plot(
                col,
                row,
                marker="+" if positive else "x",
                color="lime" if positive else "red",
                markersize=12,
                markeredgewidth=2,
            )
        ax.set_title(plane.name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    try:
        with atomic_output(out, suffix=".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return out
