"""Upper bound of a model whose masks come from low-resolution logits: for each labelled
structure of a bundled sample, fit the best ``L^3`` logit field (``L = 32`` for 128^3 inputs) in
the model frame around the structure's centre, upsample it as the models' logits are
(trilinear), threshold at 0 and report Dice against the structure in that frame.

    .venv/bin/python scripts/logit_ceiling.py --sample ct_dicom [--steps 120]

The fit is gradient descent (Adam) on soft Dice + BCE, starting from the block means; the
best hard Dice seen is reported. Takes about 10 minutes for the 31 structures of ct_dicom on
one CPU thread.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from fastsam3d import samples
from fastsam3d.data.align import labels_on_grid
from fastsam3d.data.frame import FrameSpec, resample_to_roi, roi_around
from fastsam3d.data.io import read_volume


def hard_dice(logits: torch.Tensor, truth: torch.Tensor) -> float:
    pred, gt = logits > 0, truth > 0
    total = int(pred.sum()) + int(gt.sum())
    return 2 * int((pred & gt).sum()) / total if total else 1.0


def best_field_dice(truth: torch.Tensor, factor: int, steps: int) -> float:
    """``truth (1, 1, S, S, S)`` in {0, 1} -> best Dice of a thresholded upsampled field."""
    field = ((F.avg_pool3d(truth, factor) - 0.5) * 8).requires_grad_(True)
    optimizer = torch.optim.Adam([field], lr=0.5)
    best = 0.0
    for step in range(steps):
        up = F.interpolate(field, scale_factor=factor, mode="trilinear", align_corners=False)
        prob = torch.sigmoid(4 * up)
        soft_dice = 2 * (prob * truth).sum() / (prob.sum() + truth.sum())
        loss = 1 - soft_dice + F.binary_cross_entropy_with_logits(4 * up, truth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9 or step == steps - 1:
            best = max(best, hard_dice(up.detach(), truth))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", default="ct_dicom")
    parser.add_argument("--size", type=int, default=128, help="model input side")
    parser.add_argument("--low", type=int, default=32, help="logit grid side")
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sample = samples.sample(args.sample)
    volume = read_volume(sample.image)
    labels = labels_on_grid(read_volume(sample.labels), volume)
    names = samples.label_names(sample.label_set)
    frame = FrameSpec(size=args.size)
    results = []
    for value in (int(v) for v in np.unique(labels) if v != 0):
        mask = labels == value
        roi = roi_around(volume, np.array(ndimage.center_of_mass(mask)), frame)
        truth = resample_to_roi(dataclasses.replace(volume, array=mask.astype(np.float32)), roi)
        truth = (truth > 0.5).float()[None, None]
        if not truth.any():
            continue
        dice = best_field_dice(truth, args.size // args.low, args.steps)
        results.append(dice)
        print(f"{names.get(value, value)!s:32s} {dice:.3f}", flush=True)
    print(f"mean over {len(results)} structures: {np.mean(results):.3f}")


if __name__ == "__main__":
    main()
