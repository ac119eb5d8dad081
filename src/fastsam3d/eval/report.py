"""Reports from ``results.csv``: a Table-2-style Markdown summary and a Dice-vs-clicks plot.

Per task (case x structure x method) the Dice "at k clicks" is the value after the k-th click;
upstream's reported number is the *best* Dice over the first k clicks (docs/upstream.md U7), shown
as "max<=k" for the paper protocol. Means are over tasks (``nan`` values, from both masks empty,
are ignored).

2D baselines (rows with ``dims`` ``2d``, :mod:`fastsam3d.eval.slicewise`) get a note saying which
2D protocol ran and, where clicks per slice differ from the clicks a person made, a table and
a plot of Dice against ``total_clicks``.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_output

Row = dict[str, str]


def read_rows(path: Path) -> list[Row]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _per_task(rows: Sequence[Row], metric: str) -> dict[tuple[str, str, str, str], list[float]]:
    """(dataset, method, case, structure) -> metric after clicks 1..N."""
    tasks: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: int(r["click"])):
        tasks[(r["dataset"], r["method"], r["case"], r["structure"])].append(float(r[metric]))
    return tasks


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def _cell(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def curves(rows: Sequence[Row], metric: str = "dice") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """method -> (mean, std) of the metric after each click, over tasks."""
    by_method: dict[str, list[list[float]]] = defaultdict(list)
    for (_, method, _, _), values in _per_task(rows, metric).items():
        by_method[method].append(values)
    out = {}
    for method, series in by_method.items():
        arr = np.asarray(series, dtype=float)
        out[method] = (np.nanmean(arr, axis=0), np.nanstd(arr, axis=0))
    return out


PROTOCOLS_2D = {
    "paper": "2D methods (slice by slice): **paper** protocol, as FastSAM3D's 2D rows: n clicks "
    "on every slice that contains the object (each from that slice's own 2D error); Dice@n is "
    "the stacked volume's after n clicks per slice, so a person would make n x (slices "
    "containing the object) clicks (`total_clicks` in results.csv, table below).",
    "realistic": "2D methods (slice by slice): **realistic** protocol: every click a person "
    "makes counts; each click goes on the slice with the most wrong voxels (the simulator's "
    "rule on that slice's 2D error); Dice@n is after n clicks in total, as for 3D methods.",
}


def _total_clicks(row: Row) -> int:
    return int(row.get("total_clicks") or row["click"])


def total_clicks_differ(rows: Sequence[Row]) -> bool:
    """Whether some row's clicks a person made differ from its click count (2D paper rows)."""
    return any(_total_clicks(r) != int(r["click"]) for r in rows)


def _total_clicks_lines(rows: Sequence[Row], clicks: Sequence[int]) -> list[str]:
    """A note on the 2D protocol and, where they differ from clicks, mean total clicks."""
    if not any(r.get("dims") == "2d" for r in rows):
        return []
    lines = ["", PROTOCOLS_2D.get(rows[0]["protocol"], ""), ""]
    if not total_clicks_differ(rows):
        return lines
    lines += [
        "| method | " + " | ".join(f"total clicks@{k}" for k in clicks) + " |",
        "|---|" + "---:|" * len(clicks),
    ]
    for method in sorted({r["method"] for r in rows}):
        cells = []
        for k in clicks:
            totals = [
                _total_clicks(r) for r in rows if r["method"] == method and r["click"] == str(k)
            ]
            cells.append(f"{statistics.mean(totals):.1f}" if totals else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(
    rows: Sequence[Row], clicks: Sequence[int], timing_rows: Sequence[Row] = ()
) -> str:
    """Tables: mean Dice (and NSD) at the requested clicks per dataset and method, the same per
    structure, and the median time per click."""
    if not rows:
        return "No results.\n"
    protocol = rows[0]["protocol"]
    simulator = rows[0]["simulator"]
    dice_tasks = _per_task(rows, "dice")
    nsd_tasks = _per_task(rows, "nsd")
    groups: dict[tuple[str, str], list[tuple[str, str, str, str]]] = defaultdict(list)
    for key in dice_tasks:
        groups[(key[0], key[1])].append(key)
    lines = [
        f"Protocol **{protocol}**, simulator **{simulator}**, {len(dice_tasks)} tasks "
        f"(case x structure x method).",
        "",
    ]
    header = "| dataset | method | tasks | " + " | ".join(f"Dice@{k}" for k in clicks)
    sep = "|---|---|---:|" + "---:|" * len(clicks)
    if protocol == "paper":
        header += " | " + " | ".join(f"Dice max<=@{k} (upstream)" for k in clicks)
        sep += "---:|" * len(clicks)
    else:
        header += " | " + " | ".join(f"NSD@{k}" for k in clicks)
        sep += "---:|" * len(clicks)
    lines += [header + " |", sep]
    for (dataset, method), keys in sorted(groups.items()):
        cells = [_cell(_mean([dice_tasks[t][k - 1] for t in keys])) for k in clicks]
        if protocol == "paper":
            cells += [_cell(_mean([max(dice_tasks[t][:k]) for t in keys])) for k in clicks]
        else:
            cells += [_cell(_mean([nsd_tasks[t][k - 1] for t in keys])) for k in clicks]
        lines.append(f"| {dataset} | {method} | {len(keys)} | " + " | ".join(cells) + " |")
    lines += _total_clicks_lines(rows, clicks)

    methods = sorted({key[1] for key in dice_tasks})
    structures = sorted({key[3] for key in dice_tasks})
    lines += ["", f"Per structure: mean Dice at {', '.join(map(str, clicks))} clicks.", ""]
    lines.append("| structure | " + " | ".join(methods) + " |")
    lines.append("|---|" + "---|" * len(methods))
    for s in structures:
        cells = []
        for m in methods:
            keys = [t for t in dice_tasks if t[1] == m and t[3] == s]
            cells.append(
                " / ".join(_cell(_mean([dice_tasks[t][k - 1] for t in keys])) for k in clicks)
            )
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if timing_rows:
        lines += [
            "",
            "| method | median ms, first click | median ms, later clicks |",
            "|---|---:|---:|",
        ]
        for m in methods:
            first = [
                float(r["time_ms"]) for r in timing_rows if r["method"] == m and r["click"] == "1"
            ]
            later = [
                float(r["time_ms"])
                for r in timing_rows
                if r["method"] == m and r["click"] != "1" and float(r["time_ms"]) > 0
            ]
            f = f"{statistics.median(first):.0f}" if first else "n/a"
            rest = f"{statistics.median(later):.0f}" if later else "n/a"
            lines.append(f"| {m} | {f} | {rest} |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: Sequence[Row], path: Path, title: str = "") -> Path:
    """Mean Dice (band: +-1 std over tasks) after each click, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method, (mean, std) in sorted(curves(rows).items()):
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, marker="o", label=method)
        ax.fill_between(x, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), alpha=0.15)
    return _save_dice_plot(fig, ax, "clicks", path, title)


def plot_total_clicks(rows: Sequence[Row], path: Path, title: str = "") -> Path:
    """Mean Dice against the mean clicks a person made in total, one line per method (2D and 3D
    side by side; logarithmic click axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        steps = sorted({int(r["click"]) for r in mine})
        x = [_mean([_total_clicks(r) for r in mine if int(r["click"]) == k]) for k in steps]
        y = [_mean([float(r["dice"]) for r in mine if int(r["click"]) == k]) for k in steps]
        ax.plot(x, y, marker="o", label=method)
    ax.set_xscale("log")
    xlabel = "clicks a person makes in total (mean over structures)"
    return _save_dice_plot(fig, ax, xlabel, path, title)


def _save_dice_plot(fig: Any, ax: Any, xlabel: str, path: Path, title: str) -> Path:
    """Label a Dice-against-clicks figure, write it atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("Dice (mean over structures)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
