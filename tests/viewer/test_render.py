"""Tri-planar overlays: radiological orientation, true aspect ratio, atomic PNG output."""

from __future__ import annotations

import numpy as np
import pytest

from fastsam3d.data.volume import Volume
from fastsam3d.viewer.render import display_planes, render_overlay


def _marked_volume(affine: np.ndarray) -> tuple[Volume, np.ndarray]:
    """A 20x16x12 volume with a mask blob near voxel index 0 along each axis."""
    array = np.zeros((20, 16, 12), np.float32)
    mask = np.zeros(array.shape, bool)
    mask[1:4, 1:4, 1:4] = True
    array[mask] = 100.0
    return Volume(array, affine), mask


def _centroid(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(image)
    return float(rows.mean()), float(cols.mean())


@pytest.mark.parametrize(
    ("diagonal", "right_low", "anterior_low", "superior_low"),
    [
        # RAS+ storage: low i is the patient's left, low j posterior, low k inferior
        ((1.0, 1.0, 1.0), False, False, False),
        # LPS storage (DICOM-like): low i is the patient's right, low j anterior
        ((-1.0, -1.0, 1.0), True, True, False),
        # LAS storage (radiological NIfTI): low i is the patient's right
        ((-1.0, 1.0, 1.0), True, False, False),
    ],
)
def test_planes_follow_the_radiological_convention(
    diagonal: tuple[float, float, float], right_low: bool, anterior_low: bool, superior_low: bool
) -> None:
    affine = np.diag([*diagonal, 1.0])
    volume, mask = _marked_volume(affine)
    axial, coronal, sagittal = display_planes(volume, mask, (2, 2, 2))
    assert (axial.name, coronal.name, sagittal.name) == ("axial", "coronal", "sagittal")
    # the blob is at the patient's right -> it is drawn on the left half of axial/coronal views
    for plane in (axial, coronal):
        _, col = _centroid(plane.labels)
        assert (col < plane.labels.shape[1] / 2) == right_low
    # anterior is up in axial views and on the left in sagittal views
    row, _ = _centroid(axial.labels)
    assert (row < axial.labels.shape[0] / 2) == anterior_low
    _, col = _centroid(sagittal.labels)
    assert (col < sagittal.labels.shape[1] / 2) == anterior_low
    # superior is up in coronal and sagittal views
    for plane in (coronal, sagittal):
        row, _ = _centroid(plane.labels)
        assert (row < plane.labels.shape[0] / 2) == superior_low
    # the image is sliced with the same mapping as the labels
    for plane in (axial, coronal, sagittal):
        np.testing.assert_array_equal(plane.image > 0, plane.labels > 0)


def test_planes_keep_the_true_pixel_aspect_ratio() -> None:
    volume, mask = _marked_volume(np.diag([0.7, 0.7, 3.0, 1.0]))
    axial, coronal, sagittal = display_planes(volume, mask, (2, 2, 2))
    assert axial.aspect == pytest.approx(1.0)
    assert coronal.aspect == pytest.approx(3.0 / 0.7)
    assert sagittal.aspect == pytest.approx(3.0 / 0.7)
    assert axial.labels.shape == (16, 20)
    assert coronal.labels.shape == (12, 20)
    assert sagittal.labels.shape == (12, 16)


def test_planes_of_a_permuted_volume_match_the_canonical_one() -> None:
    """Storing the axes in another order (and flipped) does not change what is displayed."""
    volume, mask = _marked_volume(np.diag([1.0, 1.0, 1.0, 1.0]))
    permuted_array = np.ascontiguousarray(volume.array.transpose(2, 0, 1)[::-1])
    permuted_mask = np.ascontiguousarray(mask.transpose(2, 0, 1)[::-1])
    # new index (a, b, c) = old (b, c, K-1-a): world x = b, y = c, z = K - 1 - a
    k = volume.shape[2]
    affine = np.array(
        [[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, k - 1], [0, 0, 0, 1]], dtype=np.float64
    )
    permuted = Volume(permuted_array, affine)
    point_old = (2, 2, 2)
    point_new = (k - 1 - point_old[2], point_old[0], point_old[1])
    for a, b in zip(
        display_planes(volume, mask, point_old),
        display_planes(permuted, permuted_mask, point_new),
        strict=True,
    ):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.image, b.image)


def test_render_overlay_writes_a_png_atomically(tmp_path) -> None:
    volume, mask = _marked_volume(np.diag([-0.8, -0.8, 2.0, 1.0]))
    out = render_overlay(volume, mask, tmp_path / "sub" / "blob.png", clicks=[((2, 2, 2), True)])
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["blob.png"]
    with pytest.raises(ValueError, match="differ in shape"):
        render_overlay(volume, mask[:-1], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
