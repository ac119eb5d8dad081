"""Run a training or distillation config: what ``fastsam3d train``/``distill`` and
``python -m fastsam3d.train`` call."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from .config import load_config
from .loop import Trainer


def run_training(
    config_path: str | Path,
    kind: Literal["train", "distill"] | None = None,
    *,
    resume: str | Path | None = None,
    steps: int | None = None,
) -> tuple[Trainer, list[dict[str, Any]]]:
    """Train (or distill) as the TOML file says; returns the trainer and its metric rows.

    Args:
        config_path: a training config (``[model]``: interactive training; ``[teacher]`` and
            ``[student]``: distillation).
        kind: what the caller expects the config to be (``None``: whatever it is); a config of
            the other kind is an :class:`~fastsam3d.errors.InputError`.
        resume: a checkpoint to continue from, or ``"auto"``: ``OUT/last.pt`` when present.
        steps: overrides ``[run] steps``.
    """
    config = load_config(config_path)
    if steps:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, steps=steps))
    if resume == "auto":
        last = Path(config.run.out_dir) / "last.pt"
        resume = str(last) if last.exists() else None
    trainer = Trainer(config, kind or config.kind, resume=None if resume is None else str(resume))
    return trainer, trainer.run()
