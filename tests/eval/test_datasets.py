"""Dataset layouts on disk -> cases and structures."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fastsam3d.data.io import read_volume
from fastsam3d.data.volume import VolumeError
from fastsam3d.eval.datasets import DatasetError, load_cases
from fastsam3d.eval.runner import load_targets


def _save(
    path: Path, data: np.ndarray, origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4)
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _labels() -> np.ndarray:
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[1:4, 1:4, 1:4] = 1
    lab[5:7, 5:7, 5:7] = 3
    return lab


def test_amos_and_msd(tmp_path: Path) -> None:
    for n in (1, 2):
        _save(tmp_path / "imagesTr" / f"amos_{n:04d}.nii.gz", np.zeros((8, 8, 8), np.float32))
        _save(tmp_path / "labelsTr" / f"amos_{n:04d}.nii.gz", _labels())
    _save(tmp_path / "imagesVa" / "amos_0100.nii.gz", np.zeros((8, 8, 8), np.float32))
    _save(tmp_path / "labelsVa" / "amos_0100.nii.gz", _labels())
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "name": "AMOS",
                "labels": {"0": "background", "1": "spleen", "3": "gallbladder"},
                "training": [
                    {
                        "image": f"./imagesTr/amos_{n:04d}.nii.gz",
                        "label": f"./labelsTr/amos_{n:04d}.nii.gz",
                    }
                    for n in (2, 1)
                ],
                "validation": [
                    {"image": "./imagesVa/amos_0100.nii.gz", "label": "./labelsVa/amos_0100.nii.gz"}
                ],
            }
        )
    )
    cases = load_cases(tmp_path, "amos")
    assert [c.case_id for c in cases] == ["amos_0001", "amos_0002"]
    assert [s.name for s in cases[0].structures] == ["spleen", "gallbladder"]
    assert cases[0].dataset == "AMOS"
    assert [c.case_id for c in load_cases(tmp_path, "amos", split="validation")] == ["amos_0100"]
    volume = read_volume(cases[0].image)
    targets = load_targets(cases[0], volume)
    assert [int(m.sum()) for _, m in targets] == [27, 8]
    with pytest.raises(DatasetError, match="no list 'test'"):
        load_cases(tmp_path, "nnunet", split="test")


def test_nnunet_v2(tmp_path: Path) -> None:
    for case in ("liver_001", "liver_002"):
        for ch in (0, 1):
            _save(
                tmp_path / "imagesTr" / f"{case}_{ch:04d}.nii.gz",
                np.full((8, 8, 8), ch, np.float32),
            )
        _save(tmp_path / "labelsTr" / f"{case}.nii.gz", _labels())
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT", "1": "PET"},
                "labels": {"background": 0, "liver": 1, "tumour": 3},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    cases = load_cases(tmp_path, "nnunet", channel=1)
    assert [c.case_id for c in cases] == ["liver_001", "liver_002"]
    assert cases[0].image.name == "liver_001_0001.nii.gz"
    assert [s.name for s in cases[0].structures] == ["liver", "tumour"]
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["labels"]["whole"] = [1, 3]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="region-based label 'whole'"):
        load_cases(tmp_path, "nnunet")


def test_totalsegmentator(tmp_path: Path) -> None:
    for subject in ("s0001", "s0002"):
        _save(tmp_path / subject / "ct.nii.gz", np.zeros((8, 8, 8), np.int16))
        _save(
            tmp_path / subject / "segmentations" / "liver.nii.gz", (_labels() == 1).astype(np.uint8)
        )
        _save(
            tmp_path / subject / "segmentations" / "spleen.nii.gz",
            (_labels() == 3).astype(np.uint8),
        )
    (tmp_path / "meta.csv").write_text("image_id;age;split\ns0001;60;train\ns0002;70;test\n")
    cases = load_cases(tmp_path, "totalseg")
    assert [c.case_id for c in cases] == ["s0001", "s0002"]
    assert [(s.name, s.value) for s in cases[0].structures] == [("liver", None), ("spleen", None)]
    assert [c.case_id for c in load_cases(tmp_path, "totalseg", split="test")] == ["s0002"]
    targets = load_targets(cases[0], read_volume(cases[0].image))
    assert [int(m.sum()) for _, m in targets] == [27, 8]


def test_brats(tmp_path: Path) -> None:
    subject = tmp_path / "BraTS2021_00000"
    for modality in ("t1", "t1ce", "t2", "flair"):
        _save(subject / f"BraTS2021_00000_{modality}.nii.gz", np.zeros((8, 8, 8), np.float32))
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[1:3, 1:3, 1:3], seg[4:6, 4:6, 4:6], seg[6, 6, 6] = 1, 2, 4
    _save(subject / "BraTS2021_00000_seg.nii.gz", seg)
    (case,) = load_cases(tmp_path, "brats", modality="flair")
    assert case.image.name == "BraTS2021_00000_flair.nii.gz"
    assert [(s.name, s.value) for s in case.structures] == [
        ("necrotic_tumor_core", 1),
        ("peritumoral_edema", 2),
        ("enhancing_tumor", 4),
    ]
    with pytest.raises(DatasetError, match="modality must be one of"):
        load_cases(tmp_path, "brats", modality="dwi")


def test_manifests(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "img.nii.gz", np.zeros((8, 8, 8), np.float32))
    _save(tmp_path / "a" / "lab.nii.gz", _labels())
    (tmp_path / "m.csv").write_text(
        "image,label,case_id,classes\na/img.nii.gz,a/lab.nii.gz,one,1:liver;3:kidney\n"
    )
    (case,) = load_cases(tmp_path / "m.csv", "manifest")
    assert case.case_id == "one"
    assert [(s.name, s.value) for s in case.structures] == [("liver", 1), ("kidney", 3)]
    (tmp_path / "m.json").write_text(
        json.dumps([{"image": "a/img.nii.gz", "label": "a/lab.nii.gz"}])
    )
    (case,) = load_cases(tmp_path / "m.json", "manifest")
    assert case.structures == ()
    assert case.label_map is not None
    targets = load_targets(case, read_volume(case.image))  # classes discovered from the labels
    assert [s.name for s, _ in targets] == ["label_1", "label_3"]
    (tmp_path / "bad.csv").write_text("image,label,classes\na/img.nii.gz,a/lab.nii.gz,liver=1\n")
    with pytest.raises(DatasetError, match="'1:liver;2:spleen'"):
        load_cases(tmp_path / "bad.csv", "manifest")


def test_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such dataset"):
        load_cases(tmp_path / "nope", "amos")
    with pytest.raises(DatasetError, match=r"no dataset\.json"):
        load_cases(tmp_path, "amos")
    with pytest.raises(DatasetError, match="unknown layout"):
        load_cases(tmp_path, "kits")
    with pytest.raises(DatasetError, match="no cases found"):
        load_cases(tmp_path, "totalseg")
    (tmp_path / "m.json").write_text(json.dumps([{"image": "x.nii.gz", "label": "y.nii.gz"}]))
    with pytest.raises(DatasetError, match="1 images listed but missing"):
        load_cases(tmp_path / "m.json", "manifest")


def test_labels_are_moved_onto_the_image_grid(tmp_path: Path) -> None:
    image = np.zeros((8, 8, 8), np.float32)
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1:3, 2:4, 5:7] = 1
    _save(tmp_path / "img.nii.gz", image)
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = 7.0  # the same voxel centres, i reversed
    nib.save(nib.Nifti1Image(labels[::-1].copy(), flipped), tmp_path / "lab.nii.gz")
    _save(tmp_path / "far.nii.gz", np.ones((8, 8, 9), np.uint8), origin=(500.0, 0.0, 0.0))
    (tmp_path / "m.json").write_text(
        json.dumps(
            [
                {"image": "img.nii.gz", "label": "lab.nii.gz"},
                {"image": "img.nii.gz", "label": "far.nii.gz"},
            ]
        )
    )
    good, far = load_cases(tmp_path / "m.json", "manifest")
    ((_, mask),) = load_targets(good, read_volume(good.image))
    np.testing.assert_array_equal(mask, labels == 1)
    with pytest.raises(VolumeError, match="no labelled voxel falls on the image grid"):
        load_targets(far, read_volume(far.image))


def test_bundled_samples_layout() -> None:
    cases = load_cases("ct,mr", "samples")
    assert [c.case_id for c in cases] == ["ct", "mr"]
    assert "liver" in [s.name for s in cases[0].structures]
    assert "predictions" in cases[0].dataset
    with pytest.raises(DatasetError, match="unknown sample 'kidney'"):
        load_cases("kidney", "samples")
