"""The model shipped inside the package: integrity, accuracy on a held-out scan, runtimes, demo.

The Dice floors below were measured with the shipped weights and then lowered by a margin (see
``src/fastsam3d/weights/MODEL_CARD.md``); they are not tuned to pass.
"""

from __future__ import annotations

import os
import re
import shutil
import stat

import nibabel as nib
import numpy as np
import pytest

import fastsam3d
from fastsam3d import registry, samples
from fastsam3d.checkpoint import CheckpointError
from fastsam3d.cli import main
from fastsam3d.data.align import labels_on_grid
from fastsam3d.data.io import read_volume
from fastsam3d.eval.clicks import CenterClicker
from fastsam3d.eval.metrics import dice
from fastsam3d.eval.probe import image_dependence
from fastsam3d.interactive.session import Session

NAME = "fastsam3d-lite"
# Measured with the shipped (v6) weights on the held-out DICOM CT, one centre click in a
# Session, torch runtime (liver 0.862, spleen 0.785; MODEL_CARD.md), minus 0.03 for other CPUs
# and BLAS builds. The v2 weights gave 0.053 / 0.183: a blob of a few cm^3 in a large organ.
ONE_CLICK_DICE_FLOOR = {"liver": 0.832, "spleen": 0.755}
# What `fastsam3d demo --runtime torch` printed after 3 clicks with the shipped weights (liver
# 0.900, spleen 0.899, stomach 0.692; MODEL_CARD.md), minus 0.03. Each must also stay above what
# the v1 weights printed (0.233 / 0.529 / 0.624), the bar issue 13 set.
DEMO_DICE_AFTER_3_FLOOR = {"liver": 0.870, "spleen": 0.869, "stomach": 0.662}
V1_DEMO_DICE_AFTER_3 = {"liver": 0.233, "spleen": 0.529, "stomach": 0.624}
# Fraction of a mask's voxels that must change when the image is replaced by a constant (the
# v1 weights: 7% on the held-out scan's structures, a blob around the click).
IMAGE_DEPENDENCE_FLOOR = 0.30


@pytest.fixture(scope="module")
def model() -> fastsam3d.Sam3D:
    return fastsam3d.load_model(NAME)


@pytest.fixture(scope="module")
def held_out() -> tuple[fastsam3d.Volume, np.ndarray]:
    sample = samples.sample("ct_dicom")
    volume = read_volume(sample.image)
    return volume, labels_on_grid(read_volume(sample.labels), volume)


def test_the_weights_ship_with_the_package_and_are_verified(tmp_path, monkeypatch) -> None:
    spec = registry.get_spec(NAME)
    path = spec.bundled_weights()
    assert path is not None
    assert path.suffix == ".safetensors"
    assert path.stat().st_size <= 25 * 2**20
    assert spec.weights_sha256 is not None
    assert "ct_dicom" not in spec.trained_on
    # a damaged copy is refused with a message that says what to do
    damaged = tmp_path / path.name
    shutil.copyfile(path, damaged)
    with damaged.open("r+b") as f:
        f.seek(-16, os.SEEK_END)
        f.write(b"\0" * 16)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match=r"checksum .* reinstall fastsam3d"):
        fastsam3d.load_model(NAME)
    damaged.unlink()
    with pytest.raises(CheckpointError, match="missing; reinstall fastsam3d"):
        fastsam3d.load_model(NAME)


@pytest.mark.parametrize("structure", sorted(ONE_CLICK_DICE_FLOOR))
def test_one_click_in_a_large_organ_of_a_held_out_scan(structure, model, held_out) -> None:
    volume, labels = held_out
    truth = labels == samples.label_value("total", structure)
    session = Session(model, runtime="torch")
    session.set_image(volume)
    click = CenterClicker().next_click(
        session.mask, truth, np.random.default_rng(0), volume.spacing, 0
    )
    assert click is not None
    assert click.positive
    session.add_click(click.index, True)
    assert dice(session.mask, truth) > ONE_CLICK_DICE_FLOOR[structure]


@pytest.mark.parametrize("runtime", ["onednn", "onnxruntime", "openvino"])
def test_cpu_runtimes_compute_the_same_masks(runtime, model, held_out, tmp_path) -> None:
    from fastsam3d.runtime.select import available, prepare

    if not available(runtime):
        pytest.skip(f"{runtime} is not installed")
    volume, labels = held_out
    truth = labels == samples.label_value("total", "spleen")
    masks = []
    for chosen in ("torch", runtime):
        runner = prepare(model, chosen, threads=2, cache_dir=tmp_path)
        session = Session(runner, runtime="torch")
        session.set_image(volume)
        rng = np.random.default_rng(0)
        for step in range(2):
            click = CenterClicker().next_click(session.mask, truth, rng, volume.spacing, step)
            assert click is not None
            session.add_click(click.index, click.positive)
        masks.append(session.mask.copy())
    assert dice(masks[1], masks[0]) > 0.99


def test_the_model_looks_at_the_image(model, held_out) -> None:
    """Replacing the image by a constant (so its embedding and features are those of no
    anatomy) must change a large part of each mask: the model segments what it sees, not a
    blob around the click. (The v1 weights: 7% with this probe, averaged over the held-out
    scan's structures.)"""
    volume, labels = held_out
    names = ("liver", "spleen", "stomach", "aorta", "vertebrae_T12", "rib_left_8")
    structures = [(n, labels == samples.label_value("total", n)) for n in names]
    results = image_dependence(model, volume, structures)
    assert [r.structure for r in results] == list(names)
    assert all(r.voxels > 0 for r in results)
    assert np.mean([r.changed for r in results]) >= IMAGE_DEPENDENCE_FLOOR


def test_demo_segments_the_held_out_scan(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--clicks", "3", "--runtime", "torch"]) == 0
    text = capsys.readouterr().out
    assert "held out from training the bundled weights" in text
    assert "bundled weights" in text
    for name in ("liver", "spleen", "stomach"):
        assert f"{name:<12} click 3" in text
        found = re.search(rf"{name} +click 3 .*?Dice ([0-9.]+)", text)
        assert found is not None
        assert float(found.group(1)) > DEMO_DICE_AFTER_3_FLOOR[name]
        assert float(found.group(1)) > V1_DEMO_DICE_AFTER_3[name]
        assert (out / f"{name}.nii.gz").is_file()
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG")
    image = read_volume(samples.sample("ct_dicom").image)
    labels = read_volume(out / "labels.nii.gz")
    assert labels.shape == image.shape
    np.testing.assert_allclose(labels.affine, image.affine, atol=1e-4)
    assert set(np.unique(labels.array)) <= {0, 1, 2, 3}
    assert {1, 2, 3} <= set(np.unique(labels.array))
    # written like any user file: not private to the owner
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((out / "labels.nii.gz").stat().st_mode)
    assert mode == 0o666 & ~umask
    assert isinstance(nib.load(out / "liver.nii.gz"), nib.Nifti1Image)
