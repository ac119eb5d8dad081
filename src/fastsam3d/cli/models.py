"""``fastsam3d models`` (the registry) and ``fastsam3d convert`` (upstream checkpoints to ours)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..build import build_meta, check_state_dict, matching_models
from ..checkpoint import read_checkpoint, save_native
from ..errors import InputError
from ..registry import MODELS, get_spec


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list the model registry")
    p.set_defaults(func=run_models)

    p = sub.add_parser(
        "convert",
        help="convert upstream checkpoint(s) to our format",
        description="Read one or more checkpoints (upstream training checkpoints, bare state "
        "dicts, a bare student encoder plus a full model for the prompt encoder/decoder) and "
        "write one .safetensors (or .pt) file that carries the model config.",
    )
    p.add_argument("src", nargs="+", help="input checkpoint(s); earlier files win per part")
    p.add_argument("dst", help="output .safetensors / .pt path")
    p.add_argument(
        "--model", choices=sorted(MODELS), help="registry name (needed for 12-layer teachers)"
    )
    p.set_defaults(func=run_convert)


def run_models(args: argparse.Namespace) -> int:
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


def run_convert(args: argparse.Namespace) -> int:
    dst = Path(args.dst)
    for src in args.src:
        if Path(src).resolve() == dst.resolve():
            raise InputError(f"output {dst} is also an input; choose another output path")
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
            raise InputError(
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
