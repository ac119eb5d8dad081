"""Experiments' Dice by structure size: do small structures pay for large ones?

A run's mean Dice over the held-out CT's 31 structures is dominated by its 19 structures under
10 mL (ribs, vessels, glands); a recipe that learns the liver can lose the ribs and still look
flat. This reads the per-click results every ``fastsam3d experiment`` run keeps
(``held-out.csv`` or ``train-ct.csv``) and prints, per run, the mean Dice after one click count
within size classes of the true structure volume.

    python -m fastsam3d.train.size_classes docs/eval/experiments --click 5
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..eval.report import read_rows

CLASS_BOUNDS_ML = (10.0, 50.0)
"""Class edges (mL): small < 10 <= medium < 50 <= large."""


@dataclass(frozen=True)
class SizeClassDice:
    """Mean Dice of one run per size class (NaN: no structure in the class)."""

    run: str
    means: tuple[float, ...]
    counts: tuple[int, ...]


def class_names(bounds: Sequence[float] = CLASS_BOUNDS_ML) -> list[str]:
    """Column names of the classes ``bounds`` make, e.g. ``["< 10 mL", "10-50 mL", ">= 50 mL"]``."""
    edges = list(bounds)
    names = [f"< {edges[0]:g} mL"]
    names += [f"{lo:g}-{hi:g} mL" for lo, hi in itertools.pairwise(edges)]
    return [*names, f">= {edges[-1]:g} mL"]


def dice_by_size(
    rows: Sequence[dict[str, str]],
    run: str,
    click: int,
    bounds: Sequence[float] = CLASS_BOUNDS_ML,
) -> SizeClassDice:
    """Mean Dice after ``click`` clicks per size class of the rows' structures.

    Args:
        rows: per-click result rows (``structure``, ``click``, ``dice``, ``gt_mm3``), one method.
        run: the run's name (kept in the result).
        click: click count to read.
        bounds: ascending class edges in mL.
    """
    if list(bounds) != sorted(bounds) or len(bounds) == 0:
        raise InputError(f"size class bounds must be ascending mL values, got {list(bounds)}")
    chosen = [r for r in rows if int(r["click"]) == click]
    if not chosen:
        raise InputError(f"run {run!r} has no results after {click} clicks")
    volumes_ml = np.array([float(r["gt_mm3"]) / 1000.0 for r in chosen])
    dice = np.array([float(r["dice"]) for r in chosen])
    classes = np.searchsorted(np.asarray(bounds, dtype=float), volumes_ml, side="right")
    means = []
    counts = []
    for c in range(len(bounds) + 1):
        inside = classes == c
        counts.append(int(inside.sum()))
        means.append(float(dice[inside].mean()) if inside.any() else float("nan"))
    return SizeClassDice(run, tuple(means), tuple(counts))


def runs_in_order(root: Path) -> list[str]:
    """Run folders of ``root`` in the order of ``root/README.md``'s table (then the rest)."""
    listed: list[str] = []
    readme = root / "README.md"
    if readme.is_file():
        listed = re.findall(r"^\| \[([^\]]+)\]\(", readme.read_text(encoding="utf-8"), re.M)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [r for r in listed if r in folders] + [f for f in folders if f not in listed]


def size_table(
    root: str | Path,
    click: int,
    part: str = "held-out",
    bounds: Sequence[float] = CLASS_BOUNDS_ML,
) -> str:
    """A markdown table: every run under ``root`` with a ``PART.csv``, Dice per size class."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder of experiment runs")
    names = class_names(bounds)
    results = []
    for run in runs_in_order(root):
        path = root / run / f"{part}.csv"
        if path.is_file():
            results.append(dice_by_size(read_rows(path), run, click, bounds))
    if not results:
        raise InputError(f"no run under {root} has a {part}.csv")
    counts = " / ".join(str(n) for n in results[0].counts)
    lines = [
        f"{part} Dice after {click} clicks by structure volume (structures per class: {counts})",
        "",
        "| run | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for r in results:
        cells = " | ".join("-" if np.isnan(m) else f"{m:.3f}" for m in r.means)
        lines.append(f"| {r.run} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m fastsam3d.train.size_classes [ROOT] [--click K] [--part held-out|train-ct]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fastsam3d.train.size_classes")
    parser.add_argument("root", nargs="?", default="docs/eval/experiments", help="runs folder")
    parser.add_argument("--click", type=int, default=5, help="click count to read (5)")
    parser.add_argument("--part", default="held-out", choices=("held-out", "train-ct"))
    parser.add_argument(
        "--bounds", default="10,50", help="ascending class edges in mL, comma-separated (10,50)"
    )
    args = parser.parse_args(argv)
    try:
        bounds = [float(b) for b in args.bounds.split(",")]
    except ValueError:
        parser.error(f"--bounds must be numbers in mL separated by commas, got {args.bounds!r}")
    try:
        print(size_table(args.root, args.click, args.part, bounds))
    except InputError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
