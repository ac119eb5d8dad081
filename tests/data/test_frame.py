"""The model frame: ROI placement, resampling into it and mapping values back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsam3d.data import frame as fr
from fastsam3d.data.volume import Volume

from ..helpers import GEOMETRIES, make_affine

SPEC = fr.FrameSpec(size=32, spacing=1.5)


def _on_volume(result, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, inside) of :func:`roi_values_to_volume` spread over the whole volume grid."""
    box, values, inside = result
    full = torch.zeros(shape)
    covered = torch.zeros(shape, dtype=torch.bool)
    full[box] = values
    covered[box] = True if inside is None else inside
    return full, covered


def _volume(name: str, seed: int = 0) -> Volume:
    shape, direction, spacing = GEOMETRIES[name]
    affine = make_affine(direction, spacing, (10.0, -20.0, 5.5))
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return Volume(data, affine)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_roi_axes_are_the_volume_axes_pointing_to_ras(name: str) -> None:
    volume = _volume(name)
    axes = fr.canonical_axes(volume.affine)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-12)
    assert np.linalg.det(axes) > 0
    assert np.all(np.diag(axes) > 0.5)  # each ROI axis points roughly to +R, +A, +S
    roi = fr.roi_around(volume, np.array(volume.shape) / 2, SPEC)
    assert fr._axis_aligned(roi.volume_from_roi(volume)) is not None  # separable, even oblique


def test_roi_stays_inside_a_large_volume_and_centres_a_small_one() -> None:
    big = Volume.from_array(np.zeros((100, 100, 100)), spacing=(1.0, 1.0, 1.0))
    roi = fr.roi_around(big, np.array([2.0, 50.0, 97.0]), SPEC)  # near two borders
    to_vol = roi.volume_from_roi(big)
    ends = np.array([[0, 0, 0], [31, 31, 31]]) @ to_vol[:3, :3].T + to_vol[:3, 3]
    assert ends.min() >= -0.5
    assert ends.max() <= 99.5
    small = Volume.from_array(np.zeros((10, 60, 10)), spacing=(1.5, 1.5, 1.5))
    roi = fr.roi_around(small, np.array([0.0, 0.0, 9.0]), SPEC)
    centre_index = small.world_to_index(roi.center_world[None])[0]
    np.testing.assert_allclose(centre_index[[0, 2]], [4.5, 4.5], atol=0.5)  # centred (snapped)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_points_round_trip_exactly(name: str) -> None:
    volume = _volume(name)
    roi = fr.roi_around(volume, np.array(volume.shape) / 3, SPEC)
    pts = np.random.default_rng(2).uniform(0, 20, size=(10, 3))
    there = pts @ roi.roi_from_volume(volume)[:3, :3].T + roi.roi_from_volume(volume)[:3, 3]
    back = there @ roi.volume_from_roi(volume)[:3, :3].T + roi.volume_from_roi(volume)[:3, 3]
    np.testing.assert_allclose(back, pts, atol=1e-9)


def test_identity_frame_is_exact() -> None:
    data = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    volume = Volume.from_array(data, spacing=(1.5, 1.5, 1.5))
    roi = fr.roi_around(volume, np.array([3.0, 30.0, 16.0]), SPEC)
    np.testing.assert_allclose(roi.volume_from_roi(volume), np.eye(4), atol=1e-12)
    assert torch.equal(fr.resample_to_roi(volume, roi), torch.from_numpy(data))
    low = torch.randn(8, 8, 8)
    box, values, inside = fr.roi_values_to_volume(low, roi, volume)
    upstream = F.interpolate(low[None, None], size=(32,) * 3, mode="trilinear", align_corners=False)
    assert box == (slice(0, 32),) * 3
    assert inside is None  # the box is exactly the ROI
    torch.testing.assert_close(values, upstream[0, 0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["iso-1.5", "iso-3", "lps", "permuted-flipped"])
def test_mask_round_trip_through_the_frame_is_exact_inside_the_roi(name: str) -> None:
    """Volume mask -> ROI (trilinear) -> back at every voxel (> 0.5): unchanged wherever the
    ROI covers the volume, when volume voxel centres fall on ROI voxel centres (1.5 mm, and
    3 mm thanks to the snapped ROI origin)."""
    shape, direction, spacing = GEOMETRIES[name]
    spacing = tuple(1.5 if s < 2 else 3.0 for s in spacing)
    volume = Volume(
        (np.random.default_rng(3).random(shape) > 0.5).astype(np.float32),
        make_affine(direction, spacing, (3.3, -7.1, 12.9)),
    )
    roi = fr.roi_around(volume, np.array(shape) / 2 + 0.3, SPEC)
    in_roi = fr.resample_to_roi(volume, roi)
    values, inside = _on_volume(fr.roi_values_to_volume(in_roi, roi, volume), shape)
    original = torch.from_numpy(volume.array > 0.5)
    assert inside.sum() > 1000
    assert torch.equal((values > 0.5)[inside], original[inside])


@pytest.mark.parametrize("name", ["oblique", "permuted-flipped", "ras-anisotropic-odd"])
def test_separable_and_grid_sample_paths_agree(name: str, monkeypatch) -> None:
    volume = _volume(name, seed=5)
    roi = fr.roi_around(volume, np.array(volume.shape) / 2, SPEC)
    low = torch.randn(8, 8, 8)
    fast_img = fr.resample_to_roi(volume, roi)
    fast_values, fast_inside = _on_volume(fr.roi_values_to_volume(low, roi, volume), volume.shape)
    monkeypatch.setattr(fr, "_axis_aligned", lambda m, tol=1e-6: None)
    slow_img = fr.resample_to_roi(volume, roi)
    slow_values, slow_inside = _on_volume(fr.roi_values_to_volume(low, roi, volume), volume.shape)
    torch.testing.assert_close(fast_img, slow_img, atol=1e-4, rtol=1e-4)
    assert torch.equal(fast_inside, slow_inside)
    torch.testing.assert_close(
        fast_values[fast_inside], slow_values[slow_inside], atol=1e-4, rtol=1e-4
    )


def test_sheared_affine_uses_the_general_path() -> None:
    affine = make_affine(np.eye(3), (1.0, 1.0, 1.0), (0, 0, 0))
    affine[0, 1] = 0.3  # shear
    volume = Volume(np.ones((20, 20, 20), np.float32), affine)
    roi = fr.roi_around(volume, np.array([10.0, 10.0, 10.0]), SPEC)
    assert fr._axis_aligned(roi.volume_from_roi(volume)) is None
    image = fr.resample_to_roi(volume, roi)
    assert image.max() == pytest.approx(1.0)
    assert image.min() == 0.0  # padding outside the sheared volume


def test_padding_outside_the_volume_is_zero() -> None:
    volume = Volume.from_array(np.full((10, 10, 10), 7.0, np.float32), spacing=(1.5, 1.5, 1.5))
    roi = fr.roi_around(volume, np.array([5.0, 5.0, 5.0]), SPEC)
    image = fr.resample_to_roi(volume, roi)
    assert image.max() == 7.0
    assert (image == 7.0).sum() == 1000  # the 10^3 voxels, nothing else
    assert (image == 0.0).sum() == 32**3 - 1000


def test_normalization_matches_upstream_zscore() -> None:
    x = torch.randn(16, 16, 16) * 100 + 20
    out = fr.normalize_roi(x, "zscore_positive")
    values = x[x > 0]
    torch.testing.assert_close(out, (x - values.mean()) / values.std(), atol=1e-5, rtol=1e-5)
    assert torch.equal(fr.normalize_roi(x, "none"), x)
    flat = fr.normalize_roi(torch.full((4, 4, 4), 3.0), "zscore_positive")
    assert torch.all(flat == 0)  # constant image: shifted, not divided by zero
    negative = fr.normalize_roi(-torch.rand(8, 8, 8), "zscore_positive")
    assert torch.isfinite(negative).all()  # no voxel > 0: whole-ROI statistics


def test_frame_spec_validation() -> None:
    with pytest.raises(ValueError, match="normalization"):
        fr.FrameSpec(normalization="minmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid frame"):
        fr.FrameSpec(spacing=0)
