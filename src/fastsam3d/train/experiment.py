"""Small training experiments with a one-line summary each (``fastsam3d experiment``).

One command trains a config (resuming if it was interrupted) and measures what decides whether
a recipe works:

- **train**: Dice after 1 / 3 / 5 / 10 clicks on structures of the training CT (can the model
  learn what it was shown?);
- **held-out**: the same on every structure of the held-out DICOM CT (does it generalise?);
- **image dependence**: :func:`~fastsam3d.eval.probe.image_dependence` on the held-out CT's
  structures (does the mask change when the image is replaced by a constant?), and for models
  with high-resolution decoder features the same with only the ViT's embedding replaced (does
  the ViT matter, or does the decoder see the image through the features alone?).

Both evaluations use the realistic protocol (a :class:`~fastsam3d.interactive.session.Session`
on the original grid) with the centre click simulator and seed 0, as the model card does. Each run
writes ``OUT/NAME/`` (``config.toml``, ``summary.json``, ``metrics.csv``, the per-click results)
and appends its line to ``OUT/README.md``, so the path from one recipe to the next can be read
in order.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import ConfiguredModel
from ..data.io import read_volume
from ..eval.datasets import load_cases
from ..eval.probe import image_dependence
from ..eval.protocols import Method
from ..eval.report import read_rows
from ..eval.runner import EvalConfig, evaluate, load_targets, merge
from ..files import atomic_output

log = logging.getLogger(__name__)

TRAIN_SAMPLE = "ct"
TRAIN_STRUCTURES = (
    "aorta",
    "colon",
    "kidney_left",
    "liver",
    "pancreas",
    "rib_left_8",
    "rib_right_8",
    "spleen",
    "stomach",
    "vertebrae_L1",
)
"""Structures of the training CT scored in every experiment (large and small, organs, vessels,
bones)."""
HELD_OUT_SAMPLE = "ct_dicom"
CLICKS = (1, 3, 5, 10)
TABLE_HEADER = (
    "| run | steps | train min | train Dice@1/3/5/10 | held-out Dice@1/3/5/10 "
    "| image dependence | ViT dependence | note |\n|---|---:|---:|---|---|---:|---:|---|\n"
)


@dataclass
class Summary:
    """What one experiment measured."""

    name: str
    config: str
    steps: int
    train_minutes: float
    train_dice: dict[int, float]
    held_out_dice: dict[int, float]
    image_dependence: float
    """Mean fraction of the predicted voxels that change when the image is a constant."""
    note: str = ""
    per_structure_probe: dict[str, float] = field(default_factory=dict)
    vit_dependence: float = float("nan")
    """The same with only the ViT's embedding replaced (NaN: the model has no features)."""

    def line(self) -> str:
        """The run's row of ``README.md``."""

        def dice(values: dict[int, float]) -> str:
            return " / ".join(f"{values[k]:.3f}" for k in sorted(values))

        return (
            f"| [{self.name}]({self.name}/) | {self.steps} | {self.train_minutes:.1f} | "
            f"{dice(self.train_dice)} | {dice(self.held_out_dice)} | "
            f"{_percent(self.image_dependence)} | {_percent(self.vit_dependence)} | {self.note} |"
        )


def _percent(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.0f}%"


def mean_dice(
    rows: Sequence[dict[str, str]], method: str, clicks: Sequence[int]
) -> dict[int, float]:
    """Mean Dice over structures of ``method`` after each click count."""
    out = {}
    for k in clicks:
        values = [float(r["dice"]) for r in rows if r["method"] == method and int(r["click"]) == k]
        out[k] = float(np.mean(values)) if values else float("nan")
    return out


def score_model(
    model: ConfiguredModel,
    label: str,
    out_dir: Path,
    *,
    train_structures: Sequence[str] = TRAIN_STRUCTURES,
    held_out_structures: Sequence[str] | None = None,
    clicks: Sequence[int] = CLICKS,
) -> tuple[dict[int, float], dict[int, float], list[tuple[str, float]], float]:
    """Train and held-out Dice (after each of ``clicks``) and the image-dependence probes.

    Args:
        held_out_structures: structures of the held-out scan (``None``: all).

    Returns ``(train dice, held-out dice, [(structure, changed fraction), ...], ViT
    dependence)`` (the last: mean changed fraction with only the ViT's embedding replaced;
    NaN for models without high-resolution features).
    """
    dice = part_dice(
        model,
        label,
        out_dir,
        train_structures=train_structures,
        held_out_structures=held_out_structures,
        clicks=clicks,
    )
    case = load_cases(HELD_OUT_SAMPLE, "samples")[0]
    volume = read_volume(case.image, channel=case.channel)
    wanted = [
        (s.name, m)
        for s, m in load_targets(case, volume)
        if m.sum() > 0 and (held_out_structures is None or s.name in held_out_structures)
    ]
    probe = [(r.structure, r.changed) for r in image_dependence(model, volume, wanted)]
    vit = float("nan")
    if model.cfg.encoder.feature_channels and probe:
        vit = float(
            np.mean([r.changed for r in image_dependence(model, volume, wanted, replace="vit")])
        )
    return dice["train-ct"], dice["held-out"], probe, vit


def part_dice(
    model: ConfiguredModel,
    label: str,
    out_dir: Path,
    *,
    train_structures: Sequence[str] = TRAIN_STRUCTURES,
    held_out_structures: Sequence[str] | None = None,
    clicks: Sequence[int] = CLICKS,
) -> dict[str, dict[int, float]]:
    """Mean Dice after each of ``clicks`` on ``"train-ct"`` (``train_structures`` of the
    training CT) and ``"held-out"`` (``held_out_structures`` of the held-out CT, ``None``:
    all): realistic protocol, centre clicks, seed 0; per-task files under ``out_dir/PART``."""
    method = Method(label, model)
    out = {}
    for part, sample, structures in (
        ("train-ct", TRAIN_SAMPLE, tuple(train_structures)),
        (
            "held-out",
            HELD_OUT_SAMPLE,
            None if held_out_structures is None else tuple(held_out_structures),
        ),
    ):
        config = EvalConfig(
            protocol="realistic",
            simulator="center",
            clicks=tuple(clicks),
            seed=0,
            structures=structures,
        )
        evaluate(load_cases(sample, "samples"), [method], config, out_dir / part)
        out[part] = mean_dice(read_rows(merge(out_dir / part)[0]), label, tuple(clicks))
    return out


def run_experiment(
    config_path: str | Path,
    out_root: str | Path = "docs/eval/experiments",
    *,
    name: str | None = None,
    note: str = "",
    progress: bool = True,
    **score: Any,
) -> Summary:
    """Train ``config_path`` (resuming from its ``last.pt``), score it, write the records.

    ``score``: keyword arguments of :func:`score_model` (e.g. fewer structures in tests).
    """
    from ..build import load_model
    from .config import load_config
    from .loop import Trainer

    config_path = Path(config_path)
    config = load_config(config_path)
    name = name or config_path.stem
    out = Path(out_root) / name
    out.mkdir(parents=True, exist_ok=True)
    last = Path(config.run.out_dir) / "last.pt"
    t0 = time.perf_counter()
    trainer = Trainer(
        config, config.kind, resume=last if last.exists() else None, progress=progress
    )
    trainer.run()
    metrics = Path(config.run.out_dir) / "metrics.csv"
    train_minutes = _train_minutes(metrics, fallback=(time.perf_counter() - t0) / 60)
    model = load_model(None, Path(config.run.out_dir) / "model.safetensors")
    train, held, probe, vit = score_model(model, name, Path(config.run.out_dir) / "scores", **score)
    summary = Summary(
        name=name,
        config=str(config_path),
        steps=config.run.steps,
        train_minutes=train_minutes,
        train_dice=train,
        held_out_dice=held,
        image_dependence=float(np.mean([c for _, c in probe])) if probe else float("nan"),
        note=note,
        per_structure_probe=dict(probe),
        vit_dependence=vit,
    )
    write_records(summary, config_path, metrics, out, Path(config.run.out_dir) / "scores")
    append_line(Path(out_root) / "README.md", summary)
    return summary


def score_checkpoint(
    checkpoint: str | Path,
    out_root: str | Path = "docs/eval/experiments",
    *,
    name: str,
    note: str = "",
    scores_dir: str | Path | None = None,
    **score: Any,
) -> Summary:
    """Score a trained model file without training (baselines, the stages of a recipe) and
    record it like an experiment (steps and training minutes: 0, unknown here)."""
    from ..build import load_model

    model = load_model(None, checkpoint)
    out = Path(out_root) / name
    out.mkdir(parents=True, exist_ok=True)
    scores = Path(scores_dir) if scores_dir else Path("runs") / "scores" / name
    train, held, probe, vit = score_model(model, name, scores, **score)
    summary = Summary(
        name=name,
        config=str(checkpoint),
        steps=0,
        train_minutes=0.0,
        train_dice=train,
        held_out_dice=held,
        image_dependence=float(np.mean([c for _, c in probe])) if probe else float("nan"),
        note=note,
        per_structure_probe=dict(probe),
        vit_dependence=vit,
    )
    for part in ("train-ct", "held-out"):
        results = scores / part / "results.csv"
        if results.is_file():
            shutil.copyfile(results, out / f"{part}.csv")
    with atomic_output(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(asdict(summary), indent=1) + "\n")
    append_line(Path(out_root) / "README.md", summary)
    return summary


def _train_minutes(metrics: Path, fallback: float) -> float:
    """Training wall time from ``metrics.csv`` (the sum over resumed pieces), in minutes."""
    if not metrics.is_file():
        return fallback
    with metrics.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return fallback
    total, previous = 0.0, 0.0
    for row in rows:  # elapsed_s restarts at 0 when a run resumes
        elapsed = float(row["elapsed_s"])
        total += elapsed - previous if elapsed >= previous else elapsed
        previous = elapsed
    return total / 60


def write_records(
    summary: Summary, config_path: Path, metrics: Path, out: Path, scores: Path
) -> None:
    """``config.toml``, ``summary.json``, ``metrics.csv`` and the per-click results."""
    shutil.copyfile(config_path, out / "config.toml")
    if metrics.is_file():
        shutil.copyfile(metrics, out / "metrics.csv")
    for part in ("train-ct", "held-out"):
        results = scores / part / "results.csv"
        if results.is_file():
            shutil.copyfile(results, out / f"{part}.csv")
    with atomic_output(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(asdict(summary), indent=1) + "\n")


def append_line(readme: Path, summary: Summary) -> None:
    """Add (or replace) the run's line in the experiments table."""
    text = readme.read_text() if readme.is_file() else ""
    if "| run |" not in text:
        text = (
            text
            + ("\n" if text and not text.endswith("\n") else "")
            + "# Experiments\n\n"
            + TABLE_HEADER
        )
    lines = [ln for ln in text.splitlines() if not ln.startswith(f"| [{summary.name}](")]
    lines.append(summary.line())
    readme.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(readme) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
