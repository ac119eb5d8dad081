"""One table of image formats: suffixes map to the same format everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastsam3d.data.formats import (
    LABEL_MAP_SUFFIXES,
    SINGLE_FILE_SUFFIXES,
    VOLUME_SUFFIXES,
    strip_suffix,
    suffix_of,
)
from fastsam3d.data.io import output_format, volume_format
from fastsam3d.data.volume import VolumeError


@pytest.mark.parametrize(
    ("name", "suffix", "stem"),
    [
        ("ct.nii.gz", ".nii.gz", "ct"),
        ("CT.NII.GZ", ".nii.gz", "CT"),
        ("a.b.nii", ".nii", "a.b"),
        ("x.nhdr", ".nhdr", "x"),
        ("notes.txt", ".txt", "notes.txt"),
    ],
)
def test_suffix_and_stem(name: str, suffix: str, stem: str) -> None:
    assert suffix_of(name) == suffix
    assert strip_suffix(name) == stem


def test_reading_and_writing_agree_with_the_table() -> None:
    assert volume_format(Path("a.nhdr")) == "nrrd"
    assert volume_format(Path("a.mhd")) == "mhd"
    assert output_format(Path("a.dcm")) == "dicom-seg"
    for suffix in LABEL_MAP_SUFFIXES:
        assert output_format(Path(f"m{suffix}")) == volume_format(Path(f"m{suffix}"))
    with pytest.raises(VolumeError, match="cannot write"):
        output_format(Path("m.nhdr"))  # a detached header cannot be written atomically
    assert set(SINGLE_FILE_SUFFIXES) < set(VOLUME_SUFFIXES)
    assert ".mhd" not in SINGLE_FILE_SUFFIXES
