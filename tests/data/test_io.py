"""Reading and writing volumes: formats, geometry fidelity, atomic writes and bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from fastsam3d import samples
from fastsam3d.data import io
from fastsam3d.data.io import VolumeError, check_output_path, read_volume, write_label_map
from fastsam3d.data.volume import Volume

from ..helpers import GEOMETRIES, make_affine, write_dicom_series


@pytest.mark.parametrize("name", ["ct", "mr", "ct_sm"])
def test_nifti_samples_equal_nibabel(name: str) -> None:
    path = samples.sample(name).image
    volume = read_volume(path)
    ref = nib.load(str(path))
    assert np.array_equal(volume.array, np.asanyarray(ref.dataobj))
    np.testing.assert_array_equal(volume.affine, ref.affine)


def test_dicom_sample_geometry_matches_its_nifti_export() -> None:
    """TotalSegmentator's seg of the DICOM series is a NIfTI with j flipped: the same voxel
    centres must land on the same world positions."""
    s = samples.sample("ct_dicom")
    dicom, seg = read_volume(s.image), read_volume(s.labels)
    assert dicom.shape == seg.shape == (512, 512, 20)
    assert dicom.source is not None
    assert dicom.source.metadata["modality"] == "CT"
    idx = np.array([[0, 0, 0], [100, 200, 5], [511, 511, 19]], dtype=float)
    flipped = idx.copy()
    flipped[:, 1] = 511 - flipped[:, 1]
    np.testing.assert_allclose(dicom.index_to_world(idx), seg.index_to_world(flipped), atol=1e-3)
    assert dicom.array.min() < -900  # rescale slope/intercept applied (HU)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("name", ["ct", "mr", "ct_dicom"])
def test_mask_round_trip_keeps_values_and_grid(name: str, suffix: str, tmp_path: Path) -> None:
    volume = read_volume(samples.sample(name).image)
    mask = volume.array > 0
    out = write_label_map(mask, volume, tmp_path / f"mask{suffix}")
    back = read_volume(out)
    assert back.array.dtype == np.uint8
    assert np.array_equal(back.array.astype(bool), mask)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)


def test_nifti_output_keeps_the_input_header(tmp_path: Path) -> None:
    src = samples.sample("mr").image
    volume = read_volume(src)
    out = write_label_map(volume.array > 100, volume, tmp_path / "m.nii.gz")
    a, b = nib.load(str(src)).header, nib.load(str(out)).header
    for key in (
        "qform_code",
        "sform_code",
        "pixdim",
        "quatern_b",
        "quatern_c",
        "quatern_d",
        "qoffset_x",
        "qoffset_y",
        "qoffset_z",
        "srow_x",
        "srow_y",
        "srow_z",
        "dim",
    ):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert b.get_data_dtype() == np.uint8


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_synthetic_geometries_round_trip_through_every_format(
    geometry: str, tmp_path: Path
) -> None:
    shape, direction, spacing = GEOMETRIES[geometry]
    affine = make_affine(direction, spacing, (-12.5, 30.25, 7.0))
    data = np.random.default_rng(0).integers(-1000, 1000, size=shape).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "img.nii.gz"))
    volume = read_volume(tmp_path / "img.nii.gz")
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    for suffix in (".nrrd", ".mha", ".nii.gz"):
        out = write_label_map(data > 0, volume, tmp_path / f"m{suffix}")
        back = read_volume(out)
        assert np.array_equal(back.array.astype(bool), data > 0)
        np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)


@pytest.mark.parametrize("geometry", ["ras-anisotropic-odd", "lps", "oblique"])
def test_nifti_and_dicom_of_the_same_data_agree(geometry: str, tmp_path: Path) -> None:
    shape, direction, spacing = GEOMETRIES[geometry]
    affine = make_affine(direction, spacing, (-40.0, 22.5, -103.0))
    data = np.random.default_rng(1).integers(-500, 500, size=shape).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "img.nii.gz"))
    write_dicom_series(data, affine, tmp_path / "dicom")
    nii, dcm = read_volume(tmp_path / "img.nii.gz"), read_volume(tmp_path / "dicom")
    assert np.array_equal(nii.array, dcm.array)
    idx = np.array([[0, 0, 0], [3, 7, 11], [s - 1 for s in shape]], dtype=float)
    np.testing.assert_allclose(nii.index_to_world(idx), dcm.index_to_world(idx), atol=1e-4)
    one_file = read_volume(tmp_path / "dicom" / "slice0003.dcm")  # a file selects its series
    assert np.array_equal(one_file.array, dcm.array)


def test_world_conventions() -> None:
    volume = Volume.from_array(np.zeros((4, 5, 6)), spacing=(2.0, 3.0, 4.0))
    ras = volume.index_to_world(np.array([[1.0, 1.0, 1.0]]))
    lps = volume.index_to_world(np.array([[1.0, 1.0, 1.0]]), "lps")
    np.testing.assert_allclose(ras, [[2.0, 3.0, 4.0]])
    np.testing.assert_allclose(lps, [[-2.0, -3.0, 4.0]])
    np.testing.assert_allclose(volume.world_to_index(lps, "lps"), [[1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="'ras' or 'lps'"):
        volume.world_affine("xyz")  # type: ignore[arg-type]


# -- bad input ----------------------------------------------------------------------------------


def _nifti(tmp_path: Path, data: np.ndarray, affine=None, name: str = "x.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(VolumeError, match=r"unknown volume format '\.png'"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_files(suffix: str, tmp_path: Path) -> None:
    volume = read_volume(samples.sample("mr").image)
    good = write_label_map(volume.array > 0, volume, tmp_path / f"good{suffix}")
    data = good.read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(VolumeError, match=r"bad\."):
        read_volume(bad)


def test_garbage_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(VolumeError, match=r"x\.nii\.gz"):
        read_volume(path)


@pytest.mark.parametrize("shape", [(10, 12), (10, 12, 1)], ids=["2d", "single-slice"])
def test_2d_images_are_refused(shape, tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="not a 3D volume"):
        read_volume(_nifti(tmp_path, np.zeros(shape, np.int16)))


def test_2d_itk_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.int16)), str(path))
    with pytest.raises(VolumeError, match="2D image"):
        read_volume(path)


def test_4d_needs_an_explicit_channel(tmp_path: Path) -> None:
    data = np.stack([np.full((5, 6, 7), c, np.int16) for c in range(3)], axis=-1)
    path = _nifti(tmp_path, data)
    with pytest.raises(VolumeError, match=r"4D image.*channel=0\.\.2"):
        read_volume(path)
    assert np.all(read_volume(path, channel=2).array == 2)
    with pytest.raises(VolumeError, match="channel 5 out of range"):
        read_volume(path, channel=5)


def test_multicomponent_itk_image_needs_a_channel(tmp_path: Path) -> None:
    path = tmp_path / "rgb.nrrd"
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(image, str(path))
    with pytest.raises(VolumeError, match="4D image"):
        read_volume(path)
    assert read_volume(path, channel=1).shape == (6, 5, 4)


def test_non_finite_voxels_are_refused(tmp_path: Path) -> None:
    data = np.zeros((5, 6, 7), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    with pytest.raises(VolumeError, match="2 voxels are NaN or infinite"):
        read_volume(_nifti(tmp_path, data))


@pytest.mark.parametrize("spacing", [0.0, -1.0])
def test_bad_spacing_is_refused(spacing: float, tmp_path: Path) -> None:
    path = tmp_path / "x.nii"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())  # nibabel rewrites pixdim on save: patch the header
    raw[84:88] = np.float32(spacing).tobytes()  # pixdim[2] (float32 array at byte 76)
    raw[252:256] = bytes(4)  # qform_code = sform_code = 0: geometry from pixdim alone
    path.write_bytes(bytes(raw))
    with pytest.raises(VolumeError, match="spacing"):
        read_volume(path)
    if spacing < 0:
        return  # ITK's MetaImage reader turns a negative spacing into a flipped axis: well defined
    mha = tmp_path / "x.mha"
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
        f"ElementSpacing = 1 {spacing} 1\nElementDataFile = LOCAL\n"
    ).encode()
    mha.write_bytes(header + bytes(64))
    with pytest.raises(VolumeError, match=r"x\.mha"):
        read_volume(mha)


def test_empty_dicom_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no DICOM series found"):
        read_volume(tmp_path / "empty")


def test_mixed_dicom_series_are_refused(tmp_path: Path) -> None:
    affine = make_affine(np.eye(3), (1.0, 1.0, 2.0), (0, 0, 0))
    data = np.zeros((6, 7, 4), np.int16)
    write_dicom_series(data, affine, tmp_path / "mixed", series_uid="1.2.3.4.1")
    write_dicom_series(data, affine, tmp_path / "other", series_uid="1.2.3.4.2")
    for f in (tmp_path / "other").iterdir():
        f.rename(tmp_path / "mixed" / f"b_{f.name}")
    with pytest.raises(
        VolumeError, match=r"2 DICOM series in one folder.*1\.2\.3\.4\.1.*1\.2\.3\.4\.2"
    ):
        read_volume(tmp_path / "mixed")


# -- output paths and atomic writes -------------------------------------------------------------


def test_output_path_checks(tmp_path: Path) -> None:
    src = samples.sample("mr").image
    with pytest.raises(VolumeError, match="overwrite the input"):
        check_output_path(src, inputs=(src,))
    with pytest.raises(VolumeError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "m.nii.gz")
    with pytest.raises(VolumeError, match=r"cannot write \.png"):
        check_output_path(tmp_path / "m.png")
    with pytest.raises(VolumeError, match=r"cannot write \.mhd"):
        check_output_path(tmp_path / "m.mhd")
    dicom = samples.sample("ct_dicom").image
    with pytest.raises(VolumeError, match="overwrite the input"):
        check_output_path(dicom / "mask.nii.gz", inputs=(dicom,))


def test_failed_write_leaves_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    volume = read_volume(samples.sample("mr").image)
    target = tmp_path / "mask.nii.gz"
    write_label_map(volume.array > 0, volume, target)
    before = target.read_bytes()

    def broken_save(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(VolumeError, match=r"writing failed.*nothing was changed"):
        write_label_map(volume.array > 50, volume, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


def test_label_maps_get_the_smallest_unsigned_type(tmp_path: Path) -> None:
    volume = Volume.from_array(np.zeros((4, 4, 4)))
    labels = np.zeros((4, 4, 4), np.int64)
    labels[0, 0, 0] = 300
    out = write_label_map(labels, volume, tmp_path / "l.nrrd")
    assert read_volume(out).array.dtype == np.uint16
    with pytest.raises(VolumeError, match="non-negative"):
        write_label_map(-labels, volume, tmp_path / "neg.nrrd")
    with pytest.raises(VolumeError, match="differs from the image"):
        write_label_map(np.zeros((3, 4, 4), bool), volume, tmp_path / "s.nrrd")


def test_nifti_voxels_fall_back_to_nibabel(tmp_path: Path, monkeypatch) -> None:
    """When SimpleITK cannot read a NIfTI (e.g. sheared sform), nibabel's voxels are used."""
    path = samples.sample("mr").image

    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("ITK only supports orthonormal direction cosines")

    monkeypatch.setattr(sitk, "ImageFileReader", Broken)
    volume = read_volume(path)
    assert np.array_equal(volume.array, np.asanyarray(nib.load(str(path)).dataobj))
    assert io.volume_format(path) == "nifti"


def test_mhd_with_separate_raw_file_is_read(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # (k, j, i) for SimpleITK
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "v.mhd"))
    assert (tmp_path / "v.raw").is_file() or (tmp_path / "v.zraw").is_file()
    volume = read_volume(tmp_path / "v.mhd")
    assert volume.shape == (4, 5, 6)
    assert np.array_equal(volume.array, data.transpose(2, 1, 0))
    assert volume.spacing == pytest.approx((0.5, 0.75, 2.0))
    np.testing.assert_allclose(volume.index_to_world(np.zeros((1, 3)), "lps"), [[1.0, 2.0, 3.0]])
