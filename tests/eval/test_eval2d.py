"""The 2D baselines in the evaluation harness: the slice-wise protocols and ``fastsam3d eval``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fastsam3d.cli import main
from fastsam3d.data.volume import Volume
from fastsam3d.eval.clicks import CenterClicker, next_click_on_slice
from fastsam3d.eval.slicewise import (
    SliceMethod,
    object_slices,
    run_slices_paper,
    run_slices_realistic,
)

from ..interactive.slice_double import PaintingModel2D

SPACING = (1.5, 1.5, 3.0)


def _disk(
    shape: tuple[int, int, int], centre: tuple[int, int], radius: float, slices
) -> np.ndarray:
    i, j = np.indices(shape[:2])
    plane = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= radius**2
    gt = np.zeros(shape, bool)
    for s in slices:
        gt[:, :, s] = plane
    return gt


def _volume(gt: np.ndarray) -> Volume:
    return Volume.from_array(gt * 100.0 - 50.0, SPACING)


def test_a_slice_click_uses_the_slice_2d_error_only() -> None:
    # a thin slab: in 3D most voxels lie one slice (3 mm) from the boundary, in 2D the centre
    # of the square is unique
    gt = np.zeros((30, 20, 2), bool)
    gt[3:12, 4:13, :] = True
    click = next_click_on_slice(
        CenterClicker(), np.zeros_like(gt), gt, np.random.default_rng(0), SPACING, 0, 2, 1
    )
    depth = ndimage.distance_transform_edt(np.pad(gt[:, :, 1], 1), sampling=SPACING[:2])
    expected = np.unravel_index(np.argmax(depth), depth.shape)
    assert click is not None
    assert click.positive
    assert click.index == (int(expected[0]) - 1, int(expected[1]) - 1, 1)
    assert click.index == (7, 8, 1)


def _input_xy(i: float, j: float) -> tuple[float, float]:
    """Slice voxel (i, j) -> the painting model's input pixel (32 -> 64: scale 2)."""
    return ((i + 0.5) * 2 - 0.5, (j + 0.5) * 2 - 0.5)


def test_paper_protocol_clicks_every_object_slice_each_round() -> None:
    gt = _disk((32, 32, 6), (15, 13), 6, slices=(1, 2, 3))
    model = PaintingModel2D("sam", 64, radius=6.0)
    records = run_slices_paper(
        SliceMethod("painting", model),
        _volume(gt),
        gt,
        CenterClicker(),
        2,
        np.random.default_rng(0),
    )
    assert object_slices(gt, 2) == [1, 2, 3]
    assert [r.total_clicks for r in records] == [3, 6]
    assert [r.click for r in records] == [1, 2]
    assert all(r.index is None for r in records)
    first = [d["points"][0].tolist() for d in model.decoded[:3]]
    assert first == [[list(_input_xy(15, 13))]] * 3  # each slice's own 2D error centre
    assert len(model.encoded) == 3  # only the object's slices, each encoded once
    assert 0 < records[0].dice < 1


def test_realistic_protocol_clicks_the_slice_with_the_most_wrong_voxels() -> None:
    gt = _disk((32, 32, 5), (15, 13), 8, slices=(1,)) | _disk((32, 32, 5), (10, 20), 4, (3,))
    model = PaintingModel2D("sam", 64, radius=6.0)
    n = 4
    records = run_slices_realistic(
        SliceMethod("painting", model),
        _volume(gt),
        gt,
        CenterClicker(),
        n,
        np.random.default_rng(0),
    )
    assert [r.total_clicks for r in records] == [1, 2, 3, 4]
    assert records[0].index == (15, 13, 1)
    assert records[0].positive
    # replay: before each click, its slice had the most wrong voxels
    replay = SliceMethod("replay", PaintingModel2D("sam", 64, radius=6.0)).session(_volume(gt))
    for r in records:
        assert r.index is not None
        wrong = (replay.mask ^ gt).sum(axis=(0, 1))
        assert r.index[2] == int(np.argmax(wrong))
        replay.add_click(r.index, bool(r.positive))
        assert r.dice == pytest.approx(
            2 * (replay.mask & gt).sum() / (replay.mask.sum() + gt.sum())
        )
    assert replay.total_clicks == n


def _dataset(root: Path) -> Path:
    """One small case: a disk on 2 of 6 axial slices (2 encodes per 2D run)."""
    shape = (32, 28, 6)
    labels = _disk(shape, (15, 13), 6, slices=(2, 3)).astype(np.uint8)
    image = labels * 100.0 + np.random.default_rng(0).normal(0, 10, shape)
    affine = np.diag([*SPACING, 1.0])
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(root / "img.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(root / "lab.nii.gz"))
    cases = [{"image": "img.nii.gz", "label": "lab.nii.gz", "case_id": "c0"}]
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"classes": {"1": "disk"}, "cases": cases}))
    return manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("data2d"))


def _eval(dataset: Path, out: Path, model: str, protocol: str) -> list[dict[str, str]]:
    args = ["eval", str(dataset), "--layout", "manifest", "--model", model]
    args += ["--checkpoint", "random", "--clicks", "1,2", "--threads", "1", "--no-baseline"]
    assert main([*args, "--protocol", protocol, "--out", str(out)]) == 0
    for name in ("results.csv", "summary.md", "dice_vs_clicks.png"):
        assert (out / name).stat().st_size > 0
    with (out / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", ["sam-med2d", "mobilesam"])
def test_eval_runs_a_2d_model_under_both_protocols(dataset, tmp_path, model) -> None:
    paper = _eval(dataset, tmp_path / "paper", model, "paper")
    assert [(r["click"], r["total_clicks"], r["dims"]) for r in paper] == [
        ("1", "2", "2d"),
        ("2", "4", "2d"),
    ]  # n clicks x 2 slices containing the disk
    assert paper[0]["method"] == f"{model} (random weights)"
    summary = (tmp_path / "paper" / "summary.md").read_text()
    assert "**paper** protocol, as FastSAM3D's 2D rows" in summary
    assert "total clicks@2" in summary
    assert (tmp_path / "paper" / "dice_vs_total_clicks.png").stat().st_size > 1000
    realistic = _eval(dataset, tmp_path / "realistic", model, "realistic")
    assert [(r["click"], r["total_clicks"]) for r in realistic] == [("1", "1"), ("2", "2")]
    assert realistic[0]["k"] in ("2", "3")
    assert realistic[0]["positive"] == "1"
    assert "**realistic** protocol" in (tmp_path / "realistic" / "summary.md").read_text()


def test_2d_models_take_torch_only(dataset, tmp_path, capsys) -> None:
    args = ["eval", str(dataset), "--layout", "manifest", "--model", "medsam"]
    args += ["--checkpoint", "random", "--runtime", "onednn", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "runs on torch only" in capsys.readouterr().err


def test_eval_slices_along_the_axis_asked_for(dataset, tmp_path) -> None:
    args = ["eval", str(dataset), "--layout", "manifest", "--model", "sam-med2d"]
    args += ["--checkpoint", "random", "--clicks", "1", "--threads", "1", "--no-baseline"]
    args += ["--protocol", "paper", "--slice-axis", "0", "--ct-window=-600,1500"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    with (tmp_path / "results.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    # the disk (radius 6 around row 15) is on 13 slices along axis 0, 2 along axis 2
    assert row["total_clicks"] == "13"
    assert row["method"] == "sam-med2d (random weights) [axis 0, window -600,1500]"


@pytest.mark.parametrize("window", ["40", "40,0", "level,400"])
def test_a_bad_ct_window_is_named(dataset, tmp_path, capsys, window) -> None:
    args = ["eval", str(dataset), "--layout", "manifest", "--model", "sam-med2d"]
    args += ["--checkpoint", "random", f"--ct-window={window}", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert f"LEVEL,WIDTH in HU with WIDTH > 0, like '40,400', got {window!r}" in (
        capsys.readouterr().err
    )
