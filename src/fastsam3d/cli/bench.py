"""``fastsam3d bench``: models x runtimes (Tables 3/4), an interactive session on a scan, or a
load test of ``fastsam3d serve``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import InputError
from ..registry import DEFAULT_MODEL
from ..runtime.select import CHOICES as RUNTIME_CHOICES
from ..runtime.select import available
from .common import apply_threads, compute_parent, write_json_atomic

DEFAULT_BENCH_MODELS = "sam-med3d,fastsam3d"
DEFAULT_BENCH_RUNTIMES = "torch,onednn,onnxruntime,openvino,openvino-bf16,onnxruntime-int8"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        parents=[compute_parent(runtime=False)],
        help="benchmark models and runtimes (Tables 3/4), or interactive latency on a scan",
        description="models: encoder and decoder time of each model x runtime (and the "
        "student's dense/sparse x eager/SDPA attention), round-robin in one run, with FLOPs, "
        "parameters, accuracy against fp32 torch and optionally peak memory. session: first "
        "click on a newly loaded sample scan and warm clicks (uses the last --models entry and "
        "the first --runtimes entry). serve: concurrent simulated users of fastsam3d serve.",
    )
    p.add_argument(
        "target", nargs="?", choices=("models", "encoders", "session", "serve"), default="models"
    )
    p.add_argument("--sessions", type=int, default=8, help="serve: concurrent users")
    p.add_argument("--seconds", type=float, default=60.0, help="serve: how long they click")
    p.add_argument(
        "--models",
        help=f"comma-separated names (default {DEFAULT_BENCH_MODELS}; session and serve: one, "
        f"default the bundled {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--runtimes",
        help=f"comma-separated runtimes, those not installed are skipped (default "
        f"{DEFAULT_BENCH_RUNTIMES}; session and serve: one, default auto)",
    )
    p.add_argument("--sample", default="ct", help="session: bundled sample (ct, ct_dicom, mr, ...)")
    p.add_argument(
        "--slices",
        type=int,
        default=2,
        help="models, 2D baselines: slices encoded per round (scaled x128 for a volume)",
    )
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="models: repeat a sample taken under foreign CPU load up to this often (0: keep "
        "every sample, with its load recorded, on a machine that is never idle)",
    )
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
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="parameter dtype of the torch runtime (float16 needs CUDA)",
    )
    p.add_argument("--plot", help="write a latency plot (PNG) here")
    p.add_argument("--json", help="write the full report here")
    p.set_defaults(func=run)


def _bar(desc: str) -> Callable[[Iterable[Any]], Iterable[Any]]:
    return lambda steps: tqdm(steps, desc=desc, unit="run", file=sys.stderr)


def _runtimes(args: argparse.Namespace, interactive: bool) -> list[str]:
    """The ``--runtimes`` that exist and are installed here (the others are reported)."""
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for runtime in runtimes:
        if runtime not in RUNTIME_CHOICES or (runtime == "auto" and not interactive):
            raise InputError(
                f"--runtimes: unknown runtime {runtime!r}; choose from {RUNTIME_CHOICES[1:]}"
            )
    missing = [r for r in runtimes if not available(r)]
    if missing:
        print(f"not installed here, skipped: {', '.join(missing)}")
    return [r for r in runtimes if r not in missing]


def _threads(args: argparse.Namespace) -> int:
    import torch

    return int(args.threads or torch.get_num_threads())


def run(args: argparse.Namespace) -> int:
    interactive = args.target in ("session", "serve")
    if args.runtimes is None:  # session, serve: what a user of the bundled model gets
        args.runtimes = "auto" if interactive else DEFAULT_BENCH_RUNTIMES
    if args.models is None:
        args.models = DEFAULT_MODEL if interactive else DEFAULT_BENCH_MODELS
    runtimes = _runtimes(args, interactive)
    apply_threads(args)
    if args.target == "serve":
        report = _serve(args, runtimes)
    elif args.target == "session":
        report = _session(args, runtimes)
    else:
        report = _models(args, runtimes)
    if args.json:
        write_json_atomic(Path(args.json), report)
        print(f"wrote {args.json}")
    return 0


def _serve(args: argparse.Namespace, runtimes: list[str]) -> dict[str, Any]:
    from ..bench.encoders import machine_info
    from ..bench.serve_load import load_markdown, plot_load, run_load_test

    model_name = args.models.split(",")[-1].strip()
    with tqdm(total=args.seconds, desc="load test", unit="s", file=sys.stderr) as progress:

        def advance(elapsed: float) -> None:
            progress.update(elapsed - progress.n)

        report = run_load_test(
            sessions=args.sessions,
            seconds=args.seconds,
            sample=args.sample,
            model=model_name,
            threads=_threads(args),
            progress=advance,
            runtime=runtimes[0] if runtimes else "torch",
        )
    machine = machine_info(_threads(args))
    report["machine"] = machine
    print(load_markdown(report))
    print(f"machine: {machine['cpu']}, {machine['logical_cpus']} cores, torch {machine['torch']}")
    if args.plot:
        print(f"wrote {plot_load(report, args.plot)}")
    for problem in report["errors"][:5] + report["crosstalk"][:5]:
        print(f"problem: {problem}", file=sys.stderr)
    return report


def _session(args: argparse.Namespace, runtimes: list[str]) -> dict[str, Any]:
    from ..bench.session import benchmark_session, session_markdown

    report = benchmark_session(
        sample_name=args.sample,
        model_name=args.models.split(",")[-1].strip(),
        runtime=runtimes[0],
        rounds=args.rounds,
        threads=_threads(args),
        progress=_bar("session rounds"),
    )
    print(session_markdown(report))
    return report


def _models(args: argparse.Namespace, runtimes: list[str]) -> dict[str, Any]:
    from ..bench.encoders import (
        Candidate,
        benchmark_encoders,
        default_candidates,
        markdown_table,
        peak_memory_mb,
        plot_latency,
    )
    from ..distributed import resolve_device
    from ..sam2d.registry import MODELS_2D

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if any(n in MODELS_2D for n in names):
        return _table3(args, names, runtimes)
    device, dtype = str(resolve_device(args.device)), args.dtype
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
        threads=_threads(args),
        progress=_bar("round-robin"),
        decoder=not args.no_decoder,
        accuracy=not args.no_accuracy,
        max_retries=args.max_retries,
    )
    if args.memory:
        for c in tqdm(candidates, desc="peak memory (fresh processes)", file=sys.stderr):
            report["results"][c.label]["peak_memory_mb"] = peak_memory_mb(c, _threads(args))
    print(markdown_table(report))
    if args.plot:
        print(f"wrote {plot_latency(report, args.plot)}")
    return report


def _table3(args: argparse.Namespace, names: list[str], runtimes: list[str]) -> dict[str, Any]:
    """Table 3 with 2D rows (torch only; the other runtimes time the 3D rows)."""
    from ..bench.encoders import Candidate, peak_memory_mb
    from ..bench.table3 import Candidate2D, benchmark_table3, markdown_table3, peak_memory_mb_2d
    from ..distributed import resolve_device
    from ..sam2d.registry import MODELS_2D

    device = str(resolve_device(args.device))
    if args.slices < 1:
        raise InputError(f"--slices must be at least 1, got {args.slices}")
    if device != "cpu":
        runtimes = ["torch"]
    if [r for r in runtimes if r != "torch"]:
        print("2D baselines run the torch runtime only; other --runtimes time the 3D rows only")
    names_2d = [n for n in names if n in MODELS_2D]
    candidates = [
        Candidate(n, "sdpa", r, False, device, args.dtype)
        for n in names
        if n not in MODELS_2D
        for r in runtimes
    ]
    candidates_2d = [Candidate2D(n, args.slices, device) for n in names_2d]
    report = benchmark_table3(
        candidates,
        candidates_2d,
        rounds=args.rounds,
        warmup=args.warmup,
        threads=_threads(args),
        progress=_bar("round-robin"),
        accuracy=not args.no_accuracy,
        max_retries=args.max_retries,
    )
    if args.memory:
        rows = report["results"]
        for c in tqdm(candidates, desc="peak memory 3D (fresh processes)", file=sys.stderr):
            rows[c.label]["peak_memory_mb"] = peak_memory_mb(c, _threads(args))
        for c2 in tqdm(candidates_2d, desc="peak memory 2D (fresh processes)", file=sys.stderr):
            rows[c2.label]["peak_memory_mb"] = peak_memory_mb_2d(c2, _threads(args))
    print(markdown_table3(report))
    return report
