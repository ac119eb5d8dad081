"""How fast can a model memorise a few fixed (region, one click) -> mask pairs of a scan?

The sharpest question behind "can the recipe learn?": take ``N`` structures of a training scan,
one positive click at each one's deepest voxel and the region it opens (the same region and
click every time, no augmentation, no click loop), and fit the model to those ``N`` masks. A
model and learning rate that cannot fit ten fixed pairs in a few hundred steps cannot fit a
scan's structures under random regions and click sequences either; one that can shows that
the whole-scan task is a matter of steps. Each epoch visits every pair once in a random order
(one optimiser step per pair); an epoch's Dice and loss are the means over its forward passes
(before each pair's update), epoch 0 is the model as given.

On the shipped student, training CT (this machine, 2 threads, the command below, 7 min;
``docs/eval/memorisation.png``): one pair reaches Dice 0.96 after 60 steps at a learning rate
of 1e-3 (0.83 at 1e-4); ten pairs pass 0.8 after about 180 steps and reach 0.91 after 600 at
1e-3, 0.82 at 1e-4. Fitting the same scans' structures under random regions and the click
loop did not move in 1600 steps at 1e-3 (experiment ``e31``).

    python -m fastsam3d.train.memorisation ct --pairs 1,10 --epochs 60 --lr 1e-3,1e-4 \\
        [--trainable all|decoder] [--checkpoint FILE] [--plot curve.png]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from ..build import load_model
from ..data.frame import FrameSpec
from ..errors import InputError
from ..eval.metrics import dice
from ..eval.probe import deepest_click_region
from ..eval.runner import sample_structures
from ..files import atomic_output
from ..modeling.sam3d import Sam3D, upsample_logits
from .objectives import dice_ce_loss

Trainable = Literal["all", "decoder"]


@dataclass(frozen=True)
class ClickPair:
    """One fixed example: ``image`` ``(1, 1, S, S, S)`` normalised region, ``target``
    ``(1, 1, S, S, S)`` in {0, 1}, ``point`` ``(1, 1, 3)`` the click in region voxels."""

    structure: str
    image: torch.Tensor
    target: torch.Tensor
    point: torch.Tensor


@dataclass(frozen=True)
class EpochRecord:
    """Means over one epoch's forward passes; ``steps``: optimiser steps before the epoch."""

    epoch: int
    steps: int
    loss: float
    dice: float


def click_pairs(
    model: Sam3D, sample: str, count: int, rng: np.random.Generator, min_voxels: int = 200
) -> list[ClickPair]:
    """``count`` structures of a bundled sample's first case (of at least ``min_voxels``
    voxels, drawn by ``rng``, in the sample's order), each with its deepest-voxel click."""
    volume, targets = sample_structures(sample, (), min_voxels)
    names = list(targets)
    if not 1 <= count <= len(names):
        raise InputError(
            f"{sample}: {count} pairs asked for; it has {len(names)} structures of at least "
            f"{min_voxels} voxels (ask for 1..{len(names)})"
        )
    chosen = sorted(int(i) for i in rng.choice(len(names), size=count, replace=False))
    frame = FrameSpec.for_model(model.cfg)
    pairs = []
    for i in chosen:
        region = deepest_click_region(volume, targets[names[i]], frame)
        pairs.append(
            ClickPair(
                names[i],
                region.image[None, None].to(model.device, model.dtype),
                region.inside.float()[None, None].to(model.device),
                torch.tensor(region.point[None, None], dtype=torch.float32, device=model.device),
            )
        )
    return pairs


def fit_pairs(
    model: Sam3D,
    pairs: Sequence[ClickPair],
    epochs: int,
    lr: float,
    rng: np.random.Generator,
    trainable: Trainable = "all",
    progress: bool = False,
) -> list[EpochRecord]:
    """Fit ``model`` (in place) to ``pairs`` for ``epochs`` epochs of AdamW (no weight decay,
    constant ``lr``); returns epoch 0 (no update) to ``epochs``."""
    if trainable not in ("all", "decoder"):
        raise InputError(f"trainable {trainable!r}: choose all or decoder")
    model.train()
    encoder_trains = trainable == "all"
    for p in model.image_encoder.parameters():
        p.requires_grad_(encoder_trains)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    cached = None
    if not encoder_trains:  # a frozen encoder: each region's embedding once
        with torch.no_grad():
            cached = [model.encode(p.image) for p in pairs]
    size, low = model.cfg.image_size, model.cfg.low_res_size
    empty = torch.zeros(1, 1, low, low, low, device=model.device, dtype=model.dtype)
    positive = torch.ones(1, 1, dtype=torch.long, device=model.device)
    records = []
    bar = tqdm(total=epochs * len(pairs), desc=f"fit {len(pairs)}", disable=not progress)
    for epoch in range(epochs + 1):
        losses, dices = [], []
        for i in rng.permutation(len(pairs)):
            pair = pairs[int(i)]
            embedding = cached[int(i)] if cached is not None else model.encode(pair.image)
            logits, _ = model.decode(embedding, pair.point, positive, mask_logits=empty)
            up = upsample_logits(logits.float(), size)
            loss = dice_ce_loss(up, pair.target)
            dices.append(dice((up.detach() > 0).cpu().numpy(), (pair.target > 0.5).cpu().numpy()))
            losses.append(float(loss.detach()))
            if epoch > 0:
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                bar.update()
        steps = max(epoch - 1, 0) * len(pairs)
        records.append(EpochRecord(epoch, steps, float(np.mean(losses)), float(np.mean(dices))))
    bar.close()
    return records


def plot_curves(curves: dict[str, list[EpochRecord]], path: Path) -> None:
    """Dice against optimiser steps, one line per setting (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in curves.items():
        ax.plot([r.steps for r in records], [r.dice for r in records], marker=".", label=label)
    ax.set_xlabel("optimiser steps")
    ax.set_ylabel("mean Dice of the epoch (one click)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastsam3d.train.memorisation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sample", help="bundled sample (e.g. ct)")
    parser.add_argument("--pairs", default="1,10", help="comma-separated pair counts")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", default="1e-3", help="comma-separated learning rates")
    parser.add_argument("--trainable", choices=("all", "decoder"), default="all")
    parser.add_argument("--model", default=None, help="registry name (default: fastsam3d-lite)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of Dice against steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.pairs.split(",") if c]
    rates = [float(r) for r in args.lr.split(",") if r]
    name = args.model or (None if args.checkpoint else "fastsam3d-lite")
    curves: dict[str, list[EpochRecord]] = {}
    print("| pairs | trainable | lr | steps | Dice before | Dice after | loss after |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for count in counts:
        for lr in rates:
            model = load_model(name, args.checkpoint)  # every setting from the same weights
            rng = np.random.default_rng(args.seed)
            pairs = click_pairs(model, args.sample, count, rng)
            records = fit_pairs(model, pairs, args.epochs, lr, rng, args.trainable, True)
            first, last = records[0], records[-1]
            print(
                f"| {count} | {args.trainable} | {lr:g} | {last.steps + count} | "
                f"{first.dice:.3f} | {last.dice:.3f} | {last.loss:.3f} |",
                flush=True,
            )
            noun = "pair" if count == 1 else "pairs"
            curves[f"{count} {noun} ({args.trainable}, lr {lr:g})"] = records
    if args.plot is not None:
        plot_curves(curves, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
