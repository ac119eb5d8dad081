"""The interactive Session: geometry end to end, protocol, caching, undo, errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import fastsam3d
from fastsam3d.conformance import (
    fixture_state_dict,
    fixtures,
    load_reference,
    model_shapes,
    write_upstream_checkpoint,
)
from fastsam3d.data.frame import FrameSpec, roi_around
from fastsam3d.data.io import read_volume
from fastsam3d.data.volume import Volume
from fastsam3d.interactive.session import CARRIED_LOGIT, Session, mask_prompt

from ..conftest import FIXTURES
from ..helpers import GEOMETRIES, OracleModel, blob_volume, make_affine, write_dicom_series

CENTER = np.array([12.0, -30.0, 41.0])  # world RAS mm


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_blob_clicked_at_its_centre_comes_back_on_the_right_voxels(name: str) -> None:
    shape, direction, spacing = GEOMETRIES[name]
    origin = CENTER - make_affine(direction, spacing, (0, 0, 0))[:3, :3] @ (np.array(shape) / 2)
    affine = make_affine(direction, spacing, origin)
    truth = blob_volume(shape, affine, CENTER, radius_mm=18.0)
    volume = Volume(truth, affine)
    oracle = OracleModel(size=64)
    session = Session(oracle, frame=FrameSpec(size=64, normalization="none"))  # type: ignore[arg-type]
    session.set_image(volume)
    click = np.round(volume.world_to_index(CENTER[None])[0])
    result = session.add_click(click)
    assert result is not None
    mask = result.mask
    assert mask[tuple(click.astype(int))]
    assert _dice(mask, truth > 0) > 0.94  # (boundary blur of the 6 mm low-resolution logits)
    # a misregistration by one voxel would move the centroid by >= 1 mm
    centroid = volume.index_to_world(np.argwhere(mask).mean(axis=0)[None])[0]
    truth_centroid = volume.index_to_world(np.argwhere(truth > 0).mean(axis=0)[None])[0]
    assert np.linalg.norm(centroid - truth_centroid) < 0.25
    # the model was told exactly the voxel the user named
    sent = oracle.calls[-1]["points"][0].numpy().astype(np.float64)
    to_vol = result.roi.volume_from_roi(volume)
    np.testing.assert_allclose(sent @ to_vol[:3, :3].T + to_vol[:3, 3], click[None], atol=1e-4)


def test_world_clicks_ras_and_lps_name_the_same_voxel() -> None:
    shape, direction, spacing = GEOMETRIES["oblique"]
    affine = make_affine(direction, spacing, (-20.0, 15.0, 3.0))
    volume = Volume(blob_volume(shape, affine, affine[:3, 3] + 20, 10.0), affine)
    index = np.array([20.0, 21.0, 15.0])
    ras, lps = volume.index_to_world(index[None])[0], volume.index_to_world(index[None], "lps")[0]
    results = []
    for point, world in ((index, None), (ras, "ras"), (lps, "lps")):
        oracle = OracleModel(size=32)
        session = Session(oracle, frame=FrameSpec(size=32, normalization="none"))  # type: ignore[arg-type]
        session.set_image(volume)
        session.add_click(point, world=world)
        results.append((session.mask.copy(), oracle.calls[-1]["points"]))
    for mask, points in results[1:]:
        assert np.array_equal(mask, results[0][0])
        torch.testing.assert_close(points, results[0][1])


def test_nifti_and_dicom_versions_give_the_same_world_mask(tmp_path: Path) -> None:
    shape, direction, spacing = GEOMETRIES["lps"]
    affine = make_affine(direction, spacing, (30.0, 40.0, -50.0))
    center = affine[:3, 3] + affine[:3, :3] @ (np.array(shape) / 2)
    data = blob_volume(shape, affine, center, 15.0).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "blob.nii.gz"))
    write_dicom_series(data, affine, tmp_path / "dicom")
    masks = []
    for path in (tmp_path / "blob.nii.gz", tmp_path / "dicom"):
        volume = read_volume(path)
        session = Session(OracleModel(size=64), frame=FrameSpec(size=64, normalization="none"))  # type: ignore[arg-type]
        session.set_image(volume)
        session.add_click(center, world="ras")
        masks.append((volume, session.mask.copy()))
    (v1, m1), (v2, m2) = masks
    assert m1.sum() > 100
    assert np.array_equal(m1, m2)
    idx = np.argwhere(m1).astype(float)
    np.testing.assert_allclose(v1.index_to_world(idx), v2.index_to_world(idx), atol=1e-3)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> fastsam3d.Sam3D:
    (fx,) = [f for f in fixtures() if "student" in f.name]
    path = tmp_path_factory.mktemp("w") / "student.pth"
    write_upstream_checkpoint(path, fixture_state_dict(model_shapes(fx.config)), "training")
    return fastsam3d.load_model("fastsam3d", path)


def test_session_reproduces_model_decode_exactly(student) -> None:
    """A volume already in the model frame (128^3, 1.5 mm, RAS, normalised): the Session's
    logits equal encode + decode bit for bit, for the first click (all-zero mask prompt) and
    a second one (newest point + previous logits)."""
    ref = load_reference(FIXTURES / "fastsam3d_io_compact.pt")
    image, points, labels = ref["input"], ref["points"], ref["labels"]
    with torch.inference_mode():
        emb = student.encode(image)
        first, _ = student.decode(emb, points, labels, torch.zeros(1, 1, 32, 32, 32))
        second, _ = student.decode(emb, points[:, 1:2], labels[:, 1:2], first)
    session = Session(student, frame=FrameSpec(normalization="none"), runtime="torch")
    session.set_image(image[0, 0].numpy(), spacing=(1.5, 1.5, 1.5))
    for point, label in zip(points[0].tolist(), labels[0].tolist(), strict=True):
        session.add_click(point, positive=bool(label), predict=False)
    r1 = session.predict()
    r2 = session.add_click(points[0, 1].tolist())
    assert r2 is not None
    assert torch.equal(r1.logits, first)
    assert torch.equal(r2.logits, second)
    assert r1.new_region
    assert not r2.new_region
    upstream = fastsam3d.upsample_logits(second, 128)[0, 0].numpy()
    # two interpolation codes: they may split a voxel whose logit is within rounding of 0
    # (one voxel at 6e-10 with 2 threads, none with 1)
    differ = r2.mask != (upstream > 0)
    assert np.all(np.abs(upstream[differ]) < 1e-6)
    assert differ.sum() <= 2


def _tiny_session(prompting="newest") -> tuple[Session, Volume]:
    model = fastsam3d.load_model("test-tiny", seed=1, random_weights=True)
    volume = Volume.from_array(
        np.random.default_rng(0).normal(size=(60, 50, 40)).astype(np.float32),
        spacing=(1.0, 1.0, 1.0),
    )
    session = Session(model, prompting=prompting, runtime="torch")
    session.set_image(volume)
    return session, volume


def test_encoder_runs_once_per_region(monkeypatch) -> None:
    session, _ = _tiny_session()
    calls = []
    original = session.model.encode
    monkeypatch.setattr(session.model, "encode", lambda x: calls.append(1) or original(x))
    first = session.add_click((30, 25, 20))
    assert first is not None
    assert first.new_region
    for point in [(31, 25, 20), (28, 27, 22), (33, 20, 18), (30, 30, 25)]:
        result = session.add_click(point, positive=False)
        assert result is not None
        assert not result.new_region
        assert result.timings_ms["encode"] == 0.0
    assert len(calls) == 1
    far = session.add_click((2, 2, 2))  # outside the 48 mm ROI: new region
    assert far is not None
    assert far.new_region
    assert len(calls) == 2
    session.add_click((30, 25, 20))  # back in the first region: cached embedding
    assert len(calls) == 2


def test_protocol_newest_point_and_previous_logits() -> None:
    oracle = OracleModel(size=32)
    session = Session(oracle, frame=FrameSpec(size=32))  # type: ignore[arg-type]
    session.set_image(np.random.default_rng(1).normal(size=(40, 40, 40)).astype(np.float32))
    r1 = session.add_click((20, 20, 20))
    r2 = session.add_click((22, 20, 20), positive=False)
    assert r1 is not None
    assert r2 is not None
    first, second = oracle.calls
    assert torch.equal(first["mask"], torch.zeros(1, 1, 8, 8, 8))  # upstream's first click
    assert torch.equal(second["mask"], r1.logits)  # previous logits fed back
    assert second["points"].shape == (1, 1, 3)  # only the newest point
    assert second["labels"].tolist() == [[0]]


def test_protocol_all_points() -> None:
    oracle = OracleModel(size=32)
    session = Session(oracle, frame=FrameSpec(size=32), prompting="all")  # type: ignore[arg-type]
    session.set_image(np.random.default_rng(1).normal(size=(40, 40, 40)).astype(np.float32))
    session.add_click((20, 20, 20))
    session.add_click((22, 20, 20), positive=False)
    session.add_click((18, 21, 19))
    assert oracle.calls[-1]["points"].shape == (1, 3, 3)
    assert oracle.calls[-1]["labels"].tolist() == [[1, 0, 1]]


def test_undo_restores_the_previous_mask_exactly() -> None:
    session, _ = _tiny_session()
    session.add_click((30, 25, 20))
    session.add_click((32, 26, 21), positive=False)
    before = session.mask.copy()
    logits_before = session._logits
    third = session.add_click((29, 22, 18))
    assert third is not None
    assert session.undo()
    assert np.array_equal(session.mask, before)
    assert session._logits is logits_before
    assert len(session.prompts) == 2
    again = session.add_click((29, 22, 18))  # same click again: same result
    assert again is not None
    assert np.array_equal(again.mask, third.mask)
    while session.undo():
        pass
    assert not session.mask.any()
    assert session.prompts == ()
    assert not session.undo()


def test_undo_depth_is_bounded_and_exact_within_it() -> None:
    model = fastsam3d.load_model("test-tiny", seed=1, random_weights=True)
    volume = Volume.from_array(
        np.random.default_rng(0).normal(size=(60, 50, 40)).astype(np.float32),
        spacing=(1.0, 1.0, 1.0),
    )
    session = Session(model, runtime="torch", max_history=2)
    session.set_image(volume)
    masks = []
    for point in ((30, 25, 20), (31, 26, 20), (29, 24, 21), (30, 27, 19)):
        session.add_click(point)
        masks.append(session.mask.copy())
    assert session.can_undo
    assert session.undo()
    assert np.array_equal(session.mask, masks[2])
    assert session.undo()
    assert np.array_equal(session.mask, masks[1])
    assert not session.can_undo
    assert not session.undo()  # older steps were dropped ...
    assert len(session.prompts) == 2  # ... but their clicks are still listed
    with pytest.raises(ValueError, match="max_history"):
        Session(model, runtime="torch", max_history=0)


def test_undo_of_a_pending_click_and_reset_keeps_the_cache(monkeypatch) -> None:
    session, _ = _tiny_session()
    session.add_click((30, 25, 20))
    session.add_click((31, 25, 20), predict=False)
    assert len(session.prompts) == 2
    assert session.undo()
    assert len(session.prompts) == 1
    calls = []
    original = session.model.encode
    monkeypatch.setattr(session.model, "encode", lambda x: calls.append(1) or original(x))
    session.reset()
    assert not session.mask.any()
    assert session.prompts == ()
    session.add_click((30, 25, 20))
    assert calls == []  # same region: embedding still cached


def test_mask_is_read_only_and_results_are_snapshots() -> None:
    session, _ = _tiny_session()
    r1 = session.add_click((30, 25, 20))
    with pytest.raises(ValueError, match="read-only"):
        session.mask[0, 0, 0] = True
    session.add_click((25, 25, 20), positive=False)
    assert r1 is not None
    assert not np.shares_memory(r1.mask, session.mask)


def test_one_model_serves_several_sessions() -> None:
    model = fastsam3d.load_model("test-tiny", seed=2, random_weights=True)
    vol_a = np.random.default_rng(3).normal(size=(40, 40, 40)).astype(np.float32)
    vol_b = np.random.default_rng(4).normal(size=(50, 30, 40)).astype(np.float32)
    alone = []
    for vol, point in ((vol_a, (20, 20, 20)), (vol_b, (10, 15, 30))):
        s = Session(model, runtime="torch")
        s.set_image(vol)
        s.add_click(point)
        s.add_click(point, positive=False)
        alone.append(s.mask.copy())
    a, b = Session(model, runtime="torch"), Session(model, runtime="torch")
    a.set_image(vol_a)
    b.set_image(vol_b)
    a.add_click((20, 20, 20))
    b.add_click((10, 15, 30))
    a.add_click((20, 20, 20), positive=False)
    b.add_click((10, 15, 30), positive=False)
    assert np.array_equal(a.mask, alone[0])
    assert np.array_equal(b.mask, alone[1])


@pytest.mark.parametrize(
    ("point", "kwargs", "match"),
    [
        ((60, 0, 0), {}, r"voxel index \(60, 0, 0\) lies outside the image"),
        ((-1, 3, 3), {}, "outside the image"),
        ((1, 2), {}, "3 finite numbers"),
        ((1, float("nan"), 2), {}, "3 finite numbers"),
        (("a", "b", "c"), {}, "3 numbers"),
        ((1e4, 0, 0), {"world": "ras"}, "world point .* lies outside"),
    ],
)
def test_bad_points(point, kwargs, match) -> None:
    session, _ = _tiny_session()
    with pytest.raises(ValueError, match=match):
        session.add_click(point, **kwargs)
    assert session.prompts == ()


def test_call_order_errors() -> None:
    session = Session(fastsam3d.load_model("test-tiny", random_weights=True), runtime="torch")
    with pytest.raises(RuntimeError, match=r"call set_image\(\.\.\.\) first"):
        session.add_click((1, 2, 3))
    with pytest.raises(RuntimeError, match="set_image"):
        session.reset()
    session.set_image(np.zeros((10, 10, 10), np.float32))
    with pytest.raises(RuntimeError, match="no new clicks"):
        session.predict()


def test_bad_images_and_settings() -> None:
    model = fastsam3d.load_model("test-tiny", random_weights=True)
    with pytest.raises(ValueError, match="NaN or infinite"):
        Session(model, runtime="torch").set_image(np.full((10, 10, 10), np.nan, np.float32))
    with pytest.raises(ValueError, match="expected a 3D array"):
        Session(model, runtime="torch").set_image(np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match="frame size 128 differs"):
        Session(model, frame=FrameSpec(size=128), runtime="torch")
    with pytest.raises(ValueError, match="prompting"):
        Session(model, prompting="first", runtime="torch")  # type: ignore[arg-type]


def test_clicks_too_far_apart_for_one_region() -> None:
    session, _ = _tiny_session()
    session.add_click((1, 1, 1), predict=False)
    session.add_click((58, 48, 38), predict=False)
    with pytest.raises(ValueError, match="too far apart"):
        session.predict()


def test_set_mask_starts_from_an_existing_mask() -> None:
    session, volume = _tiny_session()
    session.add_click((30, 25, 20))
    start = np.zeros(volume.shape, bool)
    start[5:10, 5:10, 5:10] = True
    session.set_mask(start.astype(np.uint8))
    assert np.array_equal(session.mask, start)
    assert session.prompts == ()
    assert not session.can_undo
    result = session.add_click((40, 40, 30))  # a click recomputes its region only ...
    assert result is not None
    assert result.new_region
    assert session.mask[5:10, 5:10, 5:10].all()  # ... which does not reach this block
    with pytest.raises(ValueError, match="differs from the image"):
        session.set_mask(np.zeros((2, 2, 2), bool))


def test_mask_prompt_cells_follow_the_mask() -> None:
    volume = Volume.from_array(np.zeros((40, 40, 40), np.float32), (1.5, 1.5, 1.5))
    roi = roi_around(volume, np.array([20.0, 20.0, 20.0]), FrameSpec(size=32))
    offset = roi.volume_from_roi(volume)[:3, 3]
    assert np.array_equal(offset, [4, 4, 4])  # ROI voxel u is volume voxel u + 4
    mask = np.zeros(volume.shape, bool)
    mask[4 + 8 : 4 + 16, 4:36, 4 + 20 : 4 + 22] = True  # ROI cells 2-3 on axis 0, half of cell 5
    prompt = mask_prompt(Volume(mask, volume.affine), roi, 8)
    assert prompt is not None
    assert prompt.shape == (1, 1, 8, 8, 8)
    expected = torch.full((8, 8, 8), -CARRIED_LOGIT)
    expected[2:4, :, 5] = 0.0  # half the cell's voxels: fraction 0.5
    torch.testing.assert_close(prompt[0, 0], expected)
    assert mask_prompt(Volume(mask, volume.affine), roi, 8, magnitude=2.0)[0, 0, 2, 0, 5] == 0.0
    full = np.zeros(volume.shape, bool)
    full[4:36, 4:36, 4:36] = True
    assert torch.equal(
        mask_prompt(Volume(full, volume.affine), roi, 8, magnitude=3.0),
        torch.full((1, 1, 8, 8, 8), 3.0),
    )
    outside = np.zeros(volume.shape, bool)
    outside[:2] = True  # nothing of it in the ROI
    assert mask_prompt(Volume(outside, volume.affine), roi, 8) is None
    with pytest.raises(ValueError, match="not a multiple"):
        mask_prompt(Volume(mask, volume.affine), roi, 5)


@pytest.mark.parametrize("carry", [True, False])
def test_a_new_region_starts_from_the_mask_it_covers(carry: bool) -> None:
    oracle = OracleModel(size=32)
    frame = FrameSpec(size=32, normalization="none")
    session = Session(oracle, frame=frame, carry_mask=carry)  # type: ignore[arg-type]
    image = np.zeros((160, 40, 40), np.float32)
    image[10:60, 10:30, 10:30] = 1.0  # the oracle segments voxels > 0.5
    volume = Volume.from_array(image)
    session.set_image(volume)
    start = np.zeros(volume.shape, bool)
    start[10:30, 10:30, 10:30] = True  # an imported mask
    session.set_mask(start)
    first = session.add_click((20, 20, 20))
    assert first is not None
    assert first.new_region
    sent = oracle.calls[0]["mask"]
    assert sent is not None
    if carry:
        expected = mask_prompt(Volume(start, volume.affine), first.roi, 8)
        assert expected is not None
        assert expected.max() == CARRIED_LOGIT
        torch.testing.assert_close(sent, expected)
    else:
        assert torch.equal(sent, torch.zeros(1, 1, 8, 8, 8))
    # a second region overlapping the first starts from the mask as the first left it
    before = session.mask.copy()
    second = session.add_click((60, 20, 20))
    assert second is not None
    assert second.new_region
    if carry:
        expected = mask_prompt(Volume(before, volume.affine), second.roi, 8)
        assert expected is not None
        torch.testing.assert_close(oracle.calls[1]["mask"], expected)
    else:
        assert torch.equal(oracle.calls[1]["mask"], torch.zeros(1, 1, 8, 8, 8))
    # a region far from every foreground voxel gets the all-zero prompt of a first click
    before = session.mask.copy()
    far = session.add_click((140, 20, 20))
    assert far is not None
    assert far.new_region
    assert not before[far.changed].any()
    assert torch.equal(oracle.calls[2]["mask"], torch.zeros(1, 1, 8, 8, 8))
