"""Train the fastsam3d-lite recipe (teacher -> distillation -> student) on one GPU in a fixed
time, then score the student on the training CT: the prepared script for a session that is
lent a GPU for a few minutes.

    python scripts/gpu_recipe.py --out DIR [--minutes 6] [--recipe configs/lite/v4]
    python scripts/gpu_recipe.py --out DIR --dry-run     # the same steps on the CPU, tiny

Each stage's config is the recipe's own (``teacher.toml``, ``distill.toml``, ``student.toml``)
with the device, bf16, batch size (and the learning rate with its square root), data workers,
output folders and step counts replaced.
Step counts come from the budget: every stage first runs a few calibration steps (which also
build the data engine's cache and warm the GPU), its seconds per step give how many steps fit
its share of ``--minutes`` (teacher 55%, distillation 13%, student 32%), and warm-up and the
distillation's two phases are scaled with the steps. The calibrations and the scoring come on
top of ``--minutes`` (not yet measured on a GPU; leave about 3 minutes of the device call's
10 for them). The runs themselves are ordinary
``python -m fastsam3d.train`` runs: each folder holds ``config.toml``, ``metrics.csv`` and
``model.safetensors`` and resumes with ``--resume auto``.

``DIR`` receives ``recipe.json`` (what ran: steps, seconds per step, wall times, the device),
``train-ct/`` (the student on 10 structures of the training CT, realistic protocol) and the
stages' folders; ``--pack FOLDER`` also writes ``FOLDER/recipe.tar.part-*`` and
``recipe.json``: the weights and records in pieces of at most 15 MiB (what the device tool
brings back), joined with ``cat recipe.tar.part-* | tar -x``. Score the weights on the
held-out scan on the CPU with ``fastsam3d experiment --checkpoint DIR/student/model.safetensors
--name NAME``.

On the lent machine (Python 3.12 with torch, numpy, scipy, scikit-image, but no nibabel or
edt): here ``bash scripts/device_wheels.sh`` (into ``.whl/``) and ``python
scripts/gpu_recipe.py --build-cache .whl/engine-cache.tgz`` (the supervoxels, about 2 minutes
of CPU here that the GPU machine then saves); then one device call, carrying ``.whl``::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site python3 scripts/gpu_recipe.py --out /tmp/recipe --minutes 6 \
        --engine-cache .whl/engine-cache.tgz --pack $OUT
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the lent machine runs the checkout, not an install

import torch  # noqa: E402

from fastsam3d.bench.encoders import machine_info  # noqa: E402
from fastsam3d.data.frame import FrameSpec  # noqa: E402
from fastsam3d.files import atomic_output  # noqa: E402
from fastsam3d.train.config import load_config  # noqa: E402
from fastsam3d.train.engine import training_regions  # noqa: E402

STAGES = (("teacher", 0.55), ("distill", 0.13), ("student", 0.32))
"""Stage name (``RECIPE/NAME.toml``) and its share of the training minutes."""
TRAIN_STRUCTURES = (
    "aorta,colon,kidney_left,liver,pancreas,rib_left_8,rib_right_8,spleen,stomach,vertebrae_L1"
)
PIECE_BYTES = 15 * 2**20
MIN_USEFUL_STEPS = 300
"""Fewer interactive steps than this learned nothing from scratch in ``e20`` (100 steps of 4
regions: Dice 0.00-0.03, while 400 steps of 1 region reached 0.51)."""


# -- TOML out (the configs hold strings, numbers, booleans, lists and nested tables) -------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """Top-level tables with their keys; a table's sub-tables as ``[a.b]`` (one level, as the
    training configs have: ``[data.engine]``); deeper dicts inline."""
    lines: list[str] = []
    for table, body in data.items():
        lines.append(f"[{table}]")
        subtables = {k: v for k, v in body.items() if isinstance(v, dict) and table == "data"}
        for key, value in body.items():
            if key not in subtables:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for name, sub in subtables.items():
            lines.append(f"[{table}.{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in sub.items())
            lines.append("")
    return "\n".join(lines)


# -- one stage ----------------------------------------------------------------------------


def stage_config(
    recipe: dict[str, Any],
    *,
    out_dir: Path,
    steps: int,
    recipe_steps: int,
    device: str,
    amp: str,
    batch: int,
    workers: int,
    threads: int,
    cache_dir: Path,
    inputs: dict[str, Path],
    dry_run: bool,
) -> dict[str, Any]:
    """The recipe's stage config for this machine, ``steps`` steps of ``batch`` regions (the
    learning rate scaled by the square root of ``batch`` over the recipe's batch).

    ``inputs``: stage name -> its ``model.safetensors``; a checkpoint path of the recipe that
    names a stage's output folder (``runs/.../teacher/model.safetensors``) is replaced by it.
    """
    c = json.loads(json.dumps(recipe))  # deep copy
    scale = steps / recipe_steps
    run = c["run"]
    run.update(
        out_dir=str(out_dir),
        device=device,
        amp=amp,
        threads=threads,
        steps=steps,
        checkpoint_every=max(1, steps // 4),
    )
    c["data"].update(workers=workers)
    recipe_batch = c["data"].get("batch_size", 1)
    c["data"]["batch_size"] = batch
    # the learning rate grows with the square root of the batch (e21: batch 4 at 2x the rate
    # learned in 100 steps what batch 4 at the recipe's rate did not, e20)
    c["optim"]["lr"] = c["optim"]["lr"] * math.sqrt(batch / recipe_batch)
    if "engine" in c["data"]:
        c["data"]["engine"]["cache_dir"] = str(cache_dir)
    optim = c["optim"]
    if optim.get("warmup_steps"):
        optim["warmup_steps"] = max(1, min(steps // 2, round(optim["warmup_steps"] * scale)))
    if "distill" in c:
        layerwise = max(1, steps // 2)
        c["distill"].update(layerwise_steps=layerwise, logit_steps=steps - layerwise)
    for table in ("model", "teacher", "student"):
        if table not in c:
            continue
        files = c[table].get("checkpoint", [])
        c[table]["checkpoint"] = [
            str(inputs[Path(f).parent.name]) if Path(f).parent.name in inputs else f for f in files
        ]
        if not c[table]["checkpoint"]:
            del c[table]["checkpoint"]
        if dry_run:  # the lite layout in miniature: 64^3, 2 (teacher) / 1 (student) blocks
            student = c[table]["name"] == "fastsam3d-lite"
            c[table]["name"] = "test-tiny-hires"
            encoder = c[table].setdefault("encoder", {})
            encoder["depth"] = 1 if student else 2
            encoder["num_heads"] = 4
    if "distill" in c and dry_run:
        c["distill"]["frozen"] = []
    return c


def seconds_per_step(metrics: Path, skip: int) -> float:
    """Median step time from a run's ``metrics.csv`` (``elapsed_s``), the first ``skip``
    steps left out (start-up, compilation, the first batches of the loader)."""
    rows = list(csv.DictReader(metrics.open()))
    elapsed = [float(r["elapsed_s"]) for r in rows]
    steps = [b - a for a, b in zip(elapsed[skip:], elapsed[skip + 1 :], strict=False)]
    if not steps:
        raise RuntimeError(f"{metrics}: too few steps to time ({len(rows)})")
    steps.sort()
    return steps[len(steps) // 2]


def run_stage(config: dict[str, Any], path: Path, env: dict[str, str], log: Path) -> float:
    """Write ``config`` to ``path`` and train it; returns the wall time in seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(config))
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "fastsam3d.train", "--config", str(path), "--resume", "auto"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        raise RuntimeError(f"{path}: training failed (exit {done.returncode}); log: {log}")
    return time.perf_counter() - start


# -- the whole recipe ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output folder (required unless --build-cache)")
    parser.add_argument("--recipe", default="configs/lite/v4", help="folder of the stage TOMLs")
    parser.add_argument(
        "--minutes",
        type=float,
        default=6.0,
        help="training minutes in all (the calibrations and the scoring come on top)",
    )
    parser.add_argument("--batch", type=int, default=4, help="regions per step (distill: 2x)")
    parser.add_argument(
        "--workers",
        type=int,
        help="data loader processes (default: all cores but two, at most 12; dry run: 0)",
    )
    parser.add_argument("--calibration-steps", type=int, default=12)
    parser.add_argument(
        "--engine-cache",
        type=Path,
        help="the data engine's supervoxels, built before (a folder, or a .tgz of one "
        "folder): saves their minutes of CPU on the lent machine",
    )
    parser.add_argument(
        "--pack",
        type=Path,
        metavar="FOLDER",
        help="also write the weights and records in 15 MiB pieces there (see above)",
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, a few steps")
    parser.add_argument(
        "--build-cache",
        type=Path,
        metavar="TGZ",
        help="only compute the recipe's supervoxels into this .tgz (for --engine-cache) and stop",
    )
    args = parser.parse_args(argv)
    if args.build_cache:
        files = build_engine_cache((ROOT / args.recipe).resolve(), args.build_cache)
        print(f"wrote {args.build_cache}: {len(files)} supervoxel files")
        return 0

    if args.out is None:
        parser.error("--out is required")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe_dir = (ROOT / args.recipe).resolve()
    device, amp, threads = ("cpu", "none", 2) if args.dry_run else ("cuda", "bf16", 4)
    workers = args.workers
    if workers is None:
        workers = 0 if args.dry_run else max(0, min(12, (os.cpu_count() or 2) - 2))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_recipe: no CUDA device visible to torch; use --dry-run", file=sys.stderr)
        return 1
    report: dict[str, Any] = {
        "recipe": str(recipe_dir),
        "minutes": args.minutes,
        "device": device,
        "amp": amp,
        "dry_run": args.dry_run,
        "git": _git_head(),
        "machine": machine_info(threads),
        "stages": {},
    }
    cache_dir = out / "engine-cache"
    if args.engine_cache:
        seed_cache(args.engine_cache, cache_dir)
    settings = dict(device=device, amp=amp, workers=workers, threads=threads, cache_dir=cache_dir)
    status = 1
    try:
        student = train_stages(args, recipe_dir, out, env, settings, report)
        status = score_student(student, out, env, device, args.dry_run, report)
    except RuntimeError as err:  # a stage failed: keep its log and what ran before it
        report["error"] = str(err)
        print(f"gpu_recipe: {err}", file=sys.stderr)
    _write_json(out / "recipe.json", report)
    if args.pack:
        pack(out, args.pack)
        shutil.copy2(out / "recipe.json", args.pack / "recipe.json")
    print(json.dumps(report, indent=1))
    return status


def train_stages(
    args: argparse.Namespace,
    recipe_dir: Path,
    out: Path,
    env: dict[str, str],
    settings: dict[str, Any],
    report: dict[str, Any],
) -> Path:
    """Calibrate and train each stage in turn; returns the student's ``model.safetensors``."""
    inputs: dict[str, Path] = {}
    total_start = time.perf_counter()
    for name, share in STAGES:
        recipe = tomllib.loads((recipe_dir / f"{name}.toml").read_text())
        batch = args.batch * (2 if name == "distill" else 1)
        common = dict(
            recipe_steps=recipe["run"]["steps"],
            batch=batch,
            inputs=inputs,
            dry_run=args.dry_run,
            **settings,
        )
        calib_steps = args.calibration_steps
        calib_dir = out / "calibration" / name
        shutil.rmtree(calib_dir, ignore_errors=True)
        calib = stage_config(recipe, out_dir=calib_dir, steps=calib_steps, **common)
        calib_wall = run_stage(calib, calib_dir / "config.toml", env, out / f"{name}-calib.log")
        per_step = seconds_per_step(calib_dir / "metrics.csv", skip=min(4, calib_steps - 2))
        startup = max(0.0, calib_wall - per_step * calib_steps)
        budget = share * args.minutes * 60 - startup
        steps = max(2 if args.dry_run else 20, int(budget / per_step))
        print(
            f"{name}: {per_step:.3f} s/step (batch {batch}), start-up {startup:.0f} s "
            f"-> {steps} steps in {budget / 60:.1f} min",
            flush=True,
        )
        if name == "teacher" and steps < MIN_USEFUL_STEPS and not args.dry_run:
            report.setdefault("warnings", []).append(
                f"{name}: {steps} steps; runs of under {MIN_USEFUL_STEPS} steps from scratch "
                "still predicted empty masks on the CPU (experiment e20), whatever the batch"
            )
        stage_dir = out / name
        shutil.rmtree(stage_dir, ignore_errors=True)  # a fresh run, never another run's state
        config = stage_config(recipe, out_dir=stage_dir, steps=steps, **common)
        wall = run_stage(config, stage_dir / "config.toml", env, out / f"{name}.log")
        inputs[name] = stage_dir / "model.safetensors"
        report["stages"][name] = {
            "steps": steps,
            "batch": batch,
            "seconds_per_step": per_step,
            "calibration_wall_s": round(calib_wall, 1),
            "wall_s": round(wall, 1),
            "recipe_steps": recipe["run"]["steps"],
        }
        _write_json(out / "recipe.json", report)
    report["training_wall_s"] = round(time.perf_counter() - total_start, 1)
    return inputs["student"]


def score_student(
    student: Path,
    out: Path,
    env: dict[str, str],
    device: str,
    dry_run: bool,
    report: dict[str, Any],
) -> int:
    """The student on the training CT (realistic protocol, centre clicks, seed 0) into
    ``out/train-ct/``; returns the evaluation's exit status."""
    structures, clicks = ("spleen", "1,2") if dry_run else (TRAIN_STRUCTURES, "1,3,5,10")
    command = [
        sys.executable, "-m", "fastsam3d.cli", "eval", "ct", "--layout", "samples",
        "--structures", structures, "--clicks", clicks, "--protocol", "realistic",
        "--simulator", "center", "--seed", "0", "--no-baseline", "--runtime", "torch",
        "--device", device, "--out", str(out / "train-ct"),
        "--model", "from-checkpoint", "--checkpoint", str(student),
    ]  # fmt: skip
    start = time.perf_counter()
    with (out / "train-ct.log").open("w") as log:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    report["train_ct_eval"] = {
        "exit": done.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    return done.returncode


def pack(out: Path, folder: Path) -> list[Path]:
    """Weights, configs, metrics, logs and scores of ``out`` in one tar, cut in pieces of
    :data:`PIECE_BYTES` written to ``folder`` (``recipe.tar.part-00``, ...). Left out: the
    optimizer states, the calibration runs, the supervoxels and the distilled student (the
    teacher's ~45 MB and the student's ~14 MB fit the device tool's 64 MiB; the distilled
    weights would not)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("recipe.tar.part-*"):
        old.unlink()
    archive = folder / "recipe.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(out.rglob("*")):
            rel = path.relative_to(out)
            skipped = (
                rel.parts[0] in ("engine-cache", "calibration")
                or path.suffix == ".pt"  # optimizer state
                or rel == Path("distill", "model.safetensors")  # the student's starting point
            )
            if path.is_file() and path != archive and not skipped:
                tar.add(path, arcname=str(rel))
    pieces = []
    with archive.open("rb") as f:
        for i in range(math.ceil(archive.stat().st_size / PIECE_BYTES)):
            piece = folder / f"recipe.tar.part-{i:02d}"
            piece.write_bytes(f.read(PIECE_BYTES))
            pieces.append(piece)
    archive.unlink()
    return pieces


def build_engine_cache(recipe_dir: Path, archive: Path) -> list[str]:
    """Compute the data engine's supervoxels for every scan the recipe's stages train on and
    write them to ``archive`` (a ``.tgz`` of one folder, ``engine-cache/``) for
    ``--engine-cache``; returns the files' names."""
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp) / "engine-cache"
        for name, _ in STAGES:
            config = load_config(recipe_dir / f"{name}.toml")
            if not config.data.engine.enabled:
                continue
            spec = config.model or config.student
            assert spec is not None
            engine = dataclasses.replace(config.data.engine, cache_dir=str(cache_dir))
            data = dataclasses.replace(config.data, engine=engine)
            training_regions(data, FrameSpec.for_model(spec.model_config()), config.run.seed)
        files = sorted(p.name for p in cache_dir.glob("slic-*.npy"))
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(cache_dir, arcname="engine-cache")
    return files


def seed_cache(source: Path, cache_dir: Path) -> None:
    """Copy prebuilt supervoxels (``slic-*.npy``) from a folder or a ``.tgz`` into
    ``cache_dir``; the engine checks each file's key and shape and recomputes what differs."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        files = sorted(source.glob("slic-*.npy"))
        for f in files:
            shutil.copy2(f, cache_dir / f.name)
    else:
        with tarfile.open(source) as tar:
            members = [
                m for m in tar.getmembers() if m.isfile() and Path(m.name).name.startswith("slic-")
            ]
            for m in members:
                extracted = tar.extractfile(m)
                assert extracted is not None
                (cache_dir / Path(m.name).name).write_bytes(extracted.read())
            files = [Path(m.name) for m in members]
    print(f"engine cache: {len(files)} supervoxel files from {source}", flush=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
