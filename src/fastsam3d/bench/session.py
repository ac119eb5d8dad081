"""Interactive latency: the first click on a newly loaded scan and warm clicks, per stage.

In one process with the model loaded and warmed up (as in an interactive application), each
round reads the scan, sets it on a fresh :class:`~fastsam3d.interactive.session.Session`, clicks
once (preprocess + encode + decode + map back) and then clicks ``warm_clicks`` more times inside
the same region (decode + map back + mask update). Click positions are drawn inside a labelled
structure of a bundled sample with a seeded generator. Timing does not depend on the weights.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..build import load_model
from ..data.io import read_volume
from ..interactive.session import Session
from ..registry import get_spec
from ..runtime.select import prepare, resolve
from ..samples import label_value, sample
from .encoders import machine_info
from .timing import ForeignLoad


def synthetic_ct(folder: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A 512 x 512 x 300 CT-like volume (0.7 x 0.7 x 1.0 mm, int16 HU) written as ``.nii.gz``:
    air, a body ellipse of soft tissue with noise, and three ellipsoid "organs"; returns the path
    and a label map (organ ``i`` = ``i``) on the same grid."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    shape = (512, 512, 300)
    i, j, k = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((i - 256) / 220.0) ** 2 + ((j - 256) / 170.0) ** 2 <= 1.0
    image = np.full(shape, -1000, np.int16)
    image[np.broadcast_to(body, shape)] = 40
    labels = np.zeros(shape, np.uint8)
    for value, (ci, cj, ck, ri, rj, rk, hu) in enumerate(
        [
            (200, 230, 150, 90, 70, 60, 110),
            (330, 250, 170, 45, 40, 50, 80),
            (256, 330, 120, 30, 30, 80, 250),
        ],
        start=1,
    ):
        organ = ((i - ci) / ri) ** 2 + ((j - cj) / rj) ** 2 + ((k - ck) / rk) ** 2 <= 1.0
        labels[organ] = value
        image[organ] = hu
    image = (image + rng.normal(0, 15, shape)).astype(np.int16)
    itk = sitk.GetImageFromArray(image.transpose(2, 1, 0))
    itk.SetSpacing((0.7, 0.7, 1.0))
    path = folder / "synthetic_ct.nii.gz"
    sitk.WriteImage(itk, str(path), useCompression=True)
    return path, labels


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
    """Measure first-click and warm-click latency on a bundled sample (or ``"synthetic"``: a
    generated 512 x 512 x 300 CT); returns a JSON-ready dict."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory()
    try:
        # latency does not depend on the values: entries without bundled weights run random ones
        loaded = load_model(model_name, random_weights=get_spec(model_name).weights is None)
        runtime = resolve(runtime, loaded)  # "auto" -> the runtime it stands for here
        model = prepare(loaded, runtime, threads=threads)
        if sample_name == "synthetic":
            image_path, labels = synthetic_ct(Path(tmp.name), seed)
            inside = np.argwhere(labels == 1).astype(float)
        else:
            chosen = sample(sample_name)
            image_path = chosen.image
            labels = read_volume(chosen.labels).array
            inside = np.argwhere(labels == label_value(chosen.label_set, structure)).astype(float)
        rng = np.random.default_rng(seed)
        centre = inside.mean(axis=0)
        near = inside[np.linalg.norm(inside - centre, axis=1) < 12]  # voxels, stays in one ROI
        # warm-up: first-call allocations are not part of the measurement
        warm = Session(model, runtime="torch")
        warm.set_image(read_volume(image_path))
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
                volume = read_volume(image_path)
                t1 = time.perf_counter()
                session = Session(model, runtime="torch")
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
        tmp.cleanup()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in records)

    ordered = sorted(warm_ms)
    return {
        "machine": machine_info(threads),
        "sample": sample_name,
        "image": image_path.name,
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
