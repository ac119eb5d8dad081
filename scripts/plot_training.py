"""Plot the loss curves of a training recipe from its ``metrics.csv`` files.

    .venv/bin/python scripts/plot_training.py OUT.png NAME=PATH/metrics.csv [NAME=...]

One panel per file: the per-step loss (light) and its 50-step running mean, against the step;
distillation stages (column ``stage``) get their own colour, on a log scale.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _running_mean(values: np.ndarray, width: int = 50) -> np.ndarray:
    """Mean of the last ``width`` values at each position (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - width, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__)
        return 2
    out = Path(argv[0])
    runs = [a.split("=", 1) for a in argv[1:]]
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, (name, path) in zip(axes[0], runs, strict=True):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        step = np.array([int(r["step"]) for r in rows])
        loss = np.array([float(r["loss"]) for r in rows])
        stage = np.array([int(r["stage"]) for r in rows])
        for s in np.unique(stage):
            sel = stage == s
            label = {0: "loss", 1: "layer-wise (Eq. 1-2)", 2: "logit-level"}.get(
                int(s), f"stage {s}"
            )
            line = ax.plot(step[sel], loss[sel], alpha=0.25, lw=0.8)[0]
            ax.plot(
                step[sel], _running_mean(loss[sel]), color=line.get_color(), lw=1.8, label=label
            )
        if len(np.unique(stage)) > 1:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_title(f"{name} ({len(rows)} steps)", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (50-step mean)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
