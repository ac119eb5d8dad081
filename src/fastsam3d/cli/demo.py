"""``fastsam3d demo``: the bundled model segments structures of a bundled scan (masks + PNGs)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..demo import read_demo_scan, run_demo
from ..registry import get_spec
from ..samples import SAMPLES
from .common import (
    FROM_CHECKPOINT,
    apply_threads,
    compute_parent,
    load_for_command,
    model_parent,
    prepared,
    single_checkpoint,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        parents=[model_parent(), compute_parent()],
        help="segment structures of a bundled scan with the bundled model; writes masks + PNGs",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument(
        "--sample",
        default="ct_dicom",
        choices=sorted(SAMPLES),
        help="bundled sample (default ct_dicom: held out from training)",
    )
    p.add_argument(
        "--structures", default="liver,spleen,stomach", help="TotalSegmentator structure names"
    )
    p.add_argument("--clicks", type=int, default=3, help="clicks per structure")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    t0 = time.perf_counter()
    names = [n.strip() for n in args.structures.split(",") if n.strip()]
    scan = read_demo_scan(args.sample, names)
    t1 = time.perf_counter()
    files = single_checkpoint(args)
    model, label = load_for_command(args.model, files, args.device)
    runner, runtime = prepared(model, args)
    t2 = time.perf_counter()
    image = SAMPLES[args.sample].image
    print(f"scan    {image.name}: {scan.volume.describe()} (read in {1e3 * (t1 - t0):.0f} ms)")
    spec = None if args.model == FROM_CHECKPOINT else get_spec(args.model)
    if files is None and spec is not None and spec.trained_on:
        seen = args.sample in spec.trained_on
        print(
            f"        {'used for' if seen else 'held out from'} training the bundled weights "
            f"(trained on: {', '.join(spec.trained_on)})"
        )
    weights = " (bundled weights)" if files is None else f": {label}"
    shown = label if args.model == FROM_CHECKPOINT else f"{args.model}{weights}"
    print(f"model   {shown}, runtime {runtime} (ready in {1e3 * (t2 - t1):.0f} ms)")
    print(
        "clicks are placed by a simulated user at the centre of the largest error, using "
        "TotalSegmentator's labels (its predictions, not manual ground truth)"
    )
    run_demo(runner, scan, Path(args.out), clicks=args.clicks)
    return 0
