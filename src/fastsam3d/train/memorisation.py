"""How fast can a model memorise a few fixed (region, one click) -> mask pairs of a scan?

The sharpest question behind "can the recipe learn?": take ``N`` structures of a training scan,
one positive click at each one's deepest voxel and the region it opens (the same region and
click every time, no augmentation, no click loop), and fit the model to those ``N`` masks. A
model and learning rate that cannot fit ten fixed pairs in a few hundred steps cannot fit a
scan's structures under random regions and click sequences either; one that can shows that
the whole-scan task is a matter of steps. Each epoch visits every pair once in a random order
(one optimiser step per pair, or per ``--batch`` pairs); an epoch's Dice and loss are the
means over its forward passes (before each pair's update), epoch 0 is the model as given.

On the shipped student, training CT (this machine, 2 threads, the command below, 7 min;
``docs/eval/memorisation.png``): one pair reaches Dice 0.96 after 60 steps at a learning rate
of 1e-3 (0.83 at 1e-4); ten pairs pass 0.8 after about 180 steps and reach 0.91 after 600 at
1e-3, 0.82 at 1e-4. Fitting the same scans' structures under random regions and the click
loop did not move in 1600 steps at 1e-3 (experiment ``e31``).

    python -m fastsam3d.train.memorisation ct --pairs 1,10 --epochs 60 --lr 1e-3,1e-4 \\
        [--trainable all|decoder] [--checkpoint FILE] [--plot curve.png]

One rung up (``--clicks-per-structure K``): each structure is fitted at ``K`` clicks drawn
uniformly from its inner half (upstream's first-click rule: distance to the boundary above half
the largest), each with the region it opens, and scored after every epoch at its deepest voxel,
a click it was not fitted at: does the model learn the structures, or the clicks? Measured
(``--pairs 10,40 --steps 960 --lr 1e-3 --clicks-per-structure 0,8``, 22 min,
``docs/eval/memorisation-clicks.png``): 10 structures at 8 clicks reach 0.745 (0.724 at the
never-fitted deepest voxel), 40 at their deepest voxel 0.719, 40 at 8 clicks only 0.328;
with ``--batch 4`` (4 pairs per step, their mean loss) 40 at 8 clicks reach 0.532 in the same
960 steps.
"""

from __future__ import annotations

import argparse
import math
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
from ..eval.clicks import deepest_voxel, inner_half_voxels
from ..eval.metrics import dice
from ..eval.probe import click_region
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
    """Means over one epoch's forward passes; ``steps``: optimiser steps before the epoch;
    ``probe_dice``: mean Dice at the probe pairs after the epoch's updates, when
    ``steps_after`` steps are done (``None`` without probes)."""

    epoch: int
    steps: int
    loss: float
    dice: float
    steps_after: int = 0
    probe_dice: float | None = None


def click_pairs(
    model: Sam3D,
    sample: str,
    count: int,
    rng: np.random.Generator,
    min_voxels: int = 200,
    clicks_per_structure: int = 0,
) -> list[ClickPair]:
    """``count`` structures of a bundled sample's first case (of at least ``min_voxels``
    voxels, drawn by ``rng``, in the sample's order), each with its deepest-voxel click
    (``clicks_per_structure`` 0) or with that many clicks drawn by ``rng`` from its inner half
    (structure by structure, ``count * clicks_per_structure`` pairs)."""
    volume, targets = sample_structures(sample, (), min_voxels)
    names = list(targets)
    if not 1 <= count <= len(names):
        raise InputError(
            f"{sample}: {count} pairs asked for; it has {len(names)} structures of at least "
            f"{min_voxels} voxels (ask for 1..{len(names)})"
        )
    if clicks_per_structure < 0:
        raise InputError(f"clicks_per_structure must be >= 0, got {clicks_per_structure}")
    chosen = sorted(int(i) for i in rng.choice(len(names), size=count, replace=False))
    frame = FrameSpec.for_model(model.cfg)
    pairs = []
    for i in chosen:
        truth = targets[names[i]]
        if clicks_per_structure == 0:
            clicks = [deepest_voxel(truth, volume.spacing)]
        else:
            core = inner_half_voxels(truth, volume.spacing)
            picks = rng.choice(len(core), size=clicks_per_structure, replace=False)
            clicks = [core[int(p)].astype(np.float64) for p in picks]
        for click in clicks:
            region = click_region(volume, truth, frame, click)
            pairs.append(
                ClickPair(
                    names[i],
                    region.image[None, None].to(model.device, model.dtype),
                    region.inside.float()[None, None].to(model.device),
                    torch.tensor(
                        region.point[None, None], dtype=torch.float32, device=model.device
                    ),
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
    probes: Sequence[ClickPair] = (),
    batch: int = 1,
) -> list[EpochRecord]:
    """Fit ``model`` (in place) to ``pairs`` for ``epochs`` epochs of AdamW (no weight decay,
    constant ``lr``), one step per ``batch`` pairs (their mean loss); returns epoch 0 (no
    update) to ``epochs``, each scored also on ``probes`` (pairs that are never fitted) after
    its updates."""
    if trainable not in ("all", "decoder"):
        raise InputError(f"trainable {trainable!r}: choose all or decoder")
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
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

    def one_click(pair: ClickPair, embedding: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(1, 1, S, S, S)`` logits of the pair's click from an empty mask, and their Dice."""
        logits, _ = model.decode(embedding, pair.point, positive, mask_logits=empty)
        up = upsample_logits(logits.float(), size)
        truth = (pair.target > 0.5).cpu().numpy()
        return up, dice((up.detach() > 0).cpu().numpy(), truth)

    records = []
    bar = tqdm(total=epochs * len(pairs), desc=f"fit {len(pairs)}", disable=not progress)
    for epoch in range(epochs + 1):
        losses, dices = [], []
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            optimiser.zero_grad(set_to_none=True)
            for i in chunk:  # gradients accumulate: one step on the chunk's mean loss
                pair = pairs[int(i)]
                embedding = cached[int(i)] if cached is not None else model.encode(pair.image)
                up, score = one_click(pair, embedding)
                loss = dice_ce_loss(up, pair.target)
                dices.append(score)
                losses.append(float(loss.detach()))
                if epoch > 0:
                    (loss / len(chunk)).backward()
            if epoch > 0:
                optimiser.step()
                bar.update(len(chunk))
        probe_dice = None
        if probes:
            with torch.no_grad():
                scores = [one_click(pair, model.encode(pair.image))[1] for pair in probes]
            probe_dice = float(np.mean(scores))
        per_epoch = math.ceil(len(pairs) / batch)
        steps = max(epoch - 1, 0) * per_epoch
        mean_loss, mean_dice = float(np.mean(losses)), float(np.mean(dices))
        after = epoch * per_epoch
        records.append(EpochRecord(epoch, steps, mean_loss, mean_dice, after, probe_dice))
    bar.close()
    return records


def plot_curves(curves: dict[str, list[EpochRecord]], path: Path) -> None:
    """Dice against optimiser steps, one line per setting, dashed for its probe pairs (PNG,
    written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in curves.items():
        (line,) = ax.plot(
            [r.steps for r in records], [r.dice for r in records], marker=".", label=label
        )
        probed = [(r.steps_after, r.probe_dice) for r in records if r.probe_dice is not None]
        if probed:
            ax.plot(
                [x for x, _ in probed],
                [y for _, y in probed],
                linestyle="--",
                color=line.get_color(),
                label=f"{label}: at the deepest voxel (never fitted)",
            )
    ax.set_xlabel("optimiser steps")
    ax.set_ylabel("mean Dice (one click)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastsam3d.train.memorisation", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sample", help="bundled sample (e.g. ct)")
    parser.add_argument("--pairs", default="1,10", help="comma-separated pair counts")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="about this many optimiser steps per setting instead of --epochs (whole epochs)",
    )
    parser.add_argument("--lr", default="1e-3", help="comma-separated learning rates")
    parser.add_argument("--trainable", choices=("all", "decoder"), default="all")
    parser.add_argument(
        "--clicks-per-structure",
        default="0",
        help="comma-separated K: fit K clicks from each structure's inner half and score at "
        "its deepest voxel (0: fit the deepest-voxel click itself)",
    )
    parser.add_argument("--model", default=None, help="registry name (default: fastsam3d-lite)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument(
        "--batch", default="1", help="comma-separated pairs per optimiser step (mean loss)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of Dice against steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.pairs.split(",") if c]
    rates = [float(r) for r in args.lr.split(",") if r]
    name = args.model or (None if args.checkpoint else "fastsam3d-lite")
    curves: dict[str, list[EpochRecord]] = {}
    settings = [
        (count, lr, int(per), int(batch))
        for count in counts
        for per in args.clicks_per_structure.split(",")
        if per
        for lr in rates
        for batch in args.batch.split(",")
        if batch
    ]
    print(
        "| structures | clicks each | trainable | lr | batch | steps | Dice before | Dice after "
        "| loss after | deepest-voxel Dice after |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for count, lr, per, batch in settings:
        model = load_model(name, args.checkpoint)  # every setting from the same weights
        probes: list[ClickPair] = []
        if per:  # the same structures (the same first draw), at their deepest voxels
            probes = click_pairs(model, args.sample, count, np.random.default_rng(args.seed))
        rng = np.random.default_rng(args.seed)
        pairs = click_pairs(model, args.sample, count, rng, clicks_per_structure=per)
        per_epoch = math.ceil(len(pairs) / batch)
        epochs = max(1, round(args.steps / per_epoch)) if args.steps else args.epochs
        records = fit_pairs(
            model, pairs, epochs, lr, rng, args.trainable, True, probes=probes, batch=batch
        )
        first, last = records[0], records[-1]
        probe = "-" if last.probe_dice is None else f"{last.probe_dice:.3f}"
        print(
            f"| {count} | {per or 'deepest'} | {args.trainable} | {lr:g} | {batch} | "
            f"{last.steps_after} | {first.dice:.3f} | {last.dice:.3f} | {last.loss:.3f} "
            f"| {probe} |",
            flush=True,
        )
        noun = "structure" if count == 1 else "structures"
        clicks = f", {per} clicks each" if per else ""
        batched = f", batch {batch}" if batch > 1 else ""
        curves[f"{count} {noun}{clicks} ({args.trainable}, lr {lr:g}{batched})"] = records
    if args.plot is not None:
        plot_curves(curves, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
