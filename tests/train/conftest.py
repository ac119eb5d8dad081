"""Tiny training configurations on the bundled sample CT."""

from __future__ import annotations

from typing import Any


def train_config(out: str, steps: int = 30) -> dict[str, Any]:
    return {
        "run": {"out_dir": out, "seed": 0, "steps": steps, "threads": 1, "checkpoint_every": 1000},
        "data": {
            "root": "ct",
            "layout": "samples",
            "structures": ["spleen"],
            "jitter_mm": 5.0,
            "augment": {"flip": False},
        },
        "optim": {"lr": 3e-3, "schedule": "constant"},
        "model": {"name": "test-tiny"},
        "interactive": {"click_iterations": 3, "trainable": "all"},
    }


def distill_config(out: str, layerwise: int = 6, logit: int = 6) -> dict[str, Any]:
    return {
        "run": {
            "out_dir": out,
            "seed": 0,
            "steps": layerwise + logit,
            "threads": 1,
            "checkpoint_every": 1000,
        },
        "data": {
            "root": "ct",
            "layout": "samples",
            "structures": ["spleen", "liver"],
            "jitter_mm": 5.0,
        },
        "optim": {"lr": 3e-3, "schedule": "constant"},
        "teacher": {"name": "test-tiny", "encoder": {"depth": 4, "global_attn_indexes": [1, 3]}},
        "student": {
            "name": "test-tiny-student",
            "encoder": {"depth": 2, "attn_free_blocks": 1},
            "init": "teacher",
        },
        "distill": {"layerwise_steps": layerwise, "logit_steps": logit, "mask_weight": 0.5},
    }
