"""The slice-wise predictor for 2D SAM-family models: geometry, preprocessing, caching, prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsam3d.data.volume import Volume, VolumeSource
from fastsam3d.errors import InputError
from fastsam3d.interactive.slices import (
    PIXEL_MEAN,
    PIXEL_STD,
    SliceGeometry,
    SliceIntensity,
    SliceSession,
    intensity_bounds,
    prepare_slice,
    to_uint8,
)

from .slice_double import PaintingModel2D

SHAPE = (21, 13, 7)  # every axis a different length: an axis swap cannot pass
CLICK = (5, 9, 3)
MODES = ("sam", "medsam", "sam-med2d")
S = 64  # the double's input side (mask grid 16)


def _in_plane(axis: int) -> tuple[int, int]:
    a, b = (n for n in range(3) if n != axis)
    return a, b


def _resized(width: int, height: int, mode: str) -> tuple[int, int]:
    """(w, h) of the slice inside the input: SAM keeps the aspect ratio, the others fill S."""
    if mode != "sam":
        return S, S
    scale = S / max(width, height)
    return int(width * scale + 0.5), int(height * scale + 0.5)


def _ct_volume(shape=SHAPE, bright=CLICK) -> Volume:
    array = np.full(shape, -1000.0, dtype=np.float32)
    array[bright] = 1000.0
    return Volume.from_array(array, (0.8, 1.0, 2.5))


def _session(mode="sam", volume=None, **kwargs) -> tuple[SliceSession, PaintingModel2D]:
    double = ("paint", "radius", "negative_radius", "supports_mask_prompt")
    model_args = {k: kwargs.pop(k) for k in double if k in kwargs}
    model = PaintingModel2D(mode, S, **model_args)
    session = SliceSession(model, **kwargs)
    session.set_image(volume if volume is not None else _ct_volume())
    return session, model


# -- geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_click_lands_on_its_input_pixel_and_its_slice(axis: int, mode: str) -> None:
    session, model = _session(mode, axis=axis)
    result = session.add_click(CLICK)
    a, b = _in_plane(axis)
    width, height = SHAPE[a], SHAPE[b]
    w, h = _resized(width, height, mode)
    expected = [(CLICK[a] + 0.5) * w / width - 0.5, (CLICK[b] + 0.5) * h / height - 0.5]
    sent = model.decoded[-1]["points"]
    np.testing.assert_allclose(sent.numpy(), [[expected]], atol=1e-5)
    assert model.decoded[-1]["labels"].tolist() == [[1]]
    # the model was shown slice CLICK[axis], oriented so the bright voxel sits at the point
    image = model.encoded[-1][0, 0, :h, :w].numpy()  # padding cropped
    background = image[h // 2, 0] if CLICK[a] > 0 else image[0, w - 1]
    bright = np.argwhere(image > background + 0.5 * (image.max() - background))
    np.testing.assert_allclose(bright.mean(axis=0)[::-1], expected, atol=0.75)
    # and the disk painted there comes back on the clicked voxel, in that slice only
    assert result.slice_index == CLICK[axis]
    assert result.plane.shape == (width, height)
    assert result.plane[CLICK[a], CLICK[b]]
    assert session.mask[CLICK]
    assert set(np.nonzero(session.mask)[axis]) == {CLICK[axis]}


def test_the_sam_mapping_in_numbers() -> None:
    """Axial slice of 21 x 13 voxels (W x H): resized to 64 x 40, rows 40..63 padding."""
    geometry = SliceGeometry.of(13, 21, 64, "sam")
    assert (geometry.resized_width, geometry.resized_height) == (64, 40)
    np.testing.assert_allclose(
        geometry.to_input(np.array([[5.0, 9.0], [0.0, 0.0], [20.0, 12.0]])),
        [[5.5 * 64 / 21 - 0.5, 9.5 * 40 / 13 - 0.5], [64 / 42 - 0.5, 20 / 13 - 0.5],
         [63.5 - 64 / 42, 39.5 - 20 / 13]],
    )  # fmt: skip
    xy = np.array([[3.25, 7.5], [20.0, 0.0]])
    np.testing.assert_allclose(geometry.to_slice(geometry.to_input(xy)), xy)
    assert SliceGeometry.of(13, 21, 256, "sam-med2d").resized_height == 256


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("paint", ["columns", "rows"])
@pytest.mark.parametrize("axis", [0, 2])
def test_the_mask_comes_back_exactly_where_the_model_painted(
    axis: int, paint: str, mode: str
) -> None:
    """The double paints a band of 3 mask cells (12 input pixels) around the click; the band's
    edges must land on the slice pixels whose centres map inside it (crop and resize inverse)."""
    session, _ = _session(mode, axis=axis, paint=paint)
    result = session.add_click(CLICK)
    a, b = _in_plane(axis)
    along = 0 if paint == "columns" else 1  # slice x (a) or y (b)
    n = (SHAPE[a], SHAPE[b])[along]
    resized = _resized(SHAPE[a], SHAPE[b], mode)[along]
    scale = resized / n
    u = int((CLICK[(a, b)[along]] + 0.5) * scale // 4)  # the mask cell holding the click
    centres = (np.arange(n) + 0.5) * scale  # slice pixel centres in input (corner) units
    lo, hi = 4 * (u - 1), 4 * (u + 2)
    assert np.min(np.abs(np.concatenate([centres - lo, centres - hi]))) > 1e-3  # no ties
    expected = (centres > lo) & (centres < hi)
    assert 0 < expected.sum() < n
    band = result.plane.any(axis=1 - along)
    np.testing.assert_array_equal(band, expected)
    assert result.plane.all(axis=1 - along)[expected].all()  # the band spans the slice


def test_box_corners_map_like_clicks_and_the_box_is_painted() -> None:
    session, model = _session("sam")
    result = session.add_box(3, (4, 2, 12, 8))
    sent = model.decoded[-1]["boxes"].numpy().reshape(2, 2)
    np.testing.assert_allclose(sent, session.geometry.to_input(np.array([[4, 2], [12, 8]])))
    assert model.decoded[-1]["points"] is None
    inside = result.plane[4:13, 2:9]
    assert inside[1:-1, 1:-1].all()
    assert not result.plane[:3].any()
    assert not result.plane[14:].any()
    assert session.boxes_per_slice == {3: 1}
    assert session.total_clicks == 0


def test_negative_clicks_carve_the_mask() -> None:
    session, _ = _session("medsam", axis=2, radius=10.0)
    first = session.add_click((10, 6, 3))
    assert first.plane[10, 6]
    assert first.plane[12, 6]
    second = session.add_click((13, 6, 3), positive=False)
    assert second.plane[10, 6]
    assert not second.plane[12, 6]


# -- preprocessing ------------------------------------------------------------------------------


def test_ct_window_maps_to_8_bits() -> None:
    bounds = intensity_bounds(_ct_volume(), SliceIntensity())
    assert (bounds.low, bounds.high, bounds.modality) == (-160.0, 240.0, "ct")
    values = np.array([-1000.0, -160.0, 40.0, 239.0, 240.0, 3000.0])
    assert to_uint8(values, bounds).tolist() == [0, 0, 127, 254, 255, 255]
    lung = intensity_bounds(_ct_volume(), SliceIntensity(window=(-600, 1500)))
    assert (lung.low, lung.high) == (-1350.0, 150.0)


def test_mr_percentiles_and_modality_detection() -> None:
    array = np.zeros((10, 10, 11), dtype=np.float32)
    array[:, :, 1:] = np.arange(1, 1001, dtype=np.float32).reshape(10, 10, 10)
    volume = Volume.from_array(array)
    bounds = intensity_bounds(volume, SliceIntensity())  # min 0: not CT
    assert bounds.modality == "mr"
    assert bounds.keep_zero
    positive = np.arange(1.0, 1001.0)
    assert bounds.low == pytest.approx(np.percentile(positive, 0.5))
    assert bounds.high == pytest.approx(np.percentile(positive, 99.5))
    levels = to_uint8(np.array([0.0, 1.0, 500.0, 1000.0]), bounds)
    assert levels[0] == 0
    assert levels[1] == 0
    assert levels[-1] == 255
    assert levels[2] == int((500 - bounds.low) / (bounds.high - bounds.low) * 255)
    tagged = Volume(
        array - 2000, volume.affine, VolumeSource(None, "dicom", metadata={"modality": "MR"})
    )
    assert intensity_bounds(tagged, SliceIntensity()).modality == "mr"  # tag beats the heuristic
    assert intensity_bounds(volume, SliceIntensity(modality="ct")).modality == "ct"


def test_sam_input_normalises_resizes_and_pads() -> None:
    geometry = SliceGeometry.of(13, 21, S, "sam")
    x = prepare_slice(np.full((13, 21), 100, dtype=np.uint8), "sam", geometry)
    assert x.shape == (1, 3, S, S)
    assert x.dtype == torch.float32
    for c in range(3):
        expected = (100 - PIXEL_MEAN[c]) / PIXEL_STD[c]
        np.testing.assert_allclose(x[0, c, :40].numpy(), expected, rtol=1e-6)
    assert not x[:, :, 40:].any()  # zero padding at the bottom
    # the resize is PIL's bilinear (what torchvision does to SAM's image), kept to 8 bits
    pil_image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for shape in [(13, 21), (100, 70)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        geometry = SliceGeometry.of(*shape, S, "sam")
        w, h = geometry.resized_width, geometry.resized_height
        pil = np.asarray(
            pil_image.fromarray(pixels).resize((w, h), pil_image.BILINEAR), dtype=float
        )
        ours = prepare_slice(pixels, "sam", geometry)[0, 0, :h, :w].numpy()
        levels = ours * PIXEL_STD[0] + PIXEL_MEAN[0]
        assert np.abs(levels - pil).max() <= 1.0 + 1e-3


def test_medsam_input_is_min_max_in_0_1_without_padding() -> None:
    geometry = SliceGeometry.of(13, 21, S, "medsam")
    image = np.zeros((13, 21), dtype=np.uint8)
    image[:, 11:] = 200
    x = prepare_slice(image, "medsam", geometry)
    assert x.shape == (1, 3, S, S)
    assert torch.equal(x[0, 0], x[0, 1])
    assert torch.equal(x[0, 0], x[0, 2])
    assert float(x.min()) == 0.0
    assert float(x.max()) == 1.0
    assert not x[0, 0, :, :25].any()  # dark left half (cubic ringing stays < 1 level)
    plateau = x[0, 0, :, 48:]  # the bright half (the maximum is a cubic overshoot of it)
    assert float(plateau.min()) > 0.95
    assert not prepare_slice(np.full((13, 21), 77, np.uint8), "medsam", geometry).any()


def test_sam_med2d_input_is_normalised_then_nearest_resized_to_the_square() -> None:
    image = np.arange(32, dtype=np.uint8).reshape(4, 8) * 7
    geometry = SliceGeometry.of(4, 8, 32, "sam-med2d")
    x = prepare_slice(image, "sam-med2d", geometry)
    assert x.shape == (1, 3, 32, 32)
    rows, cols = np.arange(32) * 4 // 32, np.arange(32) * 8 // 32  # cv2 INTER_NEAREST
    for c in range(3):
        expected = (image[np.ix_(rows, cols)] - PIXEL_MEAN[c]) / PIXEL_STD[c]
        np.testing.assert_allclose(x[0, c].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_model_sees_the_windowed_slice() -> None:
    array = np.full(SHAPE, 40.0, dtype=np.float32)  # mid-window: level 127
    intensity = SliceIntensity(modality="ct")
    session, model = _session("sam-med2d", Volume.from_array(array), intensity=intensity)
    session.add_click(CLICK)
    np.testing.assert_allclose(
        model.encoded[0][0, 1].numpy(), (127 - PIXEL_MEAN[1]) / PIXEL_STD[1], rtol=1e-5
    )


# -- session ------------------------------------------------------------------------------------


def test_each_slice_is_encoded_once_and_the_cache_is_bounded() -> None:
    session, model = _session("sam", cache_size=2)
    assert session.add_click((5, 9, 3)).encoded
    assert not session.add_click((6, 9, 3)).encoded
    session.add_box(3, (1, 1, 6, 6))
    assert len(model.encoded) == 1
    assert session.encodes == 1
    session.add_click((5, 9, 4))
    session.add_click((5, 9, 5))  # slice 3 is the least recently used: dropped
    assert session.cached_slices == [4, 5]
    assert session.encodes == 3
    session.add_click((5, 9, 4))
    assert session.encodes == 3
    assert session.cached_slices == [5, 4]
    assert session.add_click((5, 9, 3)).encoded
    assert session.encodes == 4
    session.reset()  # keeps embeddings
    assert not session.add_click((5, 9, 3)).encoded
    session.set_image(_ct_volume())  # a new image drops them
    assert session.cached_slices == []


def test_the_slices_previous_logits_are_the_mask_prompt() -> None:
    session, model = _session("sam")
    first = session.add_click((5, 9, 3))
    assert model.decoded[-1]["mask_logits"] is None
    assert model.decoded[-1]["multimask"]
    second = session.add_click((8, 9, 3))
    sent = model.decoded[-1]["mask_logits"]
    assert torch.equal(sent, first.logits)
    assert not model.decoded[-1]["multimask"]
    session.add_click((5, 9, 4))  # another slice starts without one
    assert model.decoded[-1]["mask_logits"] is None
    session.add_click((5, 2, 3), positive=False)
    assert torch.equal(model.decoded[-1]["mask_logits"], second.logits)
    # all of the slice's clicks go with each prediction
    assert model.decoded[-1]["labels"].tolist() == [[1, 1, 0]]


@pytest.mark.parametrize(
    ("mode", "kwargs", "fed"),
    [
        ("medsam", {}, False),  # MedSAM: boxes only
        ("sam", {"supports_mask_prompt": False}, False),
        ("medsam", {"supports_mask_prompt": True}, True),
        ("sam", {"mask_prompt": False}, False),
    ],
)
def test_models_without_mask_prompts_get_none(mode: str, kwargs: dict, fed: bool) -> None:
    session, model = _session(mode, **kwargs)
    session.add_click((5, 9, 3))
    session.add_click((8, 9, 3))
    assert (model.decoded[-1]["mask_logits"] is not None) == fed


def test_multimask_keeps_the_best_mask() -> None:
    session, model = _session("sam")
    result = session.add_click(CLICK)
    assert model.decoded[-1]["multimask"]
    assert result.iou == pytest.approx(0.9)
    assert result.plane.any()
    assert result.logits.shape == (1, 1, S // 4, S // 4)
    session_off, model_off = _session("sam", multimask="off")
    session_off.add_click(CLICK)
    assert not model_off.decoded[-1]["multimask"]


def test_clicks_are_counted_per_slice_and_in_total() -> None:
    session, _ = _session("sam")
    for index in [(5, 9, 3), (6, 9, 3), (5, 2, 3), (5, 9, 0)]:
        session.add_click(index, positive=index != (5, 2, 3))
    session.add_click((4.6, 8.2, 0.4))  # k rounds to slice 0
    session.add_box(6, (1, 1, 5, 5))
    assert session.clicks_per_slice == {0: 2, 3: 3}
    assert session.total_clicks == 5
    assert session.total_boxes == 1
    assert session.predicted_slices == [0, 3, 6]
    session.reset()
    assert session.total_clicks == 0
    assert not session.mask.any()


def test_propagation_seeds_each_neighbour_from_the_adjacent_mask() -> None:
    session, model = _session("sam")
    start = session.add_click((10, 6, 3))
    results = session.propagate(3, +1)
    assert [r.slice_index for r in results] == [4, 5, 6]  # up to the volume's edge
    call = model.decoded[-3]  # slice 4
    assert call["points"] is None
    assert torch.equal(call["mask_logits"], start.logits)
    a_idx, b_idx = np.nonzero(start.plane)
    corners = [[a_idx.min(), b_idx.min()], [a_idx.max(), b_idx.max()]]
    np.testing.assert_allclose(
        call["boxes"].numpy().reshape(2, 2), session.geometry.to_input(np.array(corners))
    )
    assert all(session.mask[:, :, k].any() for k in range(3, 7))
    assert session.total_clicks == 1  # propagation is not a person's click
    # a slice a person prompted stops it, and a click there goes with the seeded slice's logits
    session.add_click((10, 6, 1))
    assert [r.slice_index for r in session.propagate(3, -1)] == [2]
    session.add_click((10, 7, 5))
    assert torch.equal(model.decoded[-1]["mask_logits"], results[1].logits)
    assert [r.slice_index for r in session.propagate(3, +1, max_slices=1)] == [4]


def test_propagation_stops_at_an_empty_mask_and_respects_boxes_only_models() -> None:
    session, model = _session("medsam", negative_radius=100.0)
    session.add_click((10, 6, 3))
    session.add_click((10, 6, 3), positive=False)  # erases everything
    assert not session.mask.any()
    assert session.propagate(3, 1) == []
    session.add_box(2, (5, 2, 12, 8))
    assert [r.slice_index for r in session.propagate(2, -1, max_slices=1)] == [1]
    assert model.decoded[-1]["mask_logits"] is None
    assert model.decoded[-1]["boxes"] is not None
    assert session.propagate(2, 1) == []  # slice 3 is the person's
    with pytest.raises(InputError, match="takes no mask prompt"):
        session.propagate(2, -1, seed="mask")


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_names_the_value() -> None:
    session, _ = _session("sam")
    with pytest.raises(InputError, match=r"\(5\.0, 13\.0, 3\.0\) lies outside"):
        session.add_click((5, 13, 3))
    with pytest.raises(InputError, match=r"\(-1\.0, 0\.0, 0\.0\) lies outside"):
        session.add_click((-1, 0, 0))
    with pytest.raises(InputError, match="3 finite numbers"):
        session.add_click((1, float("nan"), 2))
    with pytest.raises(InputError, match=r"has a0 > a1"):
        session.add_box(3, (6, 1, 2, 5))
    with pytest.raises(InputError, match=r"box \(0\.0, 0\.0, 21\.0, 5\.0\) lies outside"):
        session.add_box(3, (0, 0, 21, 5))
    with pytest.raises(InputError, match="slice 7 lies outside"):
        session.add_box(7, (0, 0, 2, 2))
    with pytest.raises(InputError, match="slice 2 has no prediction"):
        session.propagate(2)
    with pytest.raises(InputError, match=r"array of shape \(13, 21\)"):
        session.set_image(np.zeros((13, 21)))  # type: ignore[arg-type]
    thin = Volume.from_array(np.zeros((1, 13, 21)))
    with pytest.raises(InputError, match=r"shape \(1, 13, 21\) sliced along axis 2"):
        session.set_image(thin)
    SliceSession(PaintingModel2D(), axis=0).set_image(thin)  # its 1-voxel axis: fine
    with pytest.raises(InputError, match="axis must be 0, 1 or 2, got 3"):
        SliceSession(PaintingModel2D(), axis=3)
    with pytest.raises(InputError, match="got object"):
        SliceSession(object())  # type: ignore[arg-type]
    with pytest.raises(InputError, match="window width must be positive"):
        SliceIntensity(window=(40, 0))


@pytest.mark.parametrize("name", ["sam-med2d", "mobilesam"])
def test_real_2d_architectures_run_slice_by_slice(name: str) -> None:
    """The 2D baselines (random weights) behind ``SliceSession``: one encode per prompted
    slice, a mask only on that slice, clicks counted."""
    from fastsam3d.sam2d import load_model_2d

    model = load_model_2d(name, random_weights=True)
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(0, 100, (60, 50, 8)).astype(np.float32), np.eye(4))
    session = SliceSession(model)
    session.set_image(volume)
    session.add_click((30, 25, 4), True)
    session.add_click((10, 10, 4), False)
    assert session.encodes == 1
    assert session.total_clicks == 2
    mask = session.mask
    assert mask.shape == volume.shape
    assert not mask[:, :, [0, 1, 2, 3, 5, 6, 7]].any()
