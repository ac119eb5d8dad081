"""Score every saved checkpoint of training runs: how the training CT and the held-out scan
move together along a run, and how much one checkpoint differs from the next.

``fastsam3d experiment`` scores a run's final weights; a difference of 0.02 between two runs
means little if the held-out Dice of one run already moves that much from one checkpoint to
the next. This scores the checkpoints a run saved (``RUN/checkpoints/step_N.pt``, every
``--every`` steps) the way the experiments are scored (realistic protocol, centre clicks, seed
0; the training CT's ten structures and every held-out structure), appends one row per
(run, step, part, click) to ``OUT/trajectories.csv`` (steps already there are skipped, so an
interrupted call resumes), and draws ``OUT/trajectories.png``: Dice at 5 clicks against the
step, and held-out against training-CT Dice.

    python -m fastsam3d.train.trajectory runs/exp/e35 runs/exp/e36 runs/exp/e37 \\
        --every 1000 --mark shipped=src/fastsam3d/weights/fastsam3d-lite.safetensors \\
        --out docs/eval/experiments/trajectories
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig
from ..errors import InputError
from ..files import atomic_output

FIELDS = ("run", "step", "part", "click", "dice")
PARTS = ("train-ct", "held-out")
PLOT_CLICK = 5
TRAIN_BAR = 0.8
"""Issue 13's training-scan sanity bar (Dice at 5 clicks on the training CT)."""


@dataclass(frozen=True)
class Point:
    """One model file to score: a checkpoint of a run, or a marked model (step -1)."""

    run: str
    step: int
    path: Path


def run_checkpoints(run: Path, every: int) -> list[Point]:
    """``RUN/checkpoints/step_N.pt`` with ``N % every == 0``, by step."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        raise InputError(f"{run}: no checkpoints/ folder (a `fastsam3d train` output folder?)")
    points = []
    for path in folder.glob("step_*.pt"):
        match = re.fullmatch(r"step_(\d+)\.pt", path.name)
        if match and int(match.group(1)) % every == 0:
            points.append(Point(run.name, int(match.group(1)), path))
    if not points:
        raise InputError(f"{folder}: no checkpoint at a multiple of {every} steps")
    return sorted(points, key=lambda p: p.step)


def run_config(run: Path) -> ModelConfig:
    """The architecture of a run's checkpoints, from its ``model.safetensors`` (which names it;
    training checkpoints do not)."""
    from ..checkpoint import read_checkpoint

    model_file = run / "model.safetensors"
    if not model_file.is_file():
        raise InputError(f"{model_file}: missing; it names the run's architecture")
    _, report = read_checkpoint(model_file)
    if report.model_config is None:
        raise InputError(f"{model_file}: not one of our model files (no configuration inside)")
    return report.model_config


def shown_click(clicks: Sequence[int]) -> int:
    """The click count the progress lines and the plot show: 5 if scored, else the most."""
    return PLOT_CLICK if PLOT_CLICK in clicks else max(clicks)


def read_table(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and set(rows[0]) != set(FIELDS):
        raise InputError(f"{path}: expected columns {', '.join(FIELDS)}")
    return rows


def write_table(path: Path, rows: Sequence[dict[str, str]]) -> None:
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def score_runs(
    runs: Sequence[Path],
    out: Path,
    *,
    every: int = 1,
    marks: Sequence[tuple[str, Path]] = (),
    work: Path | None = None,
    train_structures: Sequence[str] | None = None,
    held_out_structures: Sequence[str] | None = None,
    clicks: Sequence[int] | None = None,
) -> list[dict[str, str]]:
    """Score the runs' checkpoints and the marked model files not yet in
    ``OUT/trajectories.csv``; the table is rewritten after each (atomically).

    Args:
        marks: ``(name, model file)`` scored once each (step -1 in the table).
        work: where the evaluations keep their per-task files (default ``runs/trajectories``,
            out of git).
        train_structures, held_out_structures, clicks: the experiments' by default.
    """
    from tqdm import tqdm

    from ..build import load_model
    from .experiment import CLICKS, TRAIN_STRUCTURES, part_dice

    if every < 1:
        raise InputError(f"--every must be at least 1, got {every}")
    clicks = tuple(clicks or CLICKS)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "trajectories.csv"
    rows = read_table(table)
    done = {(r["run"], int(r["step"])) for r in rows}
    # (None: a marked model file, which carries its configuration)
    todo: list[tuple[Point, ModelConfig | None]] = [
        (Point(name, -1, path), None) for name, path in marks if (name, -1) not in done
    ]
    for run in runs:
        points = [p for p in run_checkpoints(run, every) if (p.run, p.step) not in done]
        if points:
            config = run_config(run)
            todo += [(p, config) for p in points]
    at = shown_click(clicks)
    for point, config in tqdm(todo, desc="checkpoints", unit="model"):
        scores = part_dice(
            load_model(config, point.path),
            "m",
            (work or Path("runs") / "trajectories") / point.run / str(point.step),
            train_structures=train_structures or TRAIN_STRUCTURES,
            held_out_structures=held_out_structures,
            clicks=clicks,
        )
        for part in PARTS:
            for k in clicks:
                rows.append(
                    {
                        "run": point.run,
                        "step": str(point.step),
                        "part": part,
                        "click": str(k),
                        "dice": f"{scores[part][k]:.4f}",
                    }
                )
        write_table(table, rows)
        tqdm.write(
            f"{point.run} step {point.step}: Dice@{at} training CT "
            f"{scores['train-ct'][at]:.3f}, held-out {scores['held-out'][at]:.3f}"
        )
    return rows


def plot(rows: Sequence[dict[str, str]], path: Path, click: int = PLOT_CLICK) -> Path:
    """Dice at ``click`` clicks (the most clicks scored, if fewer) against the step (training
    CT solid, held-out dashed) and held-out against training-CT Dice (one line per run, marked
    models as stars)."""
    if not rows:
        raise InputError("nothing to plot: no scored checkpoints")
    scored = {int(r["click"]) for r in rows}
    click = click if click in scored else max(scored)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values: dict[tuple[str, int, str], float] = {}
    for r in rows:
        if int(r["click"]) == click:
            values[(r["run"], int(r["step"]), r["part"])] = float(r["dice"])
    runs = list(dict.fromkeys(run for run, _, _ in values))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        steps = sorted({s for r, s, _ in values if r == run})
        train = [values.get((run, s, "train-ct"), float("nan")) for s in steps]
        held = [values.get((run, s, "held-out"), float("nan")) for s in steps]
        if steps == [-1]:
            left.axhline(train[0], color=color, lw=1, label=f"{run} (training CT)")
            left.axhline(held[0], color=color, lw=1, ls="--")
            right.plot(train, held, "*", ms=14, color=color, label=run)
            continue
        left.plot(steps, train, "o-", color=color, label=f"{run} (training CT)")
        left.plot(steps, held, "o--", color=color)
        right.plot(train, held, "o-", color=color, label=run)
        right.annotate(f"{steps[-1]}", (train[-1], held[-1]), fontsize=8, color=color)
    left.axhline(TRAIN_BAR, color="0.5", lw=0.8, ls=":")
    left.set(
        xlabel="step",
        ylabel=f"Dice at {click} clicks",
        title="solid: training CT, dashed: held-out",
    )
    right.axvline(TRAIN_BAR, color="0.5", lw=0.8, ls=":")
    right.set(
        xlabel=f"training CT, Dice at {click} clicks",
        ylabel=f"held-out CT, Dice at {click} clicks",
        title="checkpoints along each run (last step labelled)",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _mark(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise InputError(f"--mark expects NAME=MODEL_FILE, got {text!r}")
    return name, Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastsam3d.train.trajectory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("runs", nargs="*", type=Path, help="training output folders")
    parser.add_argument("--every", type=int, default=1, help="checkpoints at multiples of N steps")
    parser.add_argument(
        "--mark", action="append", default=[], help="NAME=MODEL_FILE: also score this model"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of the table and plot")
    parser.add_argument(
        "--work", type=Path, help="per-task evaluation files (default runs/trajectories)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if not args.runs and not args.mark:
        parser.error("give at least one run folder or --mark")
    rows = score_runs(
        args.runs, args.out, every=args.every, marks=[_mark(m) for m in args.mark], work=args.work
    )
    print(f"wrote {args.out / 'trajectories.csv'} and {plot(rows, args.out / 'trajectories.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
