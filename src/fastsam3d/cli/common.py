"""What the commands share: parent parsers with one meaning and one default for ``--model``,
``--checkpoint``, ``--runtime``, ``--device`` and ``--threads``, point parsing, and the steps
every model-running command takes (threads, device, weights, runtime)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..contract import PromptableModel
from ..distributed import DEVICE_CHOICES, resolve_device
from ..errors import InputError
from ..files import atomic_output
from ..modeling.sam3d import Sam3D
from ..registry import DEFAULT_MODEL, list_models
from ..runtime.select import CHOICES as RUNTIME_CHOICES

RANDOM = "random"
"""``--checkpoint random``: random weights, only when asked for (tests, benchmarks)."""
FROM_CHECKPOINT = "from-checkpoint"
"""``--model`` value: build the architecture the checkpoint file names."""


def model_parent(*, repeatable: bool = False, with_2d: bool = False) -> argparse.ArgumentParser:
    """``--model NAME`` and ``--checkpoint FILE [FILE ...] | random``.

    ``repeatable``: several models (``eval``): each ``--model`` pairs with the ``--checkpoint``
    of the same position. Otherwise one model, default the bundled one. ``with_2d``: the 2D
    baselines' names (:data:`~fastsam3d.sam2d.MODELS_2D`) are choices too (``eval``).
    """
    from ..sam2d.registry import MODELS_2D

    parent = argparse.ArgumentParser(add_help=False)
    names = [*list_models(), FROM_CHECKPOINT]
    names += list(MODELS_2D) if with_2d else []
    parent.add_argument(
        "--model",
        action="append" if repeatable else "store",
        default=None if repeatable else DEFAULT_MODEL,
        choices=names,
        metavar="NAME",
        help="registry name (fastsam3d models); from-checkpoint: the architecture the "
        "checkpoint file names (for weights trained with changed model options)"
        + ("; repeatable" if repeatable else "")
        + (f"; 2D baselines, slice by slice: {', '.join(MODELS_2D)}" if with_2d else "")
        + f" (default {DEFAULT_MODEL}, whose weights are bundled)" * (not repeatable),
    )
    parent.add_argument(
        "--checkpoint",
        action="append",
        nargs="+",
        metavar="FILE",
        help="weights: one file, or several combined part by part (a bare student encoder "
        "then a full model); 'random' for random weights; default: the model's bundled weights"
        + ("; one per --model" if repeatable else ""),
    )
    return parent


def compute_parent(*, runtime: bool = True, device: bool = True) -> argparse.ArgumentParser:
    """``--runtime`` (default ``auto``), ``--device`` (default ``auto``), ``--threads``."""
    parent = argparse.ArgumentParser(add_help=False)
    if runtime:
        parent.add_argument(
            "--runtime",
            default="auto",
            choices=RUNTIME_CHOICES,
            help="how the model runs; auto: the fastest runtime here that passed the accuracy "
            "checks (torch on a GPU)",
        )
    if device:
        parent.add_argument(
            "--device",
            default="auto",
            choices=DEVICE_CHOICES,
            help="auto: CUDA when a GPU is visible, else the CPU",
        )
    parent.add_argument(
        "--threads", type=int, help="CPU threads for torch and the runtime (default: all cores)"
    )
    return parent


def single_checkpoint(args: argparse.Namespace) -> list[str] | None:
    """The one ``--checkpoint`` of a single-model command (``None``: bundled weights)."""
    given = args.checkpoint or []
    if len(given) > 1:
        raise InputError(
            "--checkpoint given more than once; list several files after one --checkpoint"
        )
    return given[0] if given else None


def apply_threads(args: argparse.Namespace) -> None:
    """``--threads`` for torch (absent: torch's default)."""
    if getattr(args, "threads", None):
        import torch

        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def load_for_command(
    name: str | None, files: list[str] | None, device: str, seed: int = 0
) -> tuple[Any, str]:
    """The model and a label for it: ``files`` ``None`` = bundled weights, ``["random"]`` =
    random weights from ``seed``; ``name`` ``None`` or ``"from-checkpoint"``: the architecture
    the checkpoint file names."""
    from ..build import load_model

    if name == FROM_CHECKPOINT:
        name = None
    if name is None and files is None:
        raise InputError("--model from-checkpoint needs --checkpoint FILE")
    if files is not None and RANDOM in files:
        if files != [RANDOM]:
            raise InputError(f"--checkpoint random stands alone, got {files}")
        if name is None:
            raise InputError("--model from-checkpoint needs a checkpoint file, not 'random'")
        model = load_model(name, random_weights=True, device=resolve_device(device), seed=seed)
        return model, f"{name} (random weights)"
    checkpoint = None if files is None else files[0] if len(files) == 1 else files
    model = load_model(name, checkpoint, device=resolve_device(device), seed=seed)
    label = name or FROM_CHECKPOINT
    if files is not None:
        label += f" ({', '.join(Path(f).name for f in files)})"
    return model, label


def load_2d_for_command(name: str, files: list[str], args: argparse.Namespace) -> tuple[Any, str]:
    """A 2D baseline and a label for it: ``files`` ``["random"]`` = random weights from
    ``--seed``, else one checkpoint file. 2D models run on torch only (``--runtime`` ``auto``
    means torch)."""
    from ..sam2d import load_model_2d

    if getattr(args, "runtime", "auto") not in ("auto", "torch"):
        raise InputError(
            f"2D model {name!r} runs on torch only; drop --runtime {args.runtime} "
            "or use --runtime torch"
        )
    if len(files) != 1:
        raise InputError(f"2D model {name!r} takes one checkpoint file or 'random', got {files}")
    device = resolve_device(args.device)
    if files == [RANDOM]:
        model = load_model_2d(name, random_weights=True, device=device, seed=args.seed)
        return model, f"{name} (random weights)"
    model = load_model_2d(name, files[0], device=device)
    return model, f"{name} ({Path(files[0]).name})"


def prepared(model: Sam3D, args: argparse.Namespace) -> tuple[PromptableModel, str]:
    """``model`` on ``--runtime`` (``auto`` resolved) and the runtime's name."""
    from ..runtime.select import prepare, resolve

    runtime = resolve(args.runtime, model)
    return prepare(model, runtime, threads=args.threads), runtime


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


def write_json_atomic(path: Path, data: object) -> None:
    """``data`` as indented JSON at ``path``, written atomically."""
    with atomic_output(path) as tmp, tmp.open("w") as f:
        json.dump(data, f, indent=2)
