"""Samples per second of each training recipe in configs/ on this machine.

Runs every recipe for a few steps on the bundled sample CT with random weights (the recipes'
data and checkpoint paths are replaced; everything else is as configured) and prints a Markdown
table. Usage: .venv/bin/python scripts/training_throughput.py [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch

from fastsam3d.bench.encoders import machine_info
from fastsam3d.train.config import load_config
from fastsam3d.train.loop import Trainer

RECIPES = (
    "configs/finetune_folder.toml",
    "configs/distill_fastsam3d.toml",
    "configs/distill_small.toml",
)


def measure(path: str, steps: int, threads: int, amp: str | None) -> dict[str, float | str]:
    config = load_config(path)
    with tempfile.TemporaryDirectory() as out:
        data = dataclasses.replace(
            config.data,
            root="ct",
            layout="samples",
            workers=0,
            structures=("liver", "spleen", "kidney_left", "kidney_right", "stomach"),
        )
        run = dataclasses.replace(
            config.run,
            out_dir=out,
            steps=steps,
            device="cpu",
            threads=threads,
            validate_every=0,
            checkpoint_every=10**6,
            amp=amp or config.run.amp,
        )
        optim = dataclasses.replace(config.optim, grad_accum=1)
        changes: dict[str, object] = {"data": data, "run": run, "optim": optim, "validation": None}
        for name in ("model", "teacher", "student"):
            spec = getattr(config, name)
            if spec is not None:
                changes[name] = dataclasses.replace(spec, checkpoint=())
        if config.distill is not None:
            half = steps // 2
            changes["distill"] = dataclasses.replace(
                config.distill,
                layerwise_steps=half,
                logit_steps=steps - half,
                cache_dir="",
                cache_pool=0,
            )
        rows = Trainer(dataclasses.replace(config, **changes), config.kind, progress=False).run()
    per_stage: dict[int, list[float]] = {}
    for r in rows[1:]:  # the first step includes one-time allocations
        per_stage.setdefault(int(r["stage"]), []).append(float(r["samples_per_s"]))
    result: dict[str, float | str] = {
        "recipe": Path(path).name,
        "amp": run.amp,
        "batch": data.batch_size,
    }
    for stage, values in per_stage.items():
        result[f"stage{stage}"] = statistics.median(values)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(machine_info(args.threads))
    print(
        "| recipe | amp | batch | samples/s (fine-tune or layer-wise) | samples/s (logit stage) |"
    )
    print("|---|---|---:|---:|---:|")
    for recipe in RECIPES:
        for amp in ("none", "bf16"):
            r = measure(recipe, args.steps, args.threads, amp)
            first = r.get("stage1", r.get("stage0", float("nan")))
            second = r.get("stage2", "-")
            second_s = f"{second:.3f}" if isinstance(second, float) else second
            print(
                f"| {r['recipe']} | {r['amp']} | {r['batch']} | {first:.3f} | {second_s} |",
                flush=True,
            )
    torch.set_num_threads(args.threads)


if __name__ == "__main__":
    main()
