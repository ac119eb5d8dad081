"""Dataset layouts people have on disk, turned into evaluation cases.

A :class:`Case` is one image with its labelled structures; a :class:`Structure` is either a
value in a label map (``value`` set) or a binary mask file (``value`` ``None``: any non-zero
voxel). Supported layouts (``load_cases(root, layout)``):

- ``amos``: AMOS 2022 (``dataset.json`` with ``training`` / ``validation`` lists of
  ``{"image", "label"}`` and ``labels`` ``{"0": "background", "1": "spleen", ...}``).
- ``nnunet``: nnU-Net raw data: v1 / Medical Segmentation Decathlon (same ``dataset.json`` form
  as AMOS) or v2 (``labels`` ``{"background": 0, "spleen": 1}``, ``channel_names``,
  ``file_ending``; images ``imagesTr/<case>_<channel:04d><ending>``).
- ``totalseg``: TotalSegmentator (``<subject>/ct.nii.gz`` + ``<subject>/segmentations/*.nii.gz``,
  optional ``meta.csv`` with a ``split`` column).
- ``brats``: BraTS 2021 (``<subject>/<subject>_{t1,t1ce,t2,flair}.nii.gz`` and ``_seg.nii.gz``
  with labels 1 necrotic tumour core, 2 peritumoral oedema, 4 enhancing tumour).
- ``samples``: the bundled TotalSegmentator scans; ``root`` is a comma-separated list of sample
  names (``ct,mr``; see ``fastsam3d samples list``). Their labels are TotalSegmentator's
  predictions, not manual ground truth.
- ``manifest``: a CSV (columns ``image, label`` and optional ``case_id, channel, classes``
  written ``"1:liver;2:spleen"``) or a JSON file (``{"classes": {"1": "liver"}, "cases":
  [{"image", "label", ...}]}``). Relative paths are relative to the manifest's folder; without
  class names every label value present becomes a structure ``label_<value>``.

Multi-channel images (MSD's 4D volumes) take ``channel``. Errors name the file and what was
expected.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.formats import strip_suffix
from ..errors import InputError

Layout = str
LAYOUTS = ("amos", "nnunet", "totalseg", "brats", "manifest", "samples")

BRATS_CLASSES = {1: "necrotic_tumor_core", 2: "peritumoral_edema", 4: "enhancing_tumor"}
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")


@dataclass(frozen=True)
class Structure:
    """One target: ``value`` in the label map at ``path``, or a binary file (``value`` None)."""

    name: str
    path: Path
    value: int | None


@dataclass(frozen=True)
class Case:
    """One image and its labelled structures.

    ``structures`` empty and ``label_map`` set means: every value present in the label map is a
    structure (names ``label_<value>``), discovered when the labels are read.
    """

    case_id: str
    image: Path
    structures: tuple[Structure, ...] = ()
    label_map: Path | None = None
    channel: int | None = None
    dataset: str = ""
    meta: dict[str, str] = field(default_factory=dict)


class DatasetError(InputError):
    """A dataset folder or manifest does not have the expected layout."""


def load_cases(
    root: str | Path,
    layout: Layout,
    *,
    split: str | None = None,
    channel: int | None = None,
    modality: str = "t1ce",
) -> list[Case]:
    """Cases of a dataset, sorted by id.

    Args:
        root: dataset folder (or the manifest file for ``manifest``).
        layout: one of :data:`LAYOUTS`.
        split: ``amos``/``nnunet`` v1: ``training`` (default) or ``validation``; ``totalseg``:
            a value of ``meta.csv``'s ``split`` column.
        channel: which channel of multi-channel images (nnU-Net v2: the ``_000N`` file).
        modality: ``brats``: ``t1``, ``t1ce``, ``t2`` or ``flair``.
    """
    if layout == "samples":
        return _load_samples(str(root))
    path = Path(root)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset folder or manifest")
    if layout in ("amos", "nnunet"):
        cases = _load_json_dataset(path, split, channel, layout)
    elif layout == "totalseg":
        cases = _load_totalseg(path, split)
    elif layout == "brats":
        cases = _load_brats(path, modality)
    elif layout == "manifest":
        cases = _load_manifest(path, channel)
    else:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not cases:
        raise DatasetError(f"{path}: no cases found for layout {layout!r}")
    missing = [str(c.image) for c in cases if not c.image.exists()]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} images listed but missing, e.g. {missing[:3]}")
    return sorted(cases, key=lambda c: c.case_id)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot read JSON ({err})") from None


def _strip_ending(name: str) -> str:
    stripped = strip_suffix(name)
    return stripped if stripped != name else Path(name).stem


def _label_structures(classes: dict[int, str], label: Path) -> tuple[Structure, ...]:
    return tuple(
        Structure(name, label, value) for value, name in sorted(classes.items()) if value != 0
    )


def _load_json_dataset(
    root: Path, split: str | None, channel: int | None, layout: str
) -> list[Case]:
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{root}: no dataset.json (expected an {layout} / MSD / nnU-Net folder)")
    meta = _read_json(meta_path)
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        raise DatasetError(f"{meta_path}: 'labels' must map values to names")
    name = str(meta.get("name", root.name))
    if "file_ending" in meta:  # nnU-Net v2
        classes: dict[int, str] = {}
        for label_name, value in labels.items():
            if not isinstance(value, int):
                raise DatasetError(
                    f"{meta_path}: region-based label {label_name!r}: {value!r} is not supported; "
                    "evaluate its parts or use a manifest"
                )
            classes[value] = label_name
        ending = meta["file_ending"]
        chan = 0 if channel is None else channel
        cases = []
        for label in sorted((root / "labelsTr").glob(f"*{ending}")):
            case_id = label.name[: -len(ending)]
            image = root / "imagesTr" / f"{case_id}_{chan:04d}{ending}"
            cases.append(Case(case_id, image, _label_structures(classes, label), dataset=name))
        return cases
    try:
        classes = {int(k): str(v) for k, v in labels.items()}
    except ValueError:
        raise DatasetError(
            f"{meta_path}: label keys must be integers, got {list(labels)}"
        ) from None
    key = split or "training"
    entries = meta.get(key)
    if not isinstance(entries, list):
        lists = [k for k, v in meta.items() if isinstance(v, list)]
        raise DatasetError(f"{meta_path}: no list {key!r} (available: {lists})")
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(
                f"{meta_path}: entries of {key!r} need 'image' and 'label', got {entry!r}"
            )
        image, label = root / entry["image"], root / entry["label"]
        cases.append(
            Case(
                _strip_ending(image.name),
                image,
                _label_structures(classes, label),
                channel=channel,
                dataset=name,
            )
        )
    return cases


def _load_totalseg(root: Path, split: str | None) -> list[Case]:
    subjects = sorted(
        p for p in root.iterdir() if (p / "ct.nii.gz").is_file() and (p / "segmentations").is_dir()
    )
    if split is not None:
        meta = root / "meta.csv"
        if not meta.is_file():
            raise DatasetError(f"{root}: split {split!r} requested but there is no meta.csv")
        with meta.open(newline="") as f:
            sample = f.read(4096)
            f.seek(0)
            reader = csv.DictReader(f, delimiter=";" if ";" in sample.splitlines()[0] else ",")
            keep = {row["image_id"] for row in reader if row.get("split") == split}
        subjects = [s for s in subjects if s.name in keep]
    cases = []
    for subject in subjects:
        structures = tuple(
            Structure(_strip_ending(p.name), p, None)
            for p in sorted((subject / "segmentations").glob("*.nii*"))
        )
        cases.append(
            Case(subject.name, subject / "ct.nii.gz", structures, dataset="TotalSegmentator")
        )
    return cases


def _load_brats(root: Path, modality: str) -> list[Case]:
    if modality not in BRATS_MODALITIES:
        raise DatasetError(f"BraTS modality must be one of {BRATS_MODALITIES}, got {modality!r}")
    cases = []
    for seg in sorted(root.glob("*/*_seg.nii*")):
        subject = seg.parent
        image = next(iter(sorted(subject.glob(f"{subject.name}_{modality}.nii*"))), None)
        if image is None:
            raise DatasetError(f"{subject}: no {modality} image ({subject.name}_{modality}.nii.gz)")
        cases.append(
            Case(
                subject.name,
                image,
                _label_structures(BRATS_CLASSES, seg),
                dataset=f"BraTS2021 ({modality})",
            )
        )
    return cases


def _parse_classes(text: str, where: str) -> dict[int, str]:
    classes = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        value, _, name = item.partition(":")
        try:
            classes[int(value)] = name.strip() or f"label_{int(value)}"
        except ValueError:
            raise DatasetError(
                f"{where}: classes must look like '1:liver;2:spleen', got {text!r}"
            ) from None
    return classes


def _manifest_case(
    entry: dict[str, Any],
    base: Path,
    n: int,
    default_classes: dict[int, str],
    channel: int | None,
    where: str,
) -> Case:
    if "image" not in entry or "label" not in entry:
        raise DatasetError(f"{where}: row {n} needs 'image' and 'label', got {entry!r}")
    image, label = base / str(entry["image"]), base / str(entry["label"])
    case_id = str(entry.get("case_id") or _strip_ending(image.name))
    classes = default_classes
    raw = entry.get("classes")
    if isinstance(raw, dict):
        classes = {int(k): str(v) for k, v in raw.items()}
    elif isinstance(raw, str) and raw.strip():
        classes = _parse_classes(raw, f"{where} row {n}")
    chan = entry.get("channel")
    chan_value = channel if chan in (None, "") else int(chan)
    if classes:
        return Case(
            case_id, image, _label_structures(classes, label), channel=chan_value, dataset=base.name
        )
    return Case(case_id, image, (), label_map=label, channel=chan_value, dataset=base.name)


def _load_manifest(path: Path, channel: int | None) -> list[Case]:
    if path.is_dir():
        raise DatasetError(f"{path}: the manifest layout takes a .csv or .json file")
    base = path.parent
    where = str(path)
    rows: Iterable[dict[str, Any]]
    default_classes: dict[int, str] = {}
    if path.suffix.lower() == ".json":
        data = _read_json(path)
        if isinstance(data, dict):
            default_classes = {int(k): str(v) for k, v in (data.get("classes") or {}).items()}
            rows = data.get("cases", [])
        else:
            rows = data
        if not isinstance(rows, list):
            raise DatasetError(f"{where}: expected a list of cases")
    elif path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise DatasetError(f"{where}: a manifest must be .csv or .json")
    return [
        _manifest_case(dict(r), base, n, default_classes, channel, where)
        for n, r in enumerate(rows)
    ]


def _load_samples(names: str) -> list[Case]:
    from .. import samples

    cases = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            s = samples.sample(name)
        except ValueError as err:
            raise DatasetError(str(err)) from None
        classes = samples.label_names(s.label_set)
        cases.append(
            Case(
                name,
                s.image,
                _label_structures(classes, s.labels),
                dataset="TotalSegmentator samples (labels: TotalSegmentator predictions)",
            )
        )
    if not cases:
        raise DatasetError("layout 'samples' takes sample names, e.g. 'ct,mr'")
    return cases
