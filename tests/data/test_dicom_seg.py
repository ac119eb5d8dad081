"""DICOM SEG output: every frame lands on its source slice, the file validates (dciodvfy), and
inputs that cannot get a SEG are refused clearly."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from fastsam3d import samples
from fastsam3d.cli import main
from fastsam3d.data.align import labels_on_grid
from fastsam3d.data.dicom_seg import BlankUIDWarning
from fastsam3d.data.io import read_volume, write_label_map
from fastsam3d.data.volume import VolumeError

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """The bundled DICOM CT with the Study/Series Instance UIDs its anonymiser blanked filled in
    (its SOP Instance UIDs stay blank in the datasets: the writer takes them from the file
    meta)."""
    from pydicom.uid import generate_uid

    out = tmp_path_factory.mktemp("series")
    study = generate_uid(entropy_srcs=["fastsam3d test study"])
    series_uid = generate_uid(entropy_srcs=["fastsam3d test series"])
    for f in sorted(Path(samples.sample("ct_dicom").image).iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.save_as(out / f.name)
    return out


def _read_back(seg_path: Path, series: Path) -> np.ndarray:
    """The SEG as an ``(I, J, K)`` label map (segment number per voxel), placed by each frame's
    referenced source instance, independently of the writer."""
    volume = read_volume(series)
    seg = pydicom.dcmread(seg_path)
    by_uid = {}
    for f in series.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_uid[ds.file_meta.MediaStorageSOPInstanceUID] = np.array(
            [float(v) for v in ds.ImagePositionPatient]
        )
    lps = np.diag([-1.0, -1.0, 1.0]) @ volume.affine[:3, :3]
    origin = np.diag([-1.0, -1.0, 1.0]) @ volume.affine[:3, 3]
    k_of = {
        uid: int(np.rint(np.linalg.lstsq(lps, pos - origin, rcond=None)[0][2]))
        for uid, pos in by_uid.items()
    }
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    shared = seg.SharedFunctionalGroupsSequence[0]  # one segment: its number is shared
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        where = group if "SegmentIdentificationSequence" in group else shared
        number = int(where.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        labels[:, :, k_of[uid]][frame.T > 0] = number
    return labels


@pytest.mark.parametrize("which", ["bundled", "with_uids"])
def test_seg_frames_land_on_their_source_slices_and_validate(which, series, tmp_path) -> None:
    if which == "bundled":  # as shipped: Study/Series Instance UIDs blank, a warning says so
        series = Path(samples.sample("ct_dicom").image)
    volume = read_volume(series)
    truth = labels_on_grid(read_volume(samples.sample("ct_dicom").labels), volume)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[truth == samples.label_value("total", "liver")] = 1
    labels[truth == samples.label_value("total", "spleen")] = 2
    labels[:40, :30, 3] = 2  # an asymmetric block: a flipped or transposed frame would show
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_label_map(labels, volume, tmp_path / "labels.dcm")
    blank = [w for w in caught if issubclass(w.category, BlankUIDWarning)]
    seg = pydicom.dcmread(out)
    source = pydicom.dcmread(next(series.iterdir()))
    if which == "bundled":
        assert len(blank) == 2
        assert "StudyInstanceUID" in str(blank[0].message)
        again = write_label_map(labels, volume, tmp_path / "again.dcm")
        assert pydicom.dcmread(again).StudyInstanceUID == seg.StudyInstanceUID  # stable
        assert seg.StudyInstanceUID.startswith("2.25.")
    else:
        assert not blank
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["object 1", "object 2"]
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.Manufacturer == "fastsam3d"
    np.testing.assert_array_equal(_read_back(out, series), labels)
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is needed: scripts/setup.sh --browser")
    report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if "Error" in line]
    assert not errors, "\n".join(errors)


def test_segment_cli_writes_a_seg_equal_to_the_nifti_mask(tmp_path) -> None:
    series = Path(samples.sample("ct_dicom").image)  # the bundled series, as shipped
    volume = read_volume(series)
    truth = labels_on_grid(read_volume(samples.sample("ct_dicom").labels), volume)
    liver = truth == samples.label_value("total", "liver")
    point = ",".join(str(int(v)) for v in np.argwhere(liver).mean(axis=0).round())
    common = ["segment", str(series), "--point", point, "--runtime", "torch"]
    assert main([*common, "--out", str(tmp_path / "mask.nii.gz")]) == 0
    with pytest.warns(BlankUIDWarning, match="no StudyInstanceUID"):
        assert main([*common, "--out", str(tmp_path / "mask.dcm")]) == 0
    nifti = np.asarray(read_volume(tmp_path / "mask.nii.gz").array)
    assert nifti.sum() > 0
    np.testing.assert_array_equal(_read_back(tmp_path / "mask.dcm", series), nifti)


def test_inputs_that_cannot_get_a_seg_are_refused(series, tmp_path, capsys) -> None:
    blank = tmp_path / "blank"  # no SOP Instance UID anywhere: frames cannot reference slices
    blank.mkdir()
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(blank / f.name)
    volume = read_volume(blank)
    with pytest.raises(VolumeError, match="SOPInstanceUID is empty"):
        write_label_map(np.ones(volume.shape, np.uint8), volume, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()
    ct = samples.sample("ct").image
    code = main(["segment", str(ct), "--point", "60,50,50", "--out", str(tmp_path / "m.dcm")])
    assert code != 0
    assert "must reference a DICOM series" in capsys.readouterr().err
    assert not (tmp_path / "m.dcm").exists()


def test_server_downloads_a_session_as_seg_with_one_segment_per_object(series, tmp_path) -> None:
    from fastapi.testclient import TestClient

    import fastsam3d
    from fastsam3d.server import ServerConfig, create_app

    data = tmp_path / "data"
    shutil.copytree(series, data / "ct_series")
    shutil.copy(samples.sample("ct").image, data / "ct.nii.gz")
    config = ServerConfig(data_dir=data, recovery_dir=tmp_path / "recovery")
    with TestClient(
        create_app(fastsam3d.load_model("test-tiny", seed=1, random_weights=True), config)
    ) as client:
        sid = client.post("/api/sessions", json={"path": "ct_series"}).json()["id"]
        for name, point in (("liver", (180, 280, 10)), ("spleen", (350, 300, 12))):
            client.post(f"/api/sessions/{sid}/objects", json={"name": name})
            r = client.post(f"/api/sessions/{sid}/clicks", json={"point": point})
            assert r.status_code == 200, r.text
        r = client.get(f"/api/sessions/{sid}/labels.dcm")
        assert r.status_code == 200, r.text
        (tmp_path / "labels.dcm").write_bytes(r.content)
        r = client.get(f"/api/sessions/{sid}/labels.nii.gz")
        (tmp_path / "labels.nii.gz").write_bytes(r.content)
        seg = pydicom.dcmread(tmp_path / "labels.dcm")
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen"]
        expected = np.asarray(read_volume(tmp_path / "labels.nii.gz").array)
        assert set(np.unique(expected)) >= {1, 2}
        np.testing.assert_array_equal(_read_back(tmp_path / "labels.dcm", series), expected)
        other = client.post("/api/sessions", json={"path": "ct.nii.gz"}).json()["id"]
        client.post(f"/api/sessions/{other}/objects", json={"name": "x"})
        r = client.get(f"/api/sessions/{other}/labels.dcm")
        assert r.status_code == 409
        assert "DICOM series" in r.json()["detail"]
