"""How well can a model's logit grid draw each structure at all?

A model returns logits on an ``L^3`` grid over its region (``L = 32`` for 128^3 regions: cells
of 6 mm at 1.5 mm) and a session reads them back onto the scan by trilinear interpolation.
This command gives every structure of a bundled scan oracle logits on such a grid (the true
mask's share of each cell minus a threshold, the best of ``THRESHOLDS``) in the region a first
click at the structure's deepest voxel opens, reads them back as a session does, and reports
the Dice against the whole structure. That is an estimate of what the grid allows, not a
proof: other logit values might do a little better. A structure thinner than a cell can
hardly be drawn; one larger than the region is cut at its border (``L`` = the region size
shows that part alone).

On the training CT the mean over the model card's ten structures is 0.902 on a 32^3 grid
(ribs 0.86 and 0.89, only with cells drawn from a fifth of their volume up) and 0.955 on a
64^3 grid; on the held-out CT's 31 structures 0.808 against 0.897. A fine grid does not only
raise the ceiling: a thin structure no longer hangs on a few well-calibrated logits per 6 mm
cell. Hence the lite family's optional fine stage (``DecoderConfig.fine_stage``).

    python -m fastsam3d.train.output_ceiling ct --structures liver,rib_left_8 --grids 32,64
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.frame import FrameSpec, resample_to_roi, roi_around, roi_values_to_volume
from ..data.volume import Volume
from ..errors import InputError
from ..eval.clicks import deepest_voxel
from ..eval.metrics import dice
from ..eval.runner import sample_structures

THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))
"""Shares of a cell above which the oracle draws it (the best one counts)."""


@dataclass(frozen=True)
class OutputCeiling:
    """One structure's best Dice on each logit grid (``grids`` -> Dice)."""

    structure: str
    voxels: int
    dice: dict[int, float]


def structure_ceiling(
    volume: Volume, name: str, truth: np.ndarray, frame: FrameSpec, grids: Sequence[int]
) -> OutputCeiling:
    """The ceilings of one structure (``truth``: boolean mask on ``volume``'s grid)."""
    click = deepest_voxel(truth, volume.spacing)
    roi = roi_around(volume, click, frame)
    share = resample_to_roi(Volume(truth.astype(np.float32), volume.affine), roi)[None, None]
    scores = {}
    for grid in grids:
        if frame.size % grid:
            raise InputError(f"grid {grid} does not divide the region size {frame.size}")
        cells = F.avg_pool3d(share, frame.size // grid)[0, 0]
        box, values, inside = roi_values_to_volume(cells, roi, volume)
        block = values.numpy()
        best = 0.0
        for threshold in THRESHOLDS:
            drawn = np.zeros_like(truth)
            foreground = block > threshold
            drawn[box] = foreground if inside is None else foreground & inside.numpy()
            best = max(best, dice(drawn, truth))
        scores[grid] = best
    return OutputCeiling(name, int(truth.sum()), scores)


def scan_ceilings(
    sample: str,
    frame: FrameSpec,
    grids: Sequence[int],
    structures: Sequence[str] = (),
    min_voxels: int = 100,
) -> list[OutputCeiling]:
    """The ceilings of every structure (or those named) of a bundled sample's first case."""
    volume, targets = sample_structures(sample, structures, min_voxels)
    return [structure_ceiling(volume, n, m, frame, grids) for n, m in targets.items()]


def format_table(rows: Sequence[OutputCeiling], grids: Sequence[int]) -> str:
    """A Markdown table: one column per grid, and the means."""
    head = " | ".join(f"{g}^3" for g in grids)
    lines = [f"| structure | voxels | {head} |", "|---|---:|" + "---:|" * len(grids)]
    for r in rows:
        cells = " | ".join(f"{r.dice[g]:.3f}" for g in grids)
        lines.append(f"| {r.structure} | {r.voxels} | {cells} |")
    if rows:
        means = " | ".join(f"{np.mean([r.dice[g] for r in rows]):.3f}" for g in grids)
        lines.append(f"| **mean** | | {means} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastsam3d.train.output_ceiling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sample", help="bundled sample (e.g. ct, ct_dicom)")
    parser.add_argument("--structures", default="", help="comma-separated (default: all)")
    parser.add_argument("--grids", default="32,64,128", help="logit grids (default 32,64,128)")
    parser.add_argument("--size", type=int, default=128, help="region side in voxels")
    parser.add_argument("--spacing", type=float, default=1.5, help="region voxel size in mm")
    args = parser.parse_args(argv)
    try:
        grids = [int(g) for g in args.grids.split(",") if g]
    except ValueError:
        parser.error(f"--grids must be comma-separated integers, got {args.grids!r}")
    frame = FrameSpec(args.size, args.spacing)
    names = [s for s in args.structures.split(",") if s]
    torch.set_num_threads(1)
    print(format_table(scan_ceilings(args.sample, frame, grids, names), grids))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
