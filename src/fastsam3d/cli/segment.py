"""``fastsam3d segment``: clicks on a scan in, a mask on the scan's own grid out."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import cast

import numpy as np

from ..config import PROMPTING_CHOICES
from ..data.io import check_output_path, output_format, read_volume, volume_format, write_label_map
from ..data.volume import WorldConvention
from ..errors import InputError
from ..interactive.session import Session
from ..registry import get_spec
from .common import (
    FROM_CHECKPOINT,
    apply_threads,
    compute_parent,
    load_for_command,
    model_parent,
    parse_point,
    prepared,
    single_checkpoint,
)

Click = tuple[tuple[float, float, float], bool]


class _ClickAction(argparse.Action):
    """``--point`` / ``--negative`` append ``(point, positive)`` to one ordered list."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        clicks = list(getattr(namespace, self.dest) or [])
        clicks.append((values, self.const))
        setattr(namespace, self.dest, clicks)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "segment",
        parents=[model_parent(), compute_parent()],
        help="segment a scan from clicks and write the mask on the scan's grid",
        description="Reads IMAGE (NIfTI, NRRD, MHA/MHD, or a DICOM folder), applies the clicks "
        "in the order given (each one refines the previous result, as the models were trained) "
        "and writes the mask with exactly the input's geometry. Points are voxel indices i,j,k "
        "in the file's own index order (as nibabel, ITK-SNAP and 3D Slicer show them), or "
        "millimetres with --world.",
    )
    p.add_argument("image", help="image file or DICOM folder")
    for flag, positive, text in (("--point", True, "positive"), ("--negative", False, "negative")):
        p.add_argument(
            flag,
            dest="clicks",
            type=parse_point,
            action=_ClickAction,
            const=positive,
            metavar="I,J,K",
            help=f"{text} click (repeatable)",
        )
    p.add_argument(
        "--prompts",
        help='JSON file {"world": null, "clicks": [{"point": [i,j,k], "positive": true}]}',
    )
    p.add_argument("--world", choices=("ras", "lps"), help="points are world mm in this convention")
    p.add_argument("--channel", type=int, help="for 4D images: which volume to use (0-based)")
    p.add_argument(
        "--prompting",
        choices=PROMPTING_CHOICES,
        default="auto",
        help="send only the newest click or all clicks of the region (default: as the model "
        "was trained)",
    )
    p.add_argument(
        "--out", required=True, help="output mask (.nii.gz, .nii, .nrrd, .mha; .dcm: DICOM SEG)"
    )
    p.set_defaults(func=run)


def read_prompt_file(path: Path) -> tuple[list[Click], WorldConvention | None]:
    """A JSON prompt file -> ordered clicks and the world convention (None: voxel indices).

    Format: ``{"world": null | "ras" | "lps", "clicks": [{"point": [i, j, k], "positive": true},
    ...]}`` (``positive`` defaults to true).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read the prompt file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("clicks"), list):
        raise InputError(
            f'{path}: expected {{"clicks": [{{"point": [i, j, k], "positive": true}}, ...]}}'
        )
    world = data.get("world")
    if world not in (None, "ras", "lps"):
        raise InputError(f"{path}: 'world' must be null, 'ras' or 'lps', got {world!r}")
    world = cast("WorldConvention | None", world)
    clicks = []
    for n, entry in enumerate(data["clicks"]):
        point = entry.get("point") if isinstance(entry, dict) else None
        positive = entry.get("positive", True) if isinstance(entry, dict) else None
        if (
            not isinstance(point, list)
            or len(point) != 3
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in point)
            or not isinstance(positive, bool)
        ):
            raise InputError(
                f'{path}: click {n} must be {{"point": [3 numbers], "positive": true|false}}, '
                f"got {entry!r}"
            )
        clicks.append(((float(point[0]), float(point[1]), float(point[2])), positive))
    return clicks, world


def _clicks(args: argparse.Namespace) -> tuple[list[Click], WorldConvention | None]:
    """The command line's and the prompt file's clicks, in order, and their convention."""
    clicks = list(args.clicks or [])
    world: WorldConvention | None = args.world
    if args.prompts:
        file_clicks, file_world = read_prompt_file(Path(args.prompts))
        if clicks and file_world != world:
            raise InputError(
                "--prompts and --point/--negative use different coordinate conventions"
            )
        clicks += file_clicks
        world = file_world if file_world is not None else world
    if not clicks:
        raise InputError("no clicks: give --point i,j,k (and --negative i,j,k) or --prompts FILE")
    return clicks, world


def _stage(name: str, ms: float, detail: str = "") -> None:
    print(f"{name:<12} {ms:8.1f} ms  {detail}".rstrip())


def run(args: argparse.Namespace) -> int:
    clicks, world = _clicks(args)
    out = check_output_path(args.out, inputs=(Path(args.image),))
    if output_format(out) == "dicom-seg" and volume_format(Path(args.image)) != "dicom":
        raise InputError(
            f"{out}: a .dcm output is a DICOM Segmentation, which must reference a DICOM series; "
            f"{args.image} is not one: write .nii.gz, .nrrd or .mha instead"
        )
    apply_threads(args)
    t = time.perf_counter()
    volume = read_volume(args.image, channel=args.channel)
    _stage("load image", 1e3 * (time.perf_counter() - t), volume.describe())
    t = time.perf_counter()
    files = single_checkpoint(args)
    if files is None and args.model != FROM_CHECKPOINT and get_spec(args.model).weights is None:
        raise InputError(
            f"model {args.model!r} has no bundled weights: pass --checkpoint (published "
            "SAM-Med3D / FastSAM3D weights), or use --model fastsam3d-lite"
        )
    model, _ = load_for_command(args.model, files, args.device)
    runner, runtime = prepared(model, args)
    _stage(
        "load model",
        1e3 * (time.perf_counter() - t),
        f"{args.model} on {model.device}, runtime {runtime}",
    )
    session = Session(runner, prompting=args.prompting, runtime="torch")
    session.set_image(volume)
    for n, (point, positive) in enumerate(clicks, start=1):
        result = session.add_click(point, positive, world=world)
        assert result is not None  # predict=True always answers
        tm = result.timings_ms
        where = ", ".join(f"{v:g}" for v in point) + (f" mm {world.upper()}" if world else "")
        region = "new region, " if result.new_region else ""
        sign = "+" if positive else "-"
        print(f"click {n} ({sign}) at ({where}): {region}{int(result.mask.sum())} voxels")
        if tm["encode"]:
            _stage("  preprocess", tm["preprocess"])
            _stage("  encode", tm["encode"])
        _stage("  decode", tm["decode"])
        _stage("  map back", tm["map"])
    t = time.perf_counter()
    write_label_map(session.mask, volume, out)
    voxels = int(session.mask.sum())
    ml = voxels * float(np.prod(volume.spacing)) / 1000.0
    _stage("write", 1e3 * (time.perf_counter() - t), f"{out} ({voxels} voxels, {ml:.1f} ml)")
    return 0
