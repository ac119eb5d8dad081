"""The data engine: geometry, determinism, pseudo-objects, synthetic images, sample grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsam3d.data.frame import FrameSpec, normalize_roi, resample_to_roi, roi_around
from fastsam3d.data.volume import Volume
from fastsam3d.eval.datasets import load_cases
from fastsam3d.train.config import AugmentConfig, DataConfig, EngineConfig, parse_config
from fastsam3d.train.engine import EngineRegions, adjacency, compute_supervoxels, sample_grid

FRAME = FrameSpec(size=64, spacing=3.0)


def _config(tmp_path, **engine) -> DataConfig:
    return DataConfig(
        root="ct",
        layout="samples",
        targets_per_region=3,
        min_volume_mm3=2000.0,
        jitter_mm=10.0,
        min_voxels_in_region=8,
        augment=AugmentConfig(flip=True),
        engine=EngineConfig(
            enabled=True, supervoxels=(40, 160), cache_dir=str(tmp_path / "cache"), **engine
        ),
    )


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> EngineRegions:
    tmp = tmp_path_factory.mktemp("engine")
    return EngineRegions(load_cases("ct", "samples"), _config(tmp), FRAME, seed=3)


def test_samples_are_reproducible_and_varied(engine) -> None:
    a, b, c = engine[5], engine[5], engine[6]
    assert a["image"].shape == (1, 64, 64, 64)
    assert a["target"].shape == (3, 32, 32, 32)
    assert torch.equal(a["image"], b["image"])
    assert torch.equal(a["target"], b["target"])
    assert not torch.equal(a["image"], c["image"])
    assert set(torch.unique(a["target"]).tolist()) <= {0.0, 1.0}


def test_targets_are_present_and_of_every_kind(engine) -> None:
    sizes = [engine[k]["target"].flatten(1).sum(1) for k in range(24)]
    nonempty = sum(int((s >= 8).all()) for s in sizes)
    assert nonempty >= 20  # regions outside the body may have none
    scan = engine.scans[0]
    assert scan.objects("structure")
    assert scan.objects("pseudo")
    assert len(scan.supervoxels) == 2
    assert scan.supervoxels[1].max() > scan.supervoxels[0].max()


def test_untransformed_region_equals_the_frame_resampling(tmp_path) -> None:
    """With every augmentation off, the engine's image is the model frame's own resampling
    of the same region: the grid arithmetic (index order, affine, normalised coordinates) is
    right."""
    config = _config(
        tmp_path,
        rotate_deg=0.0,
        scale=0.0,
        elastic_mm=0.0,
        fov_cut=0.0,
        thick_slices=0.0,
        synthetic=0.0,
        blur=0.0,
        noise=0.0,
        uniform_centre=0.0,
    )
    config = dataclasses.replace(
        config,
        jitter_mm=0.0,
        augment=AugmentConfig(flip=False, intensity_scale=0.0, intensity_shift=0.0),
    )
    data = EngineRegions(load_cases("ct", "samples"), config, FRAME, seed=1)
    scan = data.scans[0]
    # direct check of the sampler against resample_to_roi at a known centre
    centre = np.array([60.0, 50.0, 56.0])
    rng = np.random.default_rng(0)
    raw, inside, labels64, _, _, _ = data._sample(scan, centre, 0, False, rng)
    roi = roi_around(scan.volume, centre, FRAME, clamp=False)
    want = resample_to_roi(scan.volume, roi)
    core = (slice(2, -2),) * 3  # edge voxels differ by the half-voxel padding convention
    torch.testing.assert_close(raw[core], want[core], atol=1e-2, rtol=2e-3)
    assert inside.min() == 1.0  # the region lies inside the scan
    # labels on the loss grid: the structure map sampled at the 2x2x2 cell centres
    labels_volume = Volume(scan.labels.astype(np.float32), scan.volume.affine)
    full = resample_to_roi(labels_volume, roi)
    liver = scan.names.index("liver") + 1
    coarse = F.avg_pool3d((full == liver).float()[None, None], 2)[0, 0] > 0.5
    agree = ((labels64 == liver) == coarse).float().mean()
    assert agree > 0.98
    assert normalize_roi(raw, "zscore_positive").shape == (64, 64, 64)


def test_size_powers_draw_larger_targets(tmp_path) -> None:
    """``size_power`` / ``others_size_power`` weight the first / the other targets by their
    size: the same regions' targets grow, and 0 keeps the uniform draw."""
    kinds = {"pseudo": 0.0, "part": 0.0, "uniform_centre": 0.0}

    def mean_cells(**powers: float) -> tuple[float, float]:
        data = EngineRegions(
            load_cases("ct", "samples"), _config(tmp_path, **kinds, **powers), FRAME, seed=7
        )
        cells = torch.stack([data[k]["target"].flatten(1).sum(1) for k in range(16)])
        return float(cells[:, 0].mean()), float(cells[:, 1:].mean())

    first, others = mean_cells()
    big_first, big_others = mean_cells(size_power=1.0, others_size_power=1.0)
    assert big_first > 1.5 * first
    assert big_others > 1.5 * others


def test_synthetic_images_follow_the_labels(tmp_path) -> None:
    config = _config(tmp_path, synthetic=1.0, fov_cut=0.0, thick_slices=0.0, noise=0.0, blur=0.0)
    data = EngineRegions(load_cases("ct", "samples"), config, FRAME, seed=2)
    real = EngineRegions(
        load_cases("ct", "samples"), _config(tmp_path, synthetic=0.0), FRAME, seed=2
    )
    a, b = data[0]["image"], real[0]["image"]
    assert a.shape == b.shape
    assert not torch.allclose(a, b)
    assert torch.isfinite(a).all()


def test_field_of_view_cut_zeroes_image_and_labels_outside_a_slab(tmp_path) -> None:
    config = _config(tmp_path, fov_cut=1.0, fov_mm=(30.0, 30.0), synthetic=0.0)
    data = EngineRegions(load_cases("ct", "samples"), config, FRAME, seed=4)
    keep = data._fov(np.random.default_rng(0))
    assert keep is not None
    full, loss = keep
    assert full.shape == (64, 64, 64)
    assert loss.shape == (32, 32, 32)
    thickness = int(full[0, 0].sum())
    assert 9 <= thickness <= 11  # 30 mm of 3 mm voxels
    sample = data[0]
    assert torch.isfinite(sample["image"]).all()


def test_supervoxels_and_adjacency() -> None:
    rng = np.random.default_rng(0)
    array = np.zeros((30, 30, 30), np.float32)
    array[5:25, 5:25, 5:25] = 100 + rng.normal(0, 1, (20, 20, 20))
    array[5:25, 5:15, 5:25] += 200
    sv = compute_supervoxels(array, (1.0, 1.0, 1.0), 8, 0.05)
    assert sv[0, 0, 0] == 0  # air outside the body
    assert sv[10, 10, 10] > 0
    assert len(np.unique(sv[sv > 0])) >= 2
    graph = adjacency(sv)
    for v, ns in graph.items():
        for n in ns:
            assert v in graph[int(n)]
            assert n != v


def test_sample_grid_png(tmp_path, engine) -> None:
    path = sample_grid(engine, [0, 1], tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_engine_config_parses_and_rejects_unknown_keys() -> None:
    base = {
        "run": {"out_dir": "x"},
        "data": {"root": "ct", "layout": "samples", "engine": {"enabled": True, "pseudo": 0.5}},
        "model": {"name": "test-tiny-hires"},
    }
    config = parse_config(base)
    assert config.data.engine.enabled
    assert config.data.engine.pseudo == 0.5
    base["data"]["engine"]["scan_weights"] = {"ct": 2.0}
    assert parse_config(base).data.engine.scan_weights == {"ct": 2.0}
    base["data"]["engine"]["pseudo_objects"] = 1
    with pytest.raises(ValueError, match=r"engine: unknown keys \['pseudo_objects'\]"):
        parse_config(base)


def test_target_sizes_measure_each_sample_in_millilitres(engine) -> None:
    """``train.target_sizes``: volumes follow the target grid's cell size (64^3 at 3 mm with
    32^3 targets: 6 mm cells, 0.216 mL), first targets and the others apart."""
    from fastsam3d.train.target_sizes import format_sizes, target_volumes

    sizes = target_volumes(engine, range(4), FRAME.size * FRAME.spacing)
    assert sizes.first.shape == (4,)
    assert sizes.others.shape == (8,)
    cells = engine[2]["target"].flatten(1).sum(1)
    assert sizes.first[2] == pytest.approx(float(cells[0]) * 0.216)
    assert sizes.others[4:6] == pytest.approx((cells[1:] * 0.216).tolist())
    table = format_sizes(sizes, thresholds=(0.0, 1e9))
    assert "| first of a region | 4 |" in table
    assert table.count("| 100.0% | 0.0% |") == 2  # every target > 0 mL, none > 1e9 mL


def test_mixed_regions_draw_both_kinds_reproducibly(tmp_path) -> None:
    """``[data.engine] share``: a sample is the engine's (targets on the S/2 grid) or a region
    around a labelled structure of ``region_cases`` (targets on the S grid), by a fixed draw."""
    from fastsam3d.train.data import TrainingRegions
    from fastsam3d.train.engine import MixedRegions, training_regions

    config = dataclasses.replace(
        _config(tmp_path, share=0.5, region_cases=("ct",)),
        root="ct,mr",
        region_centre="first_click",
        exact_fraction=1.0,
    )
    mixed = training_regions(config, FRAME, seed=7)
    assert isinstance(mixed, MixedRegions)
    assert [c.case_id for c in mixed.regions.cases] == ["ct"]
    assert {s.name for s in mixed.engine.scans} == {"ct", "mr"}
    kinds = [mixed.from_engine(k) for k in range(40)]
    assert 10 <= sum(kinds) <= 30
    assert kinds == [mixed.from_engine(k) for k in range(40)]
    for k in (kinds.index(True), kinds.index(False)):
        sample = mixed[k]
        grid = 32 if kinds[k] else 64
        assert sample["target"].shape == (3, grid, grid, grid)
        source = mixed.engine if kinds[k] else mixed.regions
        assert torch.equal(sample["image"], source[k]["image"])
    plain = dataclasses.replace(config, engine=EngineConfig(enabled=False))
    assert isinstance(training_regions(plain, FRAME, seed=7), TrainingRegions)
    with pytest.raises(ValueError, match=r"region_cases \['ct_sm'\]"):
        training_regions(
            dataclasses.replace(
                config, engine=dataclasses.replace(config.engine, region_cases=("ct_sm",))
            ),
            FRAME,
            seed=7,
        )
    with pytest.raises(ValueError, match=r"batch_size = 1, not 2"):
        training_regions(dataclasses.replace(config, batch_size=2), FRAME, seed=7)
    with pytest.raises(ValueError, match=r"share = 1.5: expected 0..1"):
        EngineConfig(share=1.5)
