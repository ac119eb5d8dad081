"""``fastsam3d eval``: models and a model-free baseline with simulated clicks; Dice per click,
a Table-2 style summary and a plot. Under ``torchrun`` the cases are split over the processes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..eval.clicks import EVAL_SIMULATORS
from ..eval.datasets import LAYOUTS
from ..files import atomic_output
from .common import (
    apply_threads,
    compute_parent,
    load_2d_for_command,
    load_for_command,
    model_parent,
    prepared,
)

PROTOCOL_HELP = (
    "3D models: paper = upstream's ground-truth-centred crop, realistic = a session whose "
    "region follows the clicks. 2D models (slice by slice): paper = n clicks on every slice "
    "containing the object, Dice@n after n clicks per slice (results.csv total_clicks: n x "
    "those slices); realistic = clicks one at a time on the slice with the most wrong voxels, "
    "Dice@n after n clicks in total"
)


def parse_clicks(text: str) -> tuple[int, ...]:
    """``"1,3,5,10"`` -> sorted distinct click counts (each at least 1)."""
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        values = ()
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected click counts like '1,3,5,10', got {text!r}")
    return values


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        parents=[model_parent(repeatable=True, with_2d=True), compute_parent()],
        help="interactive evaluation: simulated clicks, Dice per click, Table-2 style summary",
        description="Evaluate models (and a model-free random-walker baseline) on a dataset with "
        "simulated clicks. Writes OUT/results.csv (per case, structure, method, click), "
        "timings.csv, summary.md and dice_vs_clicks.png; resumes where an earlier run stopped. "
        "Run under `torchrun --nproc_per_node N -m fastsam3d.cli eval ...` to split the cases "
        "over N processes. Use --runtime torch for the fp32 reference numbers. The 2D "
        "baselines (sam-vit-b, medsam, mobilesam, tinysam, sam-med2d) run slice by slice "
        "(torch only; --slice-axis, --slice-modality, --ct-window); see --protocol.",
    )
    p.add_argument("data", help="dataset folder, a .csv/.json manifest, or sample names (ct,mr)")
    p.add_argument(
        "--layout",
        required=True,
        choices=LAYOUTS,
        help="samples: DATA is a list of bundled samples, e.g. ct,mr",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the random-walker baseline")
    p.add_argument("--clicks", type=parse_clicks, default=(1, 3, 5, 10), help="e.g. 1,3,5,10")
    p.add_argument(
        "--protocol", choices=("paper", "realistic"), default="realistic", help=PROTOCOL_HELP
    )
    p.add_argument("--simulator", choices=EVAL_SIMULATORS, default="center")
    p.add_argument(
        "--logit-quirk",
        action="store_true",
        help="upstream simulator: read the prediction as logit > 0.5, as upstream did",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-carry-mask",
        action="store_true",
        help="realistic protocol: start each new region from an all-zero mask prompt instead "
        "of the mask it covers (as sessions did before regions carried the mask)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", help="amos/nnunet: training|validation; totalseg: meta.csv split")
    p.add_argument("--channel", type=int, help="channel of multi-channel images")
    p.add_argument("--modality", default="t1ce", help="brats: t1, t1ce, t2 or flair")
    p.add_argument("--structures", help="only these structure names, comma-separated")
    p.add_argument("--max-cases", type=int, help="only the first N cases")
    slices = p.add_argument_group("2D models (slice by slice)")
    slices.add_argument(
        "--slice-axis",
        type=int,
        choices=(0, 1, 2),
        default=2,
        help="voxel axis the slices are taken along (default 2: axial for RAS/LPS scans)",
    )
    slices.add_argument(
        "--slice-modality",
        choices=("auto", "ct", "mr"),
        default="auto",
        help="8-bit mapping: ct = --ct-window, mr = percentiles of the voxels > 0; auto = the "
        "DICOM modality, else CT when the minimum is below -500",
    )
    slices.add_argument(
        "--ct-window",
        type=parse_window,
        default=(40.0, 400.0),
        metavar="LEVEL,WIDTH",
        help="CT window in HU (default 40,400: soft tissue); write a negative level with '=', "
        "e.g. --ct-window=-600,1500 for lung",
    )
    p.set_defaults(func=run)


def parse_window(text: str) -> tuple[float, float]:
    """``"40,400"`` -> (level, width) with a positive width."""
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        level, width = 0.0, 0.0
    if not width > 0:
        raise argparse.ArgumentTypeError(
            f"expected a CT window LEVEL,WIDTH in HU with WIDTH > 0, like '40,400', got {text!r}"
        )
    return level, width


def _methods(args: argparse.Namespace) -> list:  # type: ignore[type-arg]
    """One :class:`~fastsam3d.eval.protocols.Method` per 3D ``--model``, a
    :class:`~fastsam3d.eval.slicewise.SliceMethod` per 2D one, and the baseline."""
    from ..eval.baseline import RandomWalkerBaseline
    from ..eval.protocols import Method
    from ..eval.slicewise import SliceMethod
    from ..interactive.slices import SliceIntensity
    from ..sam2d.registry import MODELS_2D

    models, ckpts = args.model or [], args.checkpoint or []
    if len(models) != len(ckpts):
        raise InputError(
            f"give one --checkpoint per --model ({len(models)} models, {len(ckpts)} checkpoints); "
            "use --checkpoint random for random weights"
        )
    if not models and args.no_baseline:
        raise InputError("nothing to evaluate: give --model/--checkpoint or keep the baseline")
    methods: list[Method | SliceMethod] = []
    for name, files in zip(models, ckpts, strict=True):
        if name in MODELS_2D:
            model_2d, label = load_2d_for_command(name, files, args)
            intensity = SliceIntensity(args.slice_modality, window=args.ct_window)
            label += _slice_label(args)
            methods.append(SliceMethod(label, model_2d, args.slice_axis, intensity))
            continue
        model, label = load_for_command(name, files, args.device, seed=args.seed)
        runner, runtime = prepared(model, args)
        if runtime != "torch":
            label += f" [{runtime}]"
        methods.append(Method(label, runner))
    if not args.no_baseline:
        first = next((m.model.cfg for m in methods if isinstance(m, Method)), None)
        size = first.image_size if first is not None else 128
        low = first.low_res_size if first is not None else 32
        methods.append(Method("random walker (no network)", RandomWalkerBaseline(size, low), "all"))
    labels = [m.name for m in methods]
    if len(set(labels)) != len(labels):
        raise InputError(f"two methods share a name: {labels}")
    return methods


def _slice_label(args: argparse.Namespace) -> str:
    """What a 2D method's label adds when its slicing differs from the defaults, so reports of
    different settings never share a name: e.g. ``" [axis 0, ct -600,1500]"``."""
    parts = [f"axis {args.slice_axis}"] if args.slice_axis != 2 else []
    if args.slice_modality != "auto":
        parts.append(args.slice_modality)
    if tuple(args.ct_window) != (40.0, 400.0):
        parts.append("window {:g},{:g}".format(*args.ct_window))
    return f" [{', '.join(parts)}]" if parts else ""


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..eval.datasets import load_cases
    from ..eval.report import (
        plot_curves,
        plot_total_clicks,
        read_rows,
        summary_markdown,
        total_clicks_differ,
    )
    from ..eval.runner import EvalConfig, distributed_context, evaluate, merge

    config = EvalConfig(
        protocol=args.protocol,
        simulator=args.simulator,
        clicks=args.clicks,
        seed=args.seed,
        logit_quirk=args.logit_quirk,
        carry_mask=not args.no_carry_mask,
        structures=tuple(s.strip() for s in args.structures.split(","))
        if args.structures
        else None,
    )
    cases = load_cases(
        args.data, args.layout, split=args.split, channel=args.channel, modality=args.modality
    )
    if args.max_cases:
        cases = cases[: args.max_cases]
    apply_threads(args)
    methods = _methods(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world, initialised = distributed_context()
    progress = (
        (lambda items: tqdm(list(items), desc=f"cases (rank {rank}/{world})", file=sys.stderr))
        if rank == 0
        else None
    )
    evaluate(cases, methods, config, out, rank=rank, world=world, progress=progress)
    if initialised:
        torch.distributed.barrier()
    if rank == 0:
        results, timings = merge(out)
        rows = read_rows(results)
        summary = summary_markdown(rows, config.clicks, read_rows(timings))
        with atomic_output(out / "summary.md") as tmp:
            tmp.write_text(summary)
        title = f"{args.layout}: {config.protocol} protocol, {config.simulator} clicks"
        plot = plot_curves(rows, out / "dice_vs_clicks.png", title) if rows else None
        plots = [plot] if plot else []
        if total_clicks_differ(rows):
            plots.append(plot_total_clicks(rows, out / "dice_vs_total_clicks.png", title))
        print(summary)
        print(
            f"wrote {results}, {timings}, {out / 'summary.md'}" + "".join(f", {p}" for p in plots)
        )
    if initialised:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
