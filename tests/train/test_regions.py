"""Training regions with several target structures: masks, determinism, the step's shapes."""

from __future__ import annotations

import numpy as np
import torch

from fastsam3d.build import build_model
from fastsam3d.data.frame import FrameSpec
from fastsam3d.eval.clicks import make_simulator
from fastsam3d.eval.datasets import load_cases
from fastsam3d.train.config import parse_config
from fastsam3d.train.data import TrainingRegions
from fastsam3d.train.objectives import InteractiveStep

from .conftest import train_config


def _regions(
    per_region: int, structures: list[str], flip: bool = False, size: int = 128
) -> TrainingRegions:
    cfg = train_config("unused")
    augment = {"flip": flip, "intensity_scale": 0.0, "intensity_shift": 0.0}
    cfg["data"].update(structures=structures, targets_per_region=per_region, augment=augment)
    config = parse_config(cfg)
    cases = load_cases(config.data.root, config.data.layout)
    return TrainingRegions(cases, config.data, FrameSpec(size=size), seed=3)


def test_other_structures_of_the_region_are_added() -> None:
    organs = ["liver", "spleen", "stomach", "kidney_left", "pancreas", "aorta"]
    regions = _regions(3, organs)
    single = _regions(1, organs)
    for index in range(4):
        sample = regions[index]
        target = sample["target"]
        assert target.shape == (3, 128, 128, 128)
        assert sample["image"].shape == (1, 128, 128, 128)
        # the drawn structure comes first and is what a one-target dataset gives
        torch.testing.assert_close(target[0], single[index]["target"][0])
        # the others are different structures of the same region, each present in it
        for m in (1, 2):
            assert target[m].sum() >= 64
            assert not torch.equal(target[m], target[0])
        # masks of different structures barely overlap
        assert (target[0] * target[1]).sum() < 0.1 * min(target[0].sum(), target[1].sum())
    # a pure function of the index
    torch.testing.assert_close(regions[2]["target"], regions[2]["target"])


def test_flips_apply_to_every_target() -> None:
    plain = _regions(2, ["liver", "spleen", "stomach"])
    flipped = _regions(2, ["liver", "spleen", "stomach"], flip=True)
    for index in range(6):
        a, b = plain[index], flipped[index]
        if torch.equal(a["image"], b["image"]):
            torch.testing.assert_close(a["target"], b["target"])
            continue
        # find the flip that maps the image, and check it maps both targets too
        for dims in ([1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3]):
            if torch.equal(a["image"].flip(dims), b["image"]):
                torch.testing.assert_close(a["target"].flip(dims), b["target"])
                break
        else:
            raise AssertionError(f"sample {index}: no flip maps the image")


def test_a_region_without_other_structures_repeats_the_drawn_one() -> None:
    regions = _regions(3, ["spleen"])
    target = regions[0]["target"]
    assert target.shape[0] == 3
    torch.testing.assert_close(target[1], target[0])
    torch.testing.assert_close(target[2], target[0])


def test_the_step_decodes_every_target_with_its_own_clicks() -> None:
    model = build_model("test-tiny", seed=0)
    regions = _regions(2, ["liver", "spleen", "stomach"], size=model.cfg.image_size)
    config = parse_config(train_config("unused")).interactive
    step = InteractiveStep(model, config, make_simulator("random"), seed=0)
    batch = [regions[0], regions[1]]
    image = torch.stack([b["image"] for b in batch])
    target = torch.stack([b["target"] for b in batch])
    loss = step(image, target, torch.tensor([0, 1]))
    assert loss.ndim == 0
    assert np.isfinite(float(loss.detach()))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads
    assert all(torch.isfinite(g).all() for g in grads)


def test_core_regions_are_centred_in_the_structures_inner_half() -> None:
    """``region_centre = "core"`` without jitter: each region's centre is a voxel of the
    structure's inner half (what a first click at the centre rule opens), and the draw changes
    with the index."""
    from scipy import ndimage

    cfg = train_config("unused")
    cfg["data"].update(structures=["liver", "spleen"], jitter_mm=0.0, region_centre="core")
    config = parse_config(cfg)
    cases = load_cases(config.data.root, config.data.layout)
    regions = TrainingRegions(cases, config.data, FrameSpec(size=64), seed=1)
    volume, masks = regions._load(0)
    centres = set()
    for index in range(6):
        target, roi, _ = regions.region(index)
        centre = (roi.volume_from_roi(volume) @ np.r_[[(64 - 1) / 2] * 3, 1.0])[:3]
        voxel = tuple(int(np.rint(v)) for v in centre)
        depth = ndimage.distance_transform_edt(masks[target.structure], volume.spacing)
        assert depth[voxel] > depth.max() / 2
        centres.add(voxel)
        assert regions[index]["target"][0, 32, 32, 32] == 1  # the centre lies in the target
    assert len(centres) == 6


def test_core_regions_are_refused_with_the_engine() -> None:
    import pytest

    from fastsam3d.errors import InputError

    cfg = train_config("unused")
    cfg["data"].update(region_centre="core", engine={"enabled": True})
    with pytest.raises(InputError, match="region_centre = 'core' applies to the labelled"):
        parse_config(cfg)


def test_deepest_regions_are_the_regions_a_session_opens_at_the_first_centre_click() -> None:
    """``region_centre = "deepest"`` without jitter or augmentation: a structure's sample is
    the region (image and mask) that a first click at its deepest voxel opens in a session
    (:func:`fastsam3d.eval.probe.click_region`), the same for every draw, and kept once made."""
    from fastsam3d.eval.clicks import deepest_voxel
    from fastsam3d.eval.probe import click_region

    cfg = train_config("unused")
    augment = {"flip": False, "intensity_scale": 0.0, "intensity_shift": 0.0}
    cfg["data"].update(
        structures=["liver", "spleen"], jitter_mm=0.0, region_centre="deepest", augment=augment
    )
    config = parse_config(cfg)
    cases = load_cases(config.data.root, config.data.layout)
    frame = FrameSpec(size=64)
    regions = TrainingRegions(cases, config.data, frame, seed=1)
    volume, masks = regions._load(0)
    seen: dict[str, torch.Tensor] = {}
    for index in range(8):
        target, _, _ = regions.region(index)
        sample = regions[index]
        truth = masks[target.structure]
        expected = click_region(volume, truth, frame, deepest_voxel(truth, volume.spacing))
        torch.testing.assert_close(sample["image"][0], expected.image)
        torch.testing.assert_close(sample["target"][0], expected.inside.float())
        if target.structure in seen:  # the same fixed region at every draw
            torch.testing.assert_close(sample["image"], seen[target.structure])
        seen[target.structure] = sample["image"]
    assert set(seen) == {"liver", "spleen"}
    assert len(regions._crops) == 2  # one kept crop per structure


def test_first_click_regions_are_the_simulators_first_clicks_and_exact_samples_unaugmented() -> (
    None
):
    """``region_centre = "first_click"``: every centre is a click the centre-of-error simulator
    may make first (the clicker's own draws fall in the same set); with ``exact_fraction = 1``
    each sample is the session's region at that click, unflipped and unscaled although flips
    and intensity changes are on; with ``0.5`` both kinds occur."""
    from fastsam3d.eval.clicks import CenterClicker, first_center_clicks
    from fastsam3d.eval.probe import click_region

    cfg = train_config("unused")
    augment = {"flip": True, "intensity_scale": 0.2, "intensity_shift": 0.2}
    cfg["data"].update(
        structures=["stomach", "vertebrae_L1"],
        jitter_mm=10.0,
        region_centre="first_click",
        exact_fraction=1.0,
        augment=augment,
    )
    config = parse_config(cfg)
    cases = load_cases(config.data.root, config.data.layout)
    frame = FrameSpec(size=64)
    regions = TrainingRegions(cases, config.data, frame, seed=3)
    volume, masks = regions._load(0)
    clicker = CenterClicker()
    for name in ("stomach", "vertebrae_L1"):
        candidates = {tuple(v) for v in first_center_clicks(masks[name], volume.spacing).tolist()}
        empty = np.zeros(masks[name].shape, bool)
        for seed in range(5):
            click = clicker.next_click(
                empty, masks[name], np.random.default_rng(seed), volume.spacing, 0
            )
            assert click is not None
            assert click.index in candidates
    for index in range(6):
        sample = regions[index]
        placement = regions._place(index)
        truth = masks[placement.target.structure]
        assert placement.exact
        assert placement.key is not None
        centre = np.array(placement.key[2], dtype=np.float64)
        candidates = {tuple(v) for v in first_center_clicks(truth, volume.spacing).tolist()}
        assert placement.key[2] in candidates
        expected = click_region(volume, truth, frame, centre)
        torch.testing.assert_close(sample["image"][0], expected.image)
        torch.testing.assert_close(sample["target"][0], expected.inside.float())

    cfg["data"].update(exact_fraction=0.5)
    mixed = TrainingRegions(cases, parse_config(cfg).data, frame, seed=3)
    kinds = {mixed._place(index).exact for index in range(16)}
    assert kinds == {True, False}


def test_exact_fraction_needs_a_session_region() -> None:
    import pytest

    from fastsam3d.errors import InputError

    cfg = train_config("unused")
    cfg["data"].update(exact_fraction=0.5)
    with pytest.raises(InputError, match=r"exact_fraction = 0\.5 needs region_centre"):
        parse_config(cfg)
    cfg["data"].update(exact_fraction=1.5, region_centre="deepest")
    with pytest.raises(InputError, match=r"exact_fraction = 1\.5: expected 0\.\.1"):
        parse_config(cfg)


def test_size_power_draws_large_structures_more_often() -> None:
    import pytest

    from fastsam3d.errors import InputError

    organs = ["liver", "spleen", "aorta", "rib_left_8"]
    cfg = train_config("unused")
    cfg["data"].update(structures=organs, min_volume_mm3=0.0)
    config = parse_config(cfg)
    cases = load_cases(config.data.root, config.data.layout)
    alike = TrainingRegions(cases, config.data, FrameSpec(size=64), seed=1)
    cfg["data"].update(size_power=1.0)
    by_size = TrainingRegions(cases, parse_config(cfg).data, FrameSpec(size=64), seed=1)
    names = [t.structure for t in by_size.targets]
    mm3 = np.array([t.mm3 for t in by_size.targets])
    assert (mm3 > 0).all()
    np.testing.assert_allclose(by_size.target_probabilities, mm3 / mm3.sum())
    np.testing.assert_allclose(alike.target_probabilities, 1 / len(names))
    # the draws follow the probabilities: the liver (largest) far more often than the rib
    draws = [by_size._place(i).target.structure for i in range(400)]
    liver, rib = draws.count("liver"), draws.count("rib_left_8")
    expected_liver = 400 * by_size.target_probabilities[names.index("liver")]
    assert abs(liver - expected_liver) < 4 * np.sqrt(expected_liver)
    assert liver > 5 * max(rib, 1)
    # size_power 0 keeps the uniform draw every earlier run made
    uniform = [alike._place(i).target.structure for i in range(400)]
    assert uniform.count("liver") < 2 * uniform.count("rib_left_8") + 20
    cfg["data"].update(size_power=-1.0)
    with pytest.raises(InputError, match=r"size_power = -1\.0: expected 0\.\.2"):
        parse_config(cfg)
