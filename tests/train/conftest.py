"""Tiny training configurations on the bundled sample CT."""

from __future__ import annotations

import tomllib
from pathlib import Path
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


def write_toml(data: dict, path: Path) -> Path:
    """``data`` (tables, one level of sub-tables) as a TOML file at ``path``."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for table, values in data.items():
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines.append(f"[{table}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items() if not isinstance(v, dict)]
        for name, sub in nested.items():
            lines.append(f"[{table}.{name}]")
            lines += [f"{k} = {value(v)}" for k, v in sub.items()]
    path.write_text("\n".join(lines) + "\n")
    tomllib.loads(path.read_text())
    return path
