"""Command line: ``fastsam3d <command>``. Thin wrappers over the Python API.

Heavy imports happen inside the handlers so ``fastsam3d --help`` is instant. Every handler
returns an exit code; user errors print one clear line to stderr and return 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cmd_models(args: argparse.Namespace) -> int:
    from .build import build_meta
    from .registry import MODELS

    print(
        f"{'name':<20} {'params':>12}  {'blocks':>6} {'width':>5} {'heads':>5}  "
        f"{'formula':<9}  description"
    )
    for name in sorted(MODELS):
        spec = MODELS[name]
        enc = spec.config.encoder
        params = sum(p.numel() for p in build_meta(spec.config).parameters())
        print(
            f"{name:<20} {params:>12,}  {enc.depth:>6} {enc.embed_dim:>5} {enc.num_heads:>5}  "
            f"{enc.block_formula:<9}  {spec.description}"
        )
        if spec.fits and args.verbose:
            print(f"{'':<20} fits: {', '.join(spec.fits)}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .build import build_meta, check_state_dict, matching_models
    from .checkpoint import read_checkpoint, save_native
    from .registry import get_spec

    dst = Path(args.dst)
    for src in args.src:
        if Path(src).resolve() == dst.resolve():
            raise ValueError(f"output {dst} is also an input; choose another output path")
    state, report = read_checkpoint(args.src)
    print(report.summary())
    name = args.model or report.model_name
    if not name:
        fits = matching_models(state)
        if len(fits) != 1:
            hint = (
                f"its shapes fit {' and '.join(fits)}, which differ only in the block formula a "
                "file cannot reveal"
                if fits
                else "its shapes fit no registered model"
            )
            raise ValueError(
                f"cannot tell the model of {', '.join(args.src)}: {hint}; pass --model"
            )
        name = fits[0]
    cfg = (
        report.model_config if args.model is None and report.model_config else get_spec(name).config
    )
    check_state_dict(build_meta(cfg), state, name)
    save_native(dst, state, cfg, name)
    print(f"wrote {dst} (model {name}, {len(state)} tensors)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .runtime.select import available

    interactive = args.target in ("session", "serve")
    if args.runtimes is None:  # session, serve: what a user of the bundled model gets
        args.runtimes = "auto" if interactive else DEFAULT_BENCH_RUNTIMES
    if args.models is None:
        args.models = "fastsam3d-lite" if interactive else DEFAULT_BENCH_MODELS
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for runtime in runtimes:
        if runtime not in RUNTIME_CHOICES or (runtime == "auto" and not interactive):
            raise ValueError(
                f"--runtimes: unknown runtime {runtime!r}; choose from {RUNTIME_CHOICES[1:]}"
            )
    missing = [r for r in runtimes if not available(r)]
    if missing:
        print(f"not installed here, skipped: {', '.join(missing)}")
        runtimes = [r for r in runtimes if r not in missing]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    def bar(desc: str) -> Any:
        return lambda steps: tqdm(steps, desc=desc, unit="run", file=sys.stderr)

    if args.target == "serve":
        from .bench.serve_load import load_markdown, plot_load, run_load_test

        model_name = args.models.split(",")[-1].strip()
        with tqdm(total=args.seconds, desc="load test", unit="s", file=sys.stderr) as progress:

            def advance(elapsed: float) -> None:
                progress.update(elapsed - progress.n)

            report = run_load_test(
                sessions=args.sessions,
                seconds=args.seconds,
                sample=args.sample,
                model=model_name,
                threads=args.threads or 2,
                progress=advance,
            )
        from .bench.encoders import machine_info

        machine = machine_info(args.threads or 2)
        report["machine"] = machine
        print(load_markdown(report))
        print(
            f"machine: {machine['cpu']}, {machine['logical_cpus']} cores, torch {machine['torch']}"
        )
        if args.plot:
            print(f"wrote {plot_load(report, args.plot)}")
        for problem in report["errors"][:5] + report["crosstalk"][:5]:
            print(f"problem: {problem}", file=sys.stderr)
    elif args.target == "session":
        from .bench.session import benchmark_session, session_markdown

        report = benchmark_session(
            sample_name=args.sample,
            model_name=args.models.split(",")[-1].strip(),
            runtime=runtimes[0],
            rounds=args.rounds,
            threads=args.threads or 2,
            progress=bar("session rounds"),
        )
        print(session_markdown(report))
    else:
        from .bench.encoders import (
            Candidate,
            benchmark_encoders,
            default_candidates,
            markdown_table,
            peak_memory_mb,
            plot_latency,
        )

        names = [n.strip() for n in args.models.split(",") if n.strip()]
        device, dtype = _resolve_device(args.device), args.dtype
        if device != "cpu":
            runtimes = ["torch"]  # the exported runtimes run on the CPU
        if names == ["sam-med3d", "fastsam3d"] and not args.no_table4:
            candidates = default_candidates(args.reference, runtimes, device, dtype)
        else:
            candidates = [
                Candidate(n, "sdpa", r, False, device, dtype) for n in names for r in runtimes
            ]
            if args.reference:
                candidates += [Candidate(n, "eager", "torch", False, device, dtype) for n in names]
        report = benchmark_encoders(
            candidates,
            rounds=args.rounds,
            warmup=args.warmup,
            threads=args.threads or 2,
            progress=bar("round-robin"),
            decoder=not args.no_decoder,
            accuracy=not args.no_accuracy,
        )
        if args.memory:
            for c in tqdm(candidates, desc="peak memory (fresh processes)", file=sys.stderr):
                report["results"][c.label]["peak_memory_mb"] = peak_memory_mb(c, args.threads or 2)
        print(markdown_table(report))
        if args.plot:
            print(f"wrote {plot_latency(report, args.plot)}")
    if args.json:
        _write_json_atomic(Path(args.json), report)
        print(f"wrote {args.json}")
    return 0


def _cmd_selfcheck(args: argparse.Namespace) -> int:
    import torch

    from .conformance import (
        check_fixture,
        fixture_state_dict,
        fixtures,
        load_reference,
        model_shapes,
        write_upstream_checkpoint,
    )

    torch.set_num_threads(args.threads)
    folder = Path(args.fixtures)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for fx in fixtures():
            path = folder / fx.filename
            if not path.is_file():
                raise ValueError(f"fixture {path} not found; pass --fixtures DIR")
            ref = load_reference(path)
            state = fixture_state_dict(model_shapes(fx.config))
            ckpt = write_upstream_checkpoint(Path(tmp) / f"{path.stem}.pth", state, "training")
            for impl in ("sdpa", "eager"):
                rows = check_fixture(fx, ref, ckpt, impl)
                bad = [r for r in rows if not r.ok]
                failures += len(bad)
                worst = max(rows, key=lambda r: r.max_abs)
                print(
                    f"{'OK  ' if not bad else 'FAIL'} {fx.name:<28} {impl:<5} {len(rows):>2} "
                    f"outputs, max |diff| {worst.max_abs:.2e} ({worst.key})"
                )
                for r in bad:
                    print(f"     {r.key}: max |diff| {r.max_abs:.3e}")
    if failures:
        print(f"{failures} outputs differ from upstream beyond atol = rtol = 1e-4")
        return 1
    print("all outputs match upstream (atol = rtol = 1e-4)")
    return 0


# -- segment ------------------------------------------------------------------------------------


def parse_point(text: str) -> tuple[float, float, float]:
    """``"i,j,k"`` -> three floats; ``argparse.ArgumentTypeError`` naming the value otherwise."""
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected three numbers 'i,j,k', got {text!r}")
    return (values[0], values[1], values[2])


class _ClickAction(argparse.Action):
    """``--point`` / ``--negative`` append ``(point, positive)`` to one ordered list."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        clicks = list(getattr(namespace, self.dest) or [])
        clicks.append((values, self.const))
        setattr(namespace, self.dest, clicks)


def read_prompt_file(
    path: Path,
) -> tuple[list[tuple[tuple[float, float, float], bool]], str | None]:
    """A JSON prompt file -> ordered clicks and the world convention (None: voxel indices).

    Format: ``{"world": null | "ras" | "lps", "clicks": [{"point": [i, j, k], "positive": true},
    ...]}`` (``positive`` defaults to true).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the prompt file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("clicks"), list):
        raise ValueError(
            f'{path}: expected {{"clicks": [{{"point": [i, j, k], "positive": true}}, ...]}}'
        )
    world = data.get("world")
    if world not in (None, "ras", "lps"):
        raise ValueError(f"{path}: 'world' must be null, 'ras' or 'lps', got {world!r}")
    clicks = []
    for n, entry in enumerate(data["clicks"]):
        point = entry.get("point") if isinstance(entry, dict) else None
        positive = entry.get("positive", True) if isinstance(entry, dict) else None
        if (
            not isinstance(point, list)
            or len(point) != 3
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in point)
            or not isinstance(positive, bool)
        ):
            raise ValueError(
                f'{path}: click {n} must be {{"point": [3 numbers], "positive": true|false}}, '
                f"got {entry!r}"
            )
        clicks.append(((float(point[0]), float(point[1]), float(point[2])), positive))
    return clicks, world


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device available")
    return name


def _cmd_segment(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch

    from .build import load_model
    from .data.io import (
        check_output_path,
        output_format,
        read_volume,
        volume_format,
        write_label_map,
    )
    from .interactive.session import Session

    clicks = list(args.clicks or [])
    world = args.world
    if args.prompts:
        file_clicks, file_world = read_prompt_file(Path(args.prompts))
        if clicks and file_world != world:
            raise ValueError(
                "--prompts and --point/--negative use different coordinate conventions"
            )
        clicks += file_clicks
        world = file_world if file_world is not None else world
    if not clicks:
        raise ValueError("no clicks: give --point i,j,k (and --negative i,j,k) or --prompts FILE")
    out = check_output_path(args.out, inputs=(Path(args.image),))
    if output_format(out) == "dicom-seg" and volume_format(Path(args.image)) != "dicom":
        raise ValueError(
            f"{out}: a .dcm output is a DICOM Segmentation, which must reference a DICOM series; "
            f"{args.image} is not one: write .nii.gz, .nrrd or .mha instead"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _resolve_device(args.device)

    def stage(name: str, ms: float, detail: str = "") -> None:
        print(f"{name:<12} {ms:8.1f} ms  {detail}".rstrip())

    t = time.perf_counter()
    volume = read_volume(args.image, channel=args.channel)
    stage("load image", 1e3 * (time.perf_counter() - t), volume.describe())
    t = time.perf_counter()
    from .registry import get_spec
    from .runtime.select import prepare, resolve

    if args.checkpoint is None and get_spec(args.model).weights is None:
        raise ValueError(
            f"model {args.model!r} has no bundled weights: pass --checkpoint (published "
            "SAM-Med3D / FastSAM3D weights), or use --model fastsam3d-lite"
        )
    model = load_model(args.model, args.checkpoint, device=device)
    runtime = resolve(args.runtime, model)
    runner = prepare(model, runtime, threads=args.threads)
    stage(
        "load model",
        1e3 * (time.perf_counter() - t),
        f"{args.model} on {device}, runtime {runtime}",
    )
    session = Session(runner, prompting=args.prompting, runtime="torch")
    session.set_image(volume)
    result = None
    for n, (point, positive) in enumerate(clicks, start=1):
        result = session.add_click(point, positive, world=world)
        assert result is not None
        tm = result.timings_ms
        sign = "+" if positive else "-"
        where = ", ".join(f"{v:g}" for v in point) + (f" mm {world.upper()}" if world else "")
        region = "new region, " if result.new_region else ""
        print(f"click {n} ({sign}) at ({where}): {region}{int(result.mask.sum())} voxels")
        if tm["encode"]:
            stage("  preprocess", tm["preprocess"])
            stage("  encode", tm["encode"])
        stage("  decode", tm["decode"])
        stage("  map back", tm["map"])
    assert result is not None
    t = time.perf_counter()
    write_label_map(session.mask, volume, out)
    voxels = int(session.mask.sum())
    ml = voxels * float(np.prod(volume.spacing)) / 1000.0
    stage("write", 1e3 * (time.perf_counter() - t), f"{out} ({voxels} voxels, {ml:.1f} ml)")
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from . import samples

    if args.action == "list":
        for s in samples.SAMPLES.values():
            print(
                f"{s.name:<9} {s.description}\n{'':<9} image  {s.image}\n{'':<9} labels {s.labels}"
            )
        return 0
    if args.action == "verify":
        problems = samples.verify()
        for p in problems:
            print(p)
        print("bundled samples match their checksums" if not problems else "checksum problems")
        return 0 if not problems else 1
    if not args.dest:
        raise ValueError("samples fetch needs a destination folder: fastsam3d samples fetch DIR")
    written = samples.fetch(Path(args.dest), everything=args.all)
    print(f"wrote {len(written)} files to {args.dest} (checksums verified)")
    return 0


# -- eval ---------------------------------------------------------------------------------------


def _parse_clicks(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        values = ()
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected click counts like '1,3,5,10', got {text!r}")
    return values


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .build import load_model
    from .eval.baseline import RandomWalkerBaseline
    from .eval.datasets import load_cases
    from .eval.protocols import Method
    from .eval.report import plot_curves, read_rows, summary_markdown
    from .eval.runner import EvalConfig, distributed_context, evaluate, merge

    models = args.model or []
    ckpts = args.checkpoint or []
    if len(models) != len(ckpts):
        raise ValueError(
            f"give one --checkpoint per --model ({len(models)} models, {len(ckpts)} checkpoints); "
            "use --checkpoint random for random weights"
        )
    if not models and args.no_baseline:
        raise ValueError("nothing to evaluate: give --model/--checkpoint or keep the baseline")
    config = EvalConfig(
        protocol=args.protocol,
        simulator=args.simulator,
        clicks=args.clicks,
        seed=args.seed,
        logit_quirk=args.logit_quirk,
        structures=tuple(s.strip() for s in args.structures.split(","))
        if args.structures
        else None,
    )
    cases = load_cases(
        args.data, args.layout, split=args.split, channel=args.channel, modality=args.modality
    )
    if args.max_cases:
        cases = cases[: args.max_cases]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _resolve_device(args.device)
    methods: list[Method] = []
    from .runtime.select import prepare, resolve

    for name, ckpt in zip(models, ckpts, strict=True):
        random = ckpt == "random"
        if name == "from-checkpoint" and random:
            raise ValueError("--model from-checkpoint needs a checkpoint file, not 'random'")
        arch = None if name == "from-checkpoint" else name
        model = load_model(arch, None if random else ckpt, device=device, seed=args.seed)
        label = f"{name} (random weights)" if random else f"{name} ({Path(ckpt).name})"
        runtime = resolve(args.runtime, model)
        if runtime != "torch":
            label += f" [{runtime}]"
        methods.append(Method(label, prepare(model, runtime, threads=args.threads)))
    if not args.no_baseline:
        size = methods[0].model.cfg.image_size if methods else 128
        low = methods[0].model.cfg.low_res_size if methods else 32
        methods.append(Method("random walker (no network)", RandomWalkerBaseline(size, low), "all"))
    labels = [m.name for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two methods share a name: {labels}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world, initialised = distributed_context()
    show = rank == 0
    evaluate(
        cases,
        methods,
        config,
        out,
        rank=rank,
        world=world,
        progress=(
            lambda items: tqdm(
                list(items), desc=f"cases (rank {rank}/{world})", unit="case", file=sys.stderr
            )
        )
        if show
        else None,
    )
    if initialised:
        torch.distributed.barrier()
    if rank == 0:
        results, timings = merge(out)
        rows = read_rows(results)
        summary = summary_markdown(rows, config.clicks, read_rows(timings))
        (out / "summary.md").write_text(summary)
        title = f"{args.layout}: {config.protocol} protocol, {config.simulator} clicks"
        plot = plot_curves(rows, out / "dice_vs_clicks.png", title) if rows else None
        print(summary)
        print(f"wrote {results}, {timings}, {out / 'summary.md'}" + (f", {plot}" if plot else ""))
    if initialised:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


# -- train / distill ----------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.config import load_config
    from .train.loop import Trainer

    config = load_config(args.config)
    if args.steps:
        import dataclasses

        config = dataclasses.replace(config, run=dataclasses.replace(config.run, steps=args.steps))
    resume = args.resume
    if resume == "auto":
        last = Path(config.run.out_dir) / "last.pt"
        resume = str(last) if last.exists() else None
    trainer = Trainer(config, args.command, resume=resume)
    rows = trainer.run()
    if trainer.rank == 0:
        if rows:
            speed = sorted(r["samples_per_s"] for r in rows)[len(rows) // 2]
            print(f"step {trainer.step}: loss {rows[-1]['loss']:.4f}, median {speed:.3f} samples/s")
        print(f"wrote {trainer.out / 'model.safetensors'} and checkpoints in {trainer.out}")
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from .train.experiment import run_experiment, score_checkpoint

    if args.checkpoint:
        if not args.name:
            raise ValueError("--checkpoint needs --name (the run's name in the table)")
        summary = score_checkpoint(args.checkpoint, args.out, name=args.name, note=args.note or "")
        print(summary.line())
        return 0
    if not args.config:
        raise ValueError("give a TOML config to train, or --checkpoint to score a model file")
    summary = run_experiment(args.config, args.out, name=args.name, note=args.note or "")
    print(summary.line())
    return 0


# -- demo ---------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from . import samples
    from .build import load_model
    from .data.align import labels_on_grid
    from .data.io import read_volume, write_label_map
    from .eval.clicks import CenterClicker
    from .eval.metrics import dice
    from .interactive.session import Session
    from .registry import get_spec
    from .runtime.select import prepare, resolve
    from .viewer.render import render_overlay

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sample = samples.sample(args.sample)
    names = [n.strip() for n in args.structures.split(",") if n.strip()]
    values = {name: samples.label_value(sample.label_set, name) for name in names}
    t0 = time.perf_counter()
    volume = read_volume(sample.image)
    labels = labels_on_grid(read_volume(sample.labels), volume)
    truths = {name: labels == value for name, value in values.items()}
    missing = [name for name, truth in truths.items() if not truth.any()]
    if missing:
        raise ValueError(f"structures {missing} are not labelled in sample {args.sample!r}")
    t1 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model, args.checkpoint)
    runtime = resolve(args.runtime, model)
    runner = prepare(model, runtime, threads=args.threads)
    t2 = time.perf_counter()
    print(f"scan    {sample.image.name}: {volume.describe()} (read in {1e3 * (t1 - t0):.0f} ms)")
    weights = ""
    if args.checkpoint is None:
        spec = get_spec(args.model)
        if spec.trained_on:
            seen = args.sample in spec.trained_on
            print(
                f"        {'used for' if seen else 'held out from'} training the bundled weights "
                f"(trained on: {', '.join(spec.trained_on)})"
            )
        weights = (
            " (bundled weights)"
            if spec.weights is not None
            else " (RANDOM weights: this entry ships none; pass --checkpoint)"
        )
    print(f"model   {args.model}{weights}, runtime {runtime} (ready in {1e3 * (t2 - t1):.0f} ms)")
    print(
        "clicks are placed by a simulated user at the centre of the largest error, using "
        "TotalSegmentator's labels (its predictions, not manual ground truth)"
    )
    combined = np.zeros(volume.shape, np.uint8)
    session = Session(runner, runtime="torch")
    session.set_image(volume)
    rng = np.random.default_rng(0)
    for value, (name, truth) in enumerate(truths.items(), start=1):
        session.reset()
        clicks = []
        for step in range(args.clicks):
            click = CenterClicker().next_click(session.mask, truth, rng, volume.spacing, step)
            if click is None:
                break
            result = session.add_click(click.index, click.positive)
            assert result is not None
            clicks.append((click.index, click.positive))
            t = result.timings_ms
            extra = f", encode {t['encode']:.0f} ms" if t["encode"] else ""
            print(
                f"{name:<12} click {step + 1} {'+' if click.positive else '-'} at {click.index}: "
                f"Dice {dice(session.mask, truth):.3f}  ({t['total']:.0f} ms{extra})"
            )
        mask = session.mask.copy()
        combined[mask & (combined == 0)] = value
        write_label_map(mask, volume, out / f"{name}.nii.gz")
        render_overlay(
            volume,
            mask,
            out / f"{name}.png",
            clicks=clicks,
            title=f"{name}: {len(clicks)} clicks, Dice {dice(mask, truth):.3f} vs TotalSegmentator",
        )
    write_label_map(combined, volume, out / "labels.nii.gz")
    print(
        f"wrote {out}/labels.nii.gz (values 1..{len(names)}: {', '.join(names)}), "
        f"{', '.join(f'{n}.nii.gz' for n in names)} and overlays "
        f"{', '.join(f'{n}.png' for n in names)}"
    )
    return 0


def _write_json_atomic(path: Path, data: object) -> None:
    from .files import atomic_output

    with atomic_output(path) as tmp, tmp.open("w") as f:
        json.dump(data, f, indent=2)


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    import torch
    import uvicorn

    from . import samples
    from .build import load_model
    from .runtime.select import prepare
    from .server import Limits, ServerConfig, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    token = args.token or os.environ.get("FASTSAM3D_TOKEN") or None
    if not loopback and token is None:
        print(
            f"warning: serving on {args.host} without --token: anyone who reaches this port can "
            "open images from the data folder",
            file=sys.stderr,
        )
    model = prepare(load_model(args.model, args.checkpoint), args.runtime, threads=args.threads)
    config = ServerConfig(
        data_dir=Path(args.data_dir) if args.data_dir else samples.ROOT,
        recovery_dir=Path(args.recovery_dir) if args.recovery_dir else None,
        limits=Limits(
            max_sessions=args.max_sessions,
            idle_seconds=60 * args.idle_minutes,
            max_upload_bytes=int(args.max_upload_mb * 1024**2),
            history=args.undo_depth,
            model_slots=args.model_slots,
        ),
        token=token,
        model_name=args.model + (f" ({args.checkpoint})" if args.checkpoint else ""),
        prompting=args.prompting,
        recovery_days=args.recovery_days,
    )
    app = create_app(model, config)
    if not config.niivue.is_file():
        print(f"warning: {config.niivue} missing: the web page needs `bash scripts/setup.sh`")
    print(f"fastsam3d serve: http://{args.host}:{args.port}/ (API schema: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _default_fixtures() -> str:
    return str(Path(__file__).resolve().parents[2] / "tests" / "fixtures")


DEFAULT_BENCH_MODELS = "sam-med3d,fastsam3d"
DEFAULT_BENCH_RUNTIMES = "torch,onednn,onnxruntime,openvino,openvino-bf16,onnxruntime-int8"
RUNTIME_CHOICES = (
    "auto",
    "torch",
    "onednn",
    "onnxruntime",
    "onnxruntime-int8",
    "openvino",
    "openvino-bf16",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastsam3d", description="Fast promptable 3D segmentation of CT and MRI."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model registry")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "convert",
        help="convert upstream checkpoint(s) to our format",
        description="Read one or more checkpoints (upstream training checkpoints, bare state "
        "dicts, a bare student encoder plus a full model for the prompt encoder/decoder) and "
        "write one .safetensors (or .pt) file that carries the model config.",
    )
    p.add_argument("src", nargs="+", help="input checkpoint(s); earlier files win per part")
    p.add_argument("dst", help="output .safetensors / .pt path")
    p.add_argument("--model", help="registry name (needed for 12-layer teachers)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "bench",
        help="benchmark models and runtimes (Tables 3/4), or interactive latency on a scan",
        description="models: encoder and decoder time of each model x runtime (and the "
        "student's dense/sparse x eager/SDPA attention), round-robin in one run, with FLOPs, "
        "parameters, accuracy against fp32 torch and optionally peak memory. session: first "
        "click on a newly loaded sample scan and warm clicks (uses the last --models entry and "
        "the first --runtimes entry).",
    )
    p.add_argument(
        "target", nargs="?", choices=("models", "encoders", "session", "serve"), default="models"
    )
    p.add_argument("--sessions", type=int, default=8, help="serve: concurrent users")
    p.add_argument("--seconds", type=float, default=60.0, help="serve: how long they click")
    p.add_argument(
        "--models",
        help=f"comma-separated names (default {DEFAULT_BENCH_MODELS}; session and serve: one, "
        "default the bundled fastsam3d-lite)",
    )
    p.add_argument(
        "--runtimes",
        help=f"comma-separated runtimes, those not installed are skipped (default "
        f"{DEFAULT_BENCH_RUNTIMES}; session and serve: one, default auto)",
    )
    p.add_argument("--sample", default="ct", help="session: bundled sample (ct, ct_dicom, mr, ...)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--reference",
        action="store_true",
        help="also time the eager reference path (upstream's arithmetic; slow)",
    )
    p.add_argument("--no-table4", action="store_true", help="skip the student attention variants")
    p.add_argument("--no-decoder", action="store_true", help="time encoders only")
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy check")
    p.add_argument(
        "--memory", action="store_true", help="peak memory per candidate (fresh processes)"
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=("auto", "cpu", "cuda"),
        help="cuda: the torch runtime on the GPU (flash / memory-efficient SDPA)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="parameter dtype of the torch runtime (float16 needs CUDA)",
    )
    p.add_argument("--plot", help="write a latency plot (PNG) here")
    p.add_argument("--json", help="write the full report here")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "selfcheck",
        help="reproduce upstream's reference outputs from the bundled fixtures",
        description="Rebuilds the fixture weights, writes them as an upstream training "
        "checkpoint, loads that file like a user would and compares every output with the "
        "reference outputs of the upstream code.",
    )
    p.add_argument("--fixtures", default=_default_fixtures(), help="folder of *_io_compact.pt")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=_cmd_selfcheck)

    p = sub.add_parser(
        "segment",
        help="segment a scan from clicks and write the mask on the scan's grid",
        description="Reads IMAGE (NIfTI, NRRD, MHA/MHD, or a DICOM folder), applies the clicks "
        "in the order given (each one refines the previous result, as the models were trained) "
        "and writes the mask with exactly the input's geometry. Points are voxel indices i,j,k "
        "in the file's own index order (as nibabel, ITK-SNAP and 3D Slicer show them), or "
        "millimetres with --world.",
    )
    p.add_argument("image", help="image file or DICOM folder")
    p.add_argument(
        "--checkpoint", nargs="+", help="checkpoint file(s); default: the model's bundled weights"
    )
    p.add_argument(
        "--model",
        default="fastsam3d-lite",
        help="registry name (default fastsam3d-lite, whose weights are bundled)",
    )
    p.add_argument(
        "--point",
        dest="clicks",
        type=parse_point,
        action=_ClickAction,
        const=True,
        metavar="I,J,K",
        help="positive click (repeatable)",
    )
    p.add_argument(
        "--negative",
        dest="clicks",
        type=parse_point,
        action=_ClickAction,
        const=False,
        metavar="I,J,K",
        help="negative click (repeatable)",
    )
    p.add_argument(
        "--prompts",
        help='JSON file {"world": null, "clicks": [{"point": [i,j,k], "positive": true}]}',
    )
    p.add_argument("--world", choices=("ras", "lps"), help="points are world mm in this convention")
    p.add_argument("--channel", type=int, help="for 4D images: which volume to use (0-based)")
    p.add_argument(
        "--prompting",
        choices=("auto", "newest", "all"),
        default="auto",
        help="send only the newest click or all clicks of the region (default: as the model "
        "was trained)",
    )
    p.add_argument("--out", required=True, help="output mask (.nii.gz, .nii, .nrrd, .mha)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, help="CPU threads for torch / the runtime")
    p.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIME_CHOICES,
        help="auto: fastest runtime that passed the accuracy checks (see README)",
    )
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser(
        "eval",
        help="interactive evaluation: simulated clicks, Dice per click, Table-2 style summary",
        description="Evaluate models (and a model-free random-walker baseline) on a dataset with "
        "simulated clicks. Writes OUT/results.csv (per case, structure, method, click), "
        "timings.csv, summary.md and dice_vs_clicks.png; resumes where an earlier run stopped. "
        "Run under `torchrun --nproc_per_node N -m fastsam3d.cli eval ...` to split the cases "
        "over N processes.",
    )
    p.add_argument("data", help="dataset folder, a .csv/.json manifest, or sample names (ct,mr)")
    p.add_argument(
        "--layout",
        required=True,
        choices=("amos", "nnunet", "totalseg", "brats", "manifest", "samples"),
        help="samples: DATA is a list of bundled samples, e.g. ct,mr",
    )
    p.add_argument(
        "--model",
        action="append",
        help="registry name, or from-checkpoint (our checkpoints carry their architecture); "
        "repeatable",
    )
    p.add_argument("--checkpoint", action="append", help="checkpoint per --model, or 'random'")
    p.add_argument("--no-baseline", action="store_true", help="skip the random-walker baseline")
    p.add_argument("--clicks", type=_parse_clicks, default=(1, 3, 5, 10), help="e.g. 1,3,5,10")
    p.add_argument("--protocol", choices=("paper", "realistic"), default="realistic")
    p.add_argument("--simulator", choices=("upstream", "center", "random"), default="center")
    p.add_argument(
        "--logit-quirk",
        action="store_true",
        help="upstream simulator: read the prediction as logit > 0.5, as upstream did",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", help="amos/nnunet: training|validation; totalseg: meta.csv split")
    p.add_argument("--channel", type=int, help="channel of multi-channel images")
    p.add_argument("--modality", default="t1ce", help="brats: t1, t1ce, t2 or flair")
    p.add_argument("--structures", help="only these structure names, comma-separated")
    p.add_argument("--max-cases", type=int, help="only the first N cases")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, help="CPU threads per process")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=RUNTIME_CHOICES,
        help="how models run (default torch: the reference numbers)",
    )
    p.set_defaults(func=_cmd_eval)

    for name, text in (
        ("train", "interactive training / fine-tuning from a TOML config ([model], [interactive])"),
        (
            "distill",
            "layer-wise then logit-level distillation from a TOML config ([teacher], [student])",
        ),
    ):
        p = sub.add_parser(name, help=text, description=text + ". See configs/*.toml.")
        p.add_argument("--config", required=True, help="TOML file")
        p.add_argument(
            "--resume", help="checkpoint to continue from, or 'auto' (OUT/last.pt if present)"
        )
        p.add_argument("--steps", type=int, help="override [run] steps")
        p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "experiment",
        help="train a config, then score it (training-CT and held-out Dice, image dependence)",
        description="Train CONFIG (resuming from its last.pt), evaluate it on structures of the "
        "training CT and on the held-out CT at 1/3/5/10 clicks (realistic protocol, centre "
        "clicks, seed 0), run the image-dependence probe, and record config, summary and one "
        "line in OUT/README.md.",
    )
    p.add_argument("config", nargs="?", help="TOML training config")
    p.add_argument(
        "--checkpoint", help="score this model file instead of training (baselines, stages)"
    )
    p.add_argument("--name", help="run name (default: the config's file name)")
    p.add_argument("--note", help="what the run tests (goes into the table)")
    p.add_argument("--out", default="docs/eval/experiments", help="records folder")
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser(
        "demo",
        help="segment structures of a bundled scan with the bundled model; writes masks + PNGs",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument(
        "--sample",
        default="ct_dicom",
        help="bundled sample: ct_dicom (default; held out from training), ct, ct_sm, mr",
    )
    p.add_argument(
        "--structures", default="liver,spleen,stomach", help="TotalSegmentator structure names"
    )
    p.add_argument("--clicks", type=int, default=3, help="clicks per structure")
    p.add_argument("--model", default="fastsam3d-lite")
    p.add_argument("--checkpoint", nargs="+", help="weights (default: the bundled ones)")
    p.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "serve",
        help="local web viewer and HTTP API for click-to-segment sessions",
        description="Serves the NiiVue web page at http://HOST:PORT/ and the HTTP API (schema at "
        "/docs). Images open from --data-dir (default: the bundled sample scans) or by upload. "
        "Binds to loopback unless --host says otherwise; --token protects the API.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="fastsam3d-lite")
    p.add_argument("--checkpoint", help="weights (default: the model's bundled ones)")
    p.add_argument("--runtime", default="torch", choices=RUNTIME_CHOICES)
    p.add_argument("--prompting", default="auto", choices=("auto", "newest", "all"))
    p.add_argument("--data-dir", help="folder images may be opened from (default: bundled samples)")
    p.add_argument(
        "--recovery-dir",
        default=str(Path.home() / ".cache" / "fastsam3d" / "recovery"),
        help="autosave of every session's label map ('' to turn off)",
    )
    p.add_argument(
        "--recovery-days", type=float, default=14.0, help="delete older autosaves at start"
    )
    p.add_argument("--token", help="require this access token (default: $FASTSAM3D_TOKEN if set)")
    p.add_argument("--max-sessions", type=int, default=16)
    p.add_argument("--idle-minutes", type=float, default=30.0)
    p.add_argument("--max-upload-mb", type=float, default=512.0)
    p.add_argument("--undo-depth", type=int, default=50, help="undoable clicks per object")
    p.add_argument(
        "--model-slots", type=int, default=1, help="model calls at a time (others queue)"
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("samples", help="the bundled sample scans: list, verify, fetch")
    p.add_argument("action", choices=("list", "verify", "fetch"))
    p.add_argument("dest", nargs="?", help="fetch: destination folder")
    p.add_argument("--all", action="store_true", help="fetch: the whole reference folder")
    p.set_defaults(func=_cmd_samples)
    return parser


_POINT_FLAGS = ("--point", "--negative")
_NUMBER_LIST = re.compile(r"^-[\d.]")


def _join_negative_points(argv: Sequence[str]) -> list[str]:
    """``--point -12.5,3,4`` -> ``--point=-12.5,3,4`` (argparse would take it for an option)."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] in _POINT_FLAGS and _NUMBER_LIST.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastsam3d`` console script."""
    parser = build_parser()
    args = parser.parse_args(_join_negative_points(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from .checkpoint import CheckpointError

    try:
        code: int = args.func(args)
    except (ValueError, CheckpointError, OSError, RuntimeError) as err:
        print(f"fastsam3d {args.command}: error: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
