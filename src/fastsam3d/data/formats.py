"""Image file formats by suffix: one table that reading, writing, the server's file list and
uploads, and the dataset layouts share."""

from __future__ import annotations

from pathlib import Path

READ_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mhd",
    ".dcm": "dicom",
    ".ima": "dicom",
}
"""Suffix -> format that :func:`~fastsam3d.data.io.read_volume` reads (a DICOM file stands for
its series; a folder is a DICOM series)."""

WRITE_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".mha": "mha",
    ".dcm": "dicom-seg",
}
"""Suffix -> format a label map can be written as (single files, so writes are atomic; ``.dcm``
is a DICOM Segmentation of an image read from a DICOM series)."""

VOLUME_SUFFIXES = tuple(s for s, f in READ_FORMATS.items() if f != "dicom")
"""Suffixes of files that hold a whole volume (not one DICOM slice)."""

SINGLE_FILE_SUFFIXES = tuple(s for s in VOLUME_SUFFIXES if s not in (".nhdr", ".mhd"))
"""Volumes in one file (no detached data file): what an upload can carry."""

LABEL_MAP_SUFFIXES = tuple(s for s, f in WRITE_FORMATS.items() if f != "dicom-seg")
"""Label-map files any image can get (NIfTI, NRRD, MHA)."""


def suffix_of(path: str | Path) -> str:
    """The format suffix of ``path``, lower case; ``.nii.gz`` counts as one."""
    name = Path(path).name.lower()
    for suffix in READ_FORMATS.keys() | WRITE_FORMATS.keys():
        if "." in suffix[1:] and name.endswith(suffix):
            return suffix
    return Path(name).suffix


def strip_suffix(name: str) -> str:
    """``name`` without its volume suffix (``"ct.nii.gz"`` -> ``"ct"``); unchanged otherwise."""
    suffix = suffix_of(name)
    return name[: -len(suffix)] if suffix in VOLUME_SUFFIXES else name
