"""Reports from ``results.csv``: a Table-2-style Markdown summary and a Dice-vs-clicks plot.

Per task (case x structure x method) the Dice "at k clicks" is the value after the k-th click;
upstream's reported number is the *best* Dice over the first k clicks (docs/upstream.md U7), shown
as "max<=k" for the paper protocol. Means are over tasks (``nan`` values, from both masks empty,
are ignored).
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

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
    ax.set_xlabel("clicks")
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
