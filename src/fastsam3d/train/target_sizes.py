"""How large are the targets a training config draws? Volumes of the sampled regions' targets.

A promptable model learns the sizes it is shown: when almost every target is a few millilitres,
one click in a 1 L liver gives a few-millilitre blob. This measures the mix a config produces
(the region's first target and its others separately, as the engine draws them), from the same
samples training would see (global indices ``0..N-1`` of the config's seed).

    python -m fastsam3d.train.target_sizes configs/lite/v4/teacher.toml --samples 120
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

LARGE_ML = (200.0, 500.0)
"""Thresholds (mL) of the shares reported."""


@dataclass(frozen=True)
class TargetSizes:
    """Target volumes in mL: ``first`` one per region, ``others`` the rest."""

    first: np.ndarray
    others: np.ndarray


def target_volumes(
    dataset: Dataset[dict[str, torch.Tensor]],
    indices: Iterable[int],
    region_mm: float,
) -> TargetSizes:
    """Volumes (mL) of every target of the samples ``indices``.

    Args:
        dataset: training regions; each sample's ``"target"`` is ``(M, T, T, T)`` binary on a
            grid covering the region (``T`` may be coarser than the model input).
        indices: global sample indices.
        region_mm: side of the region in mm (model input size x spacing).
    """
    first: list[float] = []
    others: list[float] = []
    for index in indices:
        target = dataset[index]["target"]
        cell_ml = (region_mm / target.shape[-1]) ** 3 / 1000.0
        volumes = target.flatten(1).sum(1).double().numpy() * cell_ml
        first.append(float(volumes[0]))
        others.extend(float(v) for v in volumes[1:])
    return TargetSizes(np.asarray(first), np.asarray(others))


def format_sizes(sizes: TargetSizes, thresholds: Sequence[float] = LARGE_ML) -> str:
    """A markdown table: count, median and share above each threshold, per kind of target."""
    head = "| targets | n | median mL | " + " | ".join(f"> {t:g} mL" for t in thresholds) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(thresholds)]
    for name, values in (("first of a region", sizes.first), ("others", sizes.others)):
        if not len(values):
            lines.append(f"| {name} | 0 | - |" + " - |" * len(thresholds))
            continue
        shares = " | ".join(f"{float((values > t).mean()):.1%}" for t in thresholds)
        lines.append(f"| {name} | {len(values)} | {float(np.median(values)):.1f} | {shares} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m fastsam3d.train.target_sizes CONFIG [--samples N] [--threads T]``."""
    import argparse

    from tqdm import tqdm

    from ..data.frame import FrameSpec
    from .config import load_config
    from .engine import training_regions

    parser = argparse.ArgumentParser(prog="python -m fastsam3d.train.target_sizes")
    parser.add_argument("config", help="training config with a [model] section")
    parser.add_argument("--samples", type=int, default=120, help="regions to draw (120)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    config = load_config(args.config)
    if config.model is None:
        parser.error(f"{args.config} has no [model] section (a distillation config?)")
    torch.set_num_threads(args.threads)
    frame = FrameSpec.for_model(config.model.model_config())
    dataset = training_regions(config.data, frame, config.run.seed)
    indices = tqdm(range(args.samples), desc="regions", unit="region")
    sizes = target_volumes(dataset, indices, frame.size * frame.spacing)
    print(f"{args.config}: {args.samples} regions of {frame.size * frame.spacing:g} mm")
    print(format_sizes(sizes))


if __name__ == "__main__":
    main()
