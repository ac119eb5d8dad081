"""Command line: ``fastsam3d <command>``. Thin wrappers over the Python API.

Heavy imports happen inside the handlers so ``fastsam3d --help`` is instant. Every handler
returns an exit code; user errors print one clear line to stderr and return 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


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

    from .bench.encoders import Candidate, benchmark_encoders, markdown_table
    from .runtime.onednn import available

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for runtime in runtimes:
        if runtime not in ("torch", "onednn"):
            raise ValueError(f"--runtimes: unknown runtime {runtime!r}; choose torch, onednn")
    if "onednn" in runtimes and not available():
        print("oneDNN linear kernels unavailable in this torch: skipping runtime onednn")
        runtimes.remove("onednn")
    candidates = [Candidate(n, "sdpa", r) for r in runtimes for n in names]
    if args.reference:
        candidates += [Candidate(n, "eager") for n in names]
    report = benchmark_encoders(
        candidates,
        rounds=args.rounds,
        warmup=args.warmup,
        threads=args.threads,
        progress=lambda steps: tqdm(steps, desc="encoder rounds", unit="run", file=sys.stderr),
    )
    print(markdown_table(report))
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


def _write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _default_fixtures() -> str:
    return str(Path(__file__).resolve().parents[2] / "tests" / "fixtures")


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

    p = sub.add_parser("bench", help="time the image encoders (median of round-robin runs)")
    p.add_argument("--models", default="sam-med3d,fastsam3d", help="comma-separated names")
    p.add_argument(
        "--runtimes",
        default="torch,onednn",
        help="torch (plain model) and/or onednn (pre-packed oneDNN linears, fp32)",
    )
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--reference",
        action="store_true",
        help="also time the eager reference path (upstream's arithmetic; slow)",
    )
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastsam3d`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from .checkpoint import CheckpointError

    try:
        code: int = args.func(args)
    except (ValueError, CheckpointError, OSError) as err:
        print(f"fastsam3d {args.command}: error: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
