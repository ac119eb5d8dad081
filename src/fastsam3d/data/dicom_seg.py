"""Label maps as DICOM Segmentation objects (binary, one segment per object), with highdicom.

A SEG made here references the source series' instances and frame of reference, so PACS, OHIF
and 3D Slicer show it over the series it was made from. The label map is on the grid of the
:class:`~fastsam3d.data.volume.Volume` read from that series (``read_volume(folder)``): voxel
``(i, j, k)`` is column ``i`` and row ``j`` of the source instance whose position is the
voxel's; instances are matched to ``k`` by their Image Position (Patient), not by file order,
and the row/column directions are checked against the volume's affine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_output
from .volume import Volume, VolumeError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class SegmentInfo:
    """One segment: the label value in the map, its name and display colour (RGB 0-255)."""

    value: int
    name: str
    color: tuple[int, int, int] = (230, 25, 75)


def _source_datasets(like: Volume) -> list[Any]:
    """The source series' datasets (pixel data not needed), one per ``k``, in ``k`` order."""
    import pydicom

    from .io import dicom_series

    source = like.source
    if source is None or source.format != "dicom" or source.path is None:
        raise VolumeError(
            "DICOM SEG output needs an image read from a DICOM series (the SEG references its "
            f"instances); this image is {'in memory' if source is None else source.format}: "
            "write .nii.gz, .nrrd or .mha instead"
        )
    folder = source.path if source.path.is_dir() else source.path.parent
    files = [f for files in dicom_series(folder).values() for f in files]
    if source.path.is_file():
        files = [f for f in files if Path(f).parent == source.path.parent]
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in datasets:  # identifiers an anonymiser blanked but the file meta still holds
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = ds.file_meta.get("MediaStorageSOPInstanceUID", "")
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.get("MediaStorageSOPClassUID", "")
    missing = [
        key for key in ("SOPInstanceUID", "SOPClassUID") if not all(ds.get(key) for ds in datasets)
    ]
    if missing:
        raise VolumeError(
            f"{folder}: the series' {', '.join(missing)} is empty in its files and their file "
            "meta; a DICOM SEG references each source instance by it, so the series cannot get "
            "one as it is: give it UIDs (e.g. with pydicom or dcmodify) or write .nii.gz instead"
        )
    _fill_blank_study_and_series(datasets, folder)
    # world LPS position of voxel (0, 0, k) for each k, and the instance at each position
    lps = RAS_TO_LPS @ like.affine[:3, :3]
    origin = RAS_TO_LPS @ like.affine[:3, 3]
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = []
    for k in range(like.shape[2]):
        expected = origin + lps[:, 2] * k
        distance = np.linalg.norm(positions - expected, axis=1)
        best = int(np.argmin(distance))
        if distance[best] > 0.01 * float(np.linalg.norm(lps[:, 2])) + 1e-3:
            raise VolumeError(
                f"{folder}: no instance at the position of slice {k} ({expected.round(2)} mm, "
                f"nearest {distance[best]:.2f} mm away); the series does not match the image"
            )
        order.append(best)
    if len(set(order)) != len(order):
        raise VolumeError(f"{folder}: two slices map to the same instance")
    first = datasets[order[0]]
    row_dir = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in first.ImageOrientationPatient[3:]])
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    # i walks along a row (the row direction), j down a column
    if not (
        np.allclose(lps[:, 0], row_dir * col_spacing, atol=1e-3)
        and np.allclose(lps[:, 1], col_dir * row_spacing, atol=1e-3)
    ):
        raise VolumeError(
            f"{folder}: the image's axes do not match the series' rows and columns; cannot "
            "place the segmentation frames"
        )
    return [datasets[i] for i in order]


class BlankUIDWarning(UserWarning):
    """The source series had no Study/Series Instance UID; the SEG uses derived ones."""


def _fill_blank_study_and_series(datasets: list[Any], folder: Path) -> None:
    """Give datasets with a blank Study/Series Instance UID one derived from the series' SOP
    Instance UIDs (``2.25.`` form, the same on every run, so SEGs written for one series share
    a study), and warn: a viewer cannot group such a SEG with its source by study."""
    import uuid
    import warnings

    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        present = {str(ds.get(key)) for ds in datasets if ds.get(key)}
        if len(present) > 1:
            raise VolumeError(f"{folder}: the series' files disagree on {key}: {sorted(present)}")
        if present and all(ds.get(key) for ds in datasets):
            continue
        derived = uuid.uuid5(uuid.NAMESPACE_OID, "\\".join([key, *instances]))  # name-based
        uid = present.pop() if present else f"2.25.{derived.int}"
        for ds in datasets:
            setattr(ds, key, uid)
        warnings.warn(
            f"{folder}: the series has no {key} (anonymised without new UIDs?); the DICOM SEG "
            f"uses {uid}, derived from its SOP Instance UIDs: viewers that group by study will "
            "not show it beside the source unless the source is given the same UID",
            BlankUIDWarning,
            stacklevel=4,
        )


def write_dicom_seg(
    labels: np.ndarray,
    like: Volume,
    path: str | Path,
    segments: Sequence[SegmentInfo],
    *,
    series_description: str = "fastsam3d segmentation",
) -> Path:
    """Write ``labels`` ``(I, J, K)`` (on ``like``'s grid) as a binary DICOM SEG, atomically.

    Each entry of ``segments`` becomes one segment (numbered 1, 2, ... in that order) holding
    the voxels equal to its value; frames without any segment voxel are omitted. A source
    series without Study/Series Instance UIDs gets derived ones and a :class:`BlankUIDWarning`.

    Raises:
        VolumeError: not a DICOM-derived image, shapes disagree, no segments, or the series
            cannot be matched to the image grid.
        ImportError: highdicom is not installed (``pip install fastsam3d[dicom]``).
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as err:
        raise ImportError(
            "DICOM SEG output needs highdicom: pip install 'fastsam3d[dicom]'"
        ) from err
    from .._version import __version__

    out = Path(path)
    if labels.shape != like.shape:
        raise VolumeError(f"{out}: label map shape {labels.shape} differs from {like.shape}")
    if not segments:
        raise VolumeError(f"{out}: no segments to write")
    sources = _source_datasets(like)
    # (I, J, K) -> (frames = K, rows = J, columns = I, segments)
    stack = np.stack([labels == s.value for s in segments], axis=-1)
    pixels = np.ascontiguousarray(stack.transpose(2, 1, 0, 3))
    algorithm = hd.AlgorithmIdentificationSequence(
        name="fastsam3d", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=s.name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*s.color),
        )
        for number, s in enumerate(segments, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="fastsam3d",
        manufacturer_model_name="fastsam3d interactive segmentation",
        software_versions=__version__,
        device_serial_number="none",
        series_description=series_description,
    )
    with atomic_output(out, suffix=".tmp.dcm") as tmp:
        seg.save_as(tmp)
    return out
