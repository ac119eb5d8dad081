"""Interactive latency: the first click on a newly loaded scan and warm clicks, per stage.

In one process with the model loaded and warmed up (as in an interactive application), each
round reads the scan, sets it on a fresh :class:`~fastsam3d.interactive.session.Session`, clicks
once (preprocess + encode + decode + map back) and then clicks ``warm_clicks`` more times inside
the same region (decode + map back + mask update). Click positions are drawn inside a labelled
structure of a bundled sample with a seeded generator. Timing does not depend on the weights.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from ..build import load_model
from ..data.io import read_volume
from ..interactive.session import Session
from ..runtime.onednn import optimize_for_cpu
from ..samples import label_value, sample
from .encoders import machine_info
from .timing import ForeignLoad


def benchmark_session(
    sample_name: str = "ct",
    structure: str = "liver",
    model_name: str = "fastsam3d",
    runtime: str = "torch",
    rounds: int = 7,
    warm_clicks: int = 10,
    threads: int = 2,
    seed: int = 0,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Measure first-click and warm-click latency on a bundled sample; returns a JSON-ready dict."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = load_model(model_name)
        if runtime == "onednn":
            model = optimize_for_cpu(model)
        elif runtime != "torch":
            raise ValueError(f"unknown runtime {runtime!r}; choose torch or onednn")
        chosen = sample(sample_name)
        labels = read_volume(chosen.labels).array
        inside = np.argwhere(labels == label_value(chosen.label_set, structure)).astype(float)
        rng = np.random.default_rng(seed)
        centre = inside.mean(axis=0)
        near = inside[np.linalg.norm(inside - centre, axis=1) < 12]  # voxels, stays in one ROI
        warm = Session(model)  # warm-up: first-call allocations are not part of the measurement
        warm.set_image(read_volume(chosen.image))
        warm.add_click(centre)
        warm.add_click(near[0])

        records: list[dict[str, float]] = []
        warm_ms: list[float] = []
        loads: list[float | None] = []
        steps: Iterable[int] = range(rounds)
        if progress is not None:
            steps = progress(steps)
        for _ in steps:
            with ForeignLoad() as load:
                t0 = time.perf_counter()
                volume = read_volume(chosen.image)
                t1 = time.perf_counter()
                session = Session(model)
                session.set_image(volume)
                first = session.add_click(centre)
                t2 = time.perf_counter()
                assert first is not None
                for n in range(warm_clicks):
                    point = near[rng.integers(len(near))]
                    c0 = time.perf_counter()
                    session.add_click(point, positive=bool(n % 3))
                    warm_ms.append(1e3 * (time.perf_counter() - c0))
            loads.append(load.cores)
            records.append(
                {"read": 1e3 * (t1 - t0), "first_click": 1e3 * (t2 - t1), **first.timings_ms}
            )
    finally:
        torch.set_num_threads(previous)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in records)

    ordered = sorted(warm_ms)
    return {
        "machine": machine_info(threads),
        "sample": sample_name,
        "image": chosen.image.name,
        "model": model_name,
        "runtime": runtime,
        "rounds": rounds,
        "warm_clicks_per_round": warm_clicks,
        "first_click_ms": {
            "median": med("first_click"),
            "median_with_file_read": statistics.median(
                r["read"] + r["first_click"] for r in records
            ),
            **{k: med(k) for k in ("read", "preprocess", "encode", "decode", "map")},
        },
        "warm_click_ms": {
            "median": statistics.median(warm_ms),
            "p90": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
            "min": ordered[0],
        },
        "foreign_cores": loads,
        "records": records,
        "warm_samples_ms": warm_ms,
    }


def session_markdown(report: dict[str, Any]) -> str:
    """A short Markdown table of :func:`benchmark_session` output."""
    first, warm, m = report["first_click_ms"], report["warm_click_ms"], report["machine"]
    lines = [
        f"| {report['model']} ({report['runtime']}), {report['image']} | median ms |",
        "|---|---:|",
        "| first click on a newly loaded scan (preprocess + encode + decode + map) | "
        f"{first['median']:.0f} |",
        f"| ... of which preprocess / encode / decode / map | {first['preprocess']:.0f} / "
        f"{first['encode']:.0f} / {first['decode']:.0f} / {first['map']:.0f} |",
        f"| same, including reading the file | {first['median_with_file_read']:.0f} |",
        f"| warm click (decode + map back + mask update), p90 {warm['p90']:.0f} | "
        f"{warm['median']:.0f} |",
        "",
        f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}, {report['rounds']} rounds x "
        f"{report['warm_clicks_per_round']} warm clicks, {m['date']}",
    ]
    return "\n".join(lines)
