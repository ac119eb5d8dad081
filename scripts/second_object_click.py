"""Time the first click of a second object in a region another object already encoded.

Each round opens a fresh annotation on the bundled CT, clicks a first object at the liver's
centre (this encodes the region), adds a second object and times its first click, ``--offset``
voxels away. The objects of a scan share one embedding cache (issue 15): that click decodes
only when it falls in an encoded region; before, every object encoded its own regions. Runs on
older checkouts too (``PYTHONPATH=<checkout>/src``), to time before and after:

    python scripts/second_object_click.py --rounds 7
    python scripts/second_object_click.py --offset 6 -4 2 --grid-mm 48
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from fastsam3d import load_model, samples
from fastsam3d.bench.encoders import machine_info
from fastsam3d.bench.timing import ForeignLoad
from fastsam3d.data.io import read_volume

try:
    from fastsam3d.interactive.annotation import Annotation
except ImportError:  # checkouts before issue 15
    from fastsam3d.server.annotation import Annotation  # type: ignore[no-redef]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="fastsam3d-lite")
    parser.add_argument("--offset", type=float, nargs=3, default=(0.0, 0.0, 0.0))
    parser.add_argument("--grid-mm", type=float, default=None, help="region lattice pitch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    sample = samples.sample("ct")
    volume = read_volume(sample.image)
    liver = read_volume(sample.labels).array == samples.label_value(sample.label_set, "liver")
    first = np.argwhere(liver).mean(axis=0).round()
    second = first + np.array(args.offset)
    extra = {"region_grid_mm": args.grid_mm} if args.grid_mm else {}

    def round_trip() -> tuple[float, float, dict[str, float]]:
        annotation = Annotation(volume, model, source="ct", uploaded=False, **extra)
        annotation.add_object("liver")
        t0 = time.perf_counter()
        annotation.click(first, True)
        t1 = time.perf_counter()
        annotation.add_object("second")
        outcome = annotation.click(second, True)
        t2 = time.perf_counter()
        assert outcome is not None
        return 1e3 * (t1 - t0), 1e3 * (t2 - t1), outcome.timings_ms

    round_trip()  # warm-up: first-call allocations are not measured
    firsts, seconds, encodes, loads = [], [], [], []
    for _ in range(args.rounds):
        with ForeignLoad() as load:
            one, two, timings = round_trip()
        firsts.append(one)
        seconds.append(two)
        encodes.append(timings["encode"])
        loads.append(load.cores)
    report = {
        "machine": machine_info(args.threads),
        "code": Annotation.__module__,
        "model": args.model,
        "rounds": args.rounds,
        "offset_voxels": list(args.offset),
        "region_grid_mm": args.grid_mm,
        "first_object_first_click_ms": statistics.median(firsts),
        "second_object_first_click_ms": statistics.median(seconds),
        "second_object_encode_ms": statistics.median(encodes),
        "second_object_clicks_ms": [round(v, 1) for v in seconds],
        "foreign_load_cores": [None if v is None else round(v, 2) for v in loads],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
