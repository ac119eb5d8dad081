"""Bundled sample scans (TotalSegmentator 2.18.0 test data, Apache-2.0) and their checksums.

The labels are TotalSegmentator's *predictions*, not manual ground truth (see the folder's
README.md). :func:`fetch` re-downloads the source distribution and checks it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError

ROOT = Path(__file__).resolve().parent / "totalsegmentator"
"""Folder of the bundled files."""

LabelSet = Literal["total", "total_mr"]


@dataclass(frozen=True)
class Sample:
    """One bundled image with its label map."""

    name: str
    image: Path
    labels: Path
    label_set: LabelSet
    description: str


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in (
        Sample(
            "ct",
            ROOT / "example_ct.nii.gz",
            ROOT / "example_seg_fast_force_split.nii.gz",
            "total",
            "abdomen/pelvis CT, 122x101x112 voxels of 3 mm, 61 structures",
        ),
        Sample(
            "ct_sm",
            ROOT / "example_ct_sm.nii.gz",
            ROOT / "example_seg.nii.gz",
            "total",
            "CT slab, 122x101x30 voxels of 3 mm, 41 structures",
        ),
        Sample(
            "mr",
            ROOT / "example_mr_sm.nii.gz",
            ROOT / "example_seg_mr.nii.gz",
            "total_mr",
            "MR, 117x91x20 voxels of 3 mm, 23 structures",
        ),
        Sample(
            "ct_dicom",
            ROOT / "example_ct_dicom",
            ROOT / "example_seg_dicom.nii.gz",
            "total",
            "CT DICOM series, 20 slices of 512x512, 0.98x0.98x2 mm, 31 structures",
        ),
    )
}


def sample(name: str) -> Sample:
    """A bundled sample by name (``ct``, ``ct_sm``, ``mr``, ``ct_dicom``)."""
    try:
        return SAMPLES[name]
    except KeyError:
        raise InputError(f"unknown sample {name!r}; available: {sorted(SAMPLES)}") from None


def label_names(label_set: LabelSet) -> dict[int, str]:
    """Label value -> structure name (TotalSegmentator's ``class_map``)."""
    tables = json.loads((ROOT / "label_names.json").read_text())
    if label_set not in tables:
        raise InputError(f"unknown label set {label_set!r}; available: {sorted(tables)}")
    return {int(k): v for k, v in tables[label_set].items()}


def label_value(label_set: LabelSet, structure: str) -> int:
    """The label value of a structure name, e.g. ``label_value("total", "liver") == 5``."""
    names = label_names(label_set)
    for value, name in names.items():
        if name == structure:
            return value
    raise InputError(
        f"no structure {structure!r} in {label_set}; e.g. {sorted(names.values())[:8]}"
    )


def _manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "manifest.json").read_text())
    return data


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(root: Path = ROOT) -> list[str]:
    """Files under ``root`` that are missing or differ from the manifest (empty: all good)."""
    problems = []
    for rel, expected in _manifest()["files"].items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif _sha256(path) != expected:
            problems.append(f"{rel}: checksum differs")
    return problems


def fetch(dest: Path, everything: bool = False) -> list[Path]:
    """Download the TotalSegmentator sdist with pip, check its sha256, extract into ``dest``.

    Args:
        dest: output folder (created).
        everything: the whole ``tests/reference_files`` folder (34 MB) instead of the bundled
            files.

    Returns:
        The files written. Raises ``RuntimeError`` when pip fails or a checksum differs.
    """
    source = _manifest()["source"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            source["package"],
            "-d",
            tmp,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        archive = Path(tmp) / source["sdist"]
        if done.returncode != 0 or not archive.is_file():
            raise RuntimeError(f"pip download failed:\n{done.stderr.strip()[-2000:]}")
        if _sha256(archive) != source["sdist_sha256"]:
            raise RuntimeError(f"{archive.name}: sha256 differs from the recorded one; not used")
        prefix = source["folder_in_sdist"].rstrip("/") + "/"
        wanted = set(_manifest()["files"])
        written = []
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if not member.isfile() or not member.name.startswith(prefix):
                    continue
                rel = member.name[len(prefix) :]
                if not everything and rel not in wanted:
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                extracted = tar.extractfile(member)
                assert extracted is not None
                with extracted, target.open("wb") as out:
                    shutil.copyfileobj(extracted, out)
                written.append(target)
        for name in ("label_names.json", "LICENSE", "README.md"):
            if not (dest / name).exists():
                shutil.copy2(ROOT / name, dest / name)
    bad = [p for p in verify(dest) if not p.startswith(("label_names.json", "LICENSE"))]
    if bad:
        raise RuntimeError(f"fetched files do not match the manifest: {bad}")
    return written
