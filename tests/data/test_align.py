"""Label maps moved onto their image's grid through the world frame."""

from __future__ import annotations

import numpy as np
import pytest

from fastsam3d import samples
from fastsam3d.data.align import labels_on_grid
from fastsam3d.data.io import read_volume
from fastsam3d.data.volume import Volume, VolumeError


def _random_labels(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5, shape).astype(np.uint8)


def _brute_force(labels: Volume, grid: Volume) -> np.ndarray:
    """Nearest label voxel of every grid voxel centre, one voxel at a time."""
    out = np.zeros(grid.shape, labels.array.dtype)
    inverse = np.linalg.inv(labels.affine)
    for idx in np.ndindex(*grid.shape):
        world = grid.affine @ np.array([*idx, 1.0])
        src = np.round((inverse @ world)[:3]).astype(int)
        if np.all(src >= 0) and np.all(src < labels.shape):
            out[idx] = labels.array[tuple(src)]
    return out


def test_the_same_grid_returns_the_array_unchanged() -> None:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    labels = Volume(_random_labels((6, 7, 8)), affine)
    assert labels_on_grid(labels, Volume(np.zeros((6, 7, 8)), affine)) is labels.array


def test_another_axis_order_and_direction_is_reindexed_exactly() -> None:
    grid_affine = np.array(
        [[-0.9, 0, 0, 40.0], [0, -0.9, 0, 60.0], [0, 0, 2.0, -100.0], [0, 0, 0, 1]]
    )
    grid = Volume(np.zeros((6, 7, 8), np.float32), grid_affine)
    truth = _random_labels(grid.shape)
    # store the labels with axes (k, i, j) and j, k reversed: new[a, b, c] = truth[b, J-1-c, K-1-a]
    stored = np.ascontiguousarray(truth.transpose(2, 0, 1)[::-1, :, ::-1])
    n_j, n_k = truth.shape[1], truth.shape[2]
    index_map = np.zeros((4, 4))  # stored index (a, b, c, 1) -> grid index (i, j, k, 1)
    index_map[0, 1] = 1
    index_map[1, 2], index_map[1, 3] = -1, n_j - 1
    index_map[2, 0], index_map[2, 3] = -1, n_k - 1
    index_map[3, 3] = 1
    labels = Volume(stored, grid_affine @ index_map)
    np.testing.assert_array_equal(labels_on_grid(labels, grid), truth)


def test_a_shifted_label_box_reads_zero_outside() -> None:
    grid = Volume(np.zeros((10, 10, 10), np.float32), np.eye(4))
    box = _random_labels((4, 5, 6)) + 1
    affine = np.eye(4)
    affine[:3, 3] = (3, -2, 7)  # label voxel (0, 0, 0) is grid voxel (3, -2, 7)
    labels = Volume(box, affine)
    out = labels_on_grid(labels, grid)
    expected = np.zeros(grid.shape, np.uint8)
    expected[3:7, 0:3, 7:10] = box[:, 2:5, 0:3]
    np.testing.assert_array_equal(out, expected)


def test_other_spacing_and_rotation_use_nearest_neighbours() -> None:
    theta = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    label_affine = np.eye(4)
    label_affine[:3, :3] = rotation @ np.diag([2.0, 2.0, 3.0])
    label_affine[:3, 3] = (1.3, -0.7, 0.45)  # no voxel centre exactly half-way
    labels = Volume(_random_labels((8, 8, 6), seed=3), label_affine)
    grid = Volume(np.zeros((12, 11, 9), np.float32), np.diag([1.1, 1.1, 1.7, 1.0]))
    out = labels_on_grid(labels, grid)
    np.testing.assert_array_equal(out, _brute_force(labels, grid))
    assert out.dtype == np.uint8


def test_labels_that_miss_the_image_are_refused() -> None:
    grid = Volume(np.zeros((8, 8, 8), np.float32), np.eye(4))
    affine = np.eye(4)
    affine[:3, 3] = (100.0, 0.0, 0.0)
    with pytest.raises(VolumeError, match="no labelled voxel falls on the image grid"):
        labels_on_grid(Volume(np.ones((4, 4, 4), np.uint8), affine), grid)


def test_the_dicom_sample_labels_are_flipped_onto_the_series_grid() -> None:
    """The sample's labels are an LAS NIfTI; the DICOM series reads as LPS (j reversed)."""
    sample = samples.sample("ct_dicom")
    image = read_volume(sample.image)
    labels = read_volume(sample.labels)
    assert labels.shape == image.shape
    assert not np.allclose(labels.affine, image.affine)
    out = labels_on_grid(labels, image)
    np.testing.assert_array_equal(out, labels.array[:, ::-1, :])
    # the liver (label 5) lies on the patient's right: low i, as the image's LPS grid has it
    liver_i = np.argwhere(out == 5)[:, 0].mean()
    assert liver_i < image.shape[0] / 2
