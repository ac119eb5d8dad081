"""Reading checkpoints safely, in every layout upstream published, and writing our own format.

Accepted inputs (each may carry a ``module.`` prefix from DistributedDataParallel):

- upstream training checkpoints: a dict with ``model_state_dict`` plus ``args``
  (an :class:`argparse.Namespace`), optimizer / scheduler state, losses and dices;
- a bare full-model state dict (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``);
- a bare image-encoder state dict without prefix (``pos_embed``, ``patch_embed.*``, ``blocks.*``,
  ``neck.*``), e.g. FastSAM3D's distilled student; combine it with a second file that supplies the
  prompt encoder and mask decoder;
- our native format (``.safetensors`` with the model config in its metadata, or a ``.pt`` dict
  with ``format == "fastsam3d"``).

``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` and an explicit allow-list
of the few non-tensor objects upstream files contain (:data:`ALLOWED_GLOBALS`). A file that needs
anything else is refused with :class:`UnsafeCheckpointError`; nothing in it is executed.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .errors import InputError
from .files import atomic_output

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
"""Top-level components of a full model state dict."""

NATIVE_FORMAT = "fastsam3d"
NATIVE_VERSION = 1

_ENCODER_ROOTS = ("pos_embed", "patch_embed.", "blocks.", "neck.")
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")

_np_core: Any = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core

ALLOWED_GLOBALS: list[Any] = [
    argparse.Namespace,  # upstream's ``args``
    collections.Counter,  # MultiStepLR milestones
    np.dtype,  # numpy scalars in ``dices`` / ``best_dice``
    np.ndarray,
    (_np_core.multiarray.scalar, "numpy.core.multiarray.scalar"),  # files written by numpy 1.x
    (_np_core.multiarray.scalar, "numpy._core.multiarray.scalar"),
    (_np_core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (_np_core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
    *(type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"),  # numpy>=1.25 dtype classes
]
"""Non-tensor objects a checkpoint may contain: plain data containers only (no callables)."""


class CheckpointError(InputError):
    """A checkpoint file cannot be used; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs pickled objects outside :data:`ALLOWED_GLOBALS`; it was not loaded."""


@dataclass
class LoadReport:
    """What :func:`read_checkpoint` found and did.

    Attributes:
        files: ``(path, detected format, parts taken)`` per input file.
        skipped: keys present in a later file for a part an earlier file already supplied.
        ignored_entries: non-weight entries of training checkpoints (``args``, optimizer ...).
        stripped_prefix: whether a ``module.`` prefix was removed.
        model_name / model_config: set for native checkpoints.
    """

    files: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored_entries: list[str] = field(default_factory=list)
    stripped_prefix: bool = False
    model_name: str | None = None
    model_config: ModelConfig | None = None

    def summary(self) -> str:
        lines = [
            f"{path}: {fmt}, parts {', '.join(parts) or 'none'}" for path, fmt, parts in self.files
        ]
        if self.stripped_prefix:
            lines.append("removed 'module.' key prefix")
        if self.ignored_entries:
            lines.append(
                f"ignored non-weight entries: {', '.join(sorted(set(self.ignored_entries)))}"
            )
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} keys already supplied by an earlier file")
        return "\n".join(lines)


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_globals(path, err)
        if refused:
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it needs pickled objects outside the allow-list "
                f"{refused}. Loading them could run arbitrary code, so nothing was executed. "
                "If you trust the file, re-save only its tensors (a state dict) and load that."
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_reason(err)})"
        ) from None
    except Exception as err:  # torch raises many types for damaged files (KeyError on bad opcodes)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_reason(err)})"
        ) from None


def _refused_globals(path: Path, err: BaseException) -> list[str]:
    """Names of pickled globals the file needs that the allow-list does not grant."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) files cannot be scanned: read torch's message
        names = re.findall(r"GLOBAL ([\w.]+)", str(err))
    allowed = _allowed_names()
    return [n for n in dict.fromkeys(names) if n not in allowed]


def _allowed_names() -> set[str]:
    names = set()
    for entry in ALLOWED_GLOBALS:
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def _reason(err: BaseException) -> str:
    """The informative line of a loading error (torch's weights_only errors are long)."""
    text = str(err).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
        return " ".join(detail.split()) or type(err).__name__
    return text.splitlines()[0] if text else type(err).__name__


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (not iterable)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def _split_file(path: Path, report: LoadReport) -> tuple[str, dict[str, torch.Tensor]]:
    """Read one file -> (format name, full-model-keyed state dict)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        tensors, meta = _load_safetensors(path)
        if meta.get("format") == NATIVE_FORMAT:
            _read_native_meta(path, meta.get("model_name"), meta.get("model_config"), report)
            return "fastsam3d native (safetensors)", tensors
        fmt, state = _classify_state_dict(path, tensors, report)
        return f"{fmt} (safetensors)", state
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a dict of tensors or a training checkpoint dict, "
            f"got {type(obj).__name__}"
        )
    if obj.get("format") == NATIVE_FORMAT:
        _read_native_meta(path, obj.get("model_name"), obj.get("model_config"), report)
        return "fastsam3d native (.pt)", _tensor_dict(path, obj.get("state_dict"))
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            report.ignored_entries.extend(k for k in obj if k != key)
            fmt, state = _classify_state_dict(path, _tensor_dict(path, obj[key]), report)
            return f"training checkpoint['{key}'] with {fmt}", state
    return _classify_state_dict(path, _tensor_dict(path, obj), report)


def _read_native_meta(path: Path, name: Any, config: Any, report: LoadReport) -> None:
    if config is None:
        raise CheckpointError(f"{path}: fastsam3d checkpoint without model_config")
    try:
        cfg = ModelConfig.from_dict(json.loads(config) if isinstance(config, str) else config)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: invalid model_config ({err})") from None
    if report.model_config is None:
        report.model_config, report.model_name = cfg, name


def _tensor_dict(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a mapping of tensors, got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: non-tensor entries in the state dict: {bad[:10]}")
    return dict(obj)


def _classify_state_dict(
    path: Path, state: dict[str, torch.Tensor], report: LoadReport
) -> tuple[str, dict[str, torch.Tensor]]:
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
        report.stripped_prefix = True
    if not state:
        raise CheckpointError(f"{path}: the state dict is empty")
    if any(k.split(".", 1)[0] in PARTS for k in state):
        return "full-model state dict", state
    if all(k.startswith(_ENCODER_ROOTS) for k in state):
        return "image-encoder state dict", {f"image_encoder.{k}": v for k, v in state.items()}
    sample = sorted(state)[:5]
    raise CheckpointError(
        f"{path}: unrecognised key layout (first keys {sample}); expected keys starting with "
        f"{', '.join(p + '.' for p in PARTS)} or a bare image encoder "
        f"({', '.join(_ENCODER_ROOTS)})"
    )


def state_dict_mismatch(
    expected: Mapping[str, tuple[int, ...]],
    state: Mapping[str, torch.Tensor],
    *,
    optional_suffixes: tuple[str, ...] = (),
    shown: int = 12,
) -> list[str]:
    """Lines naming the keys ``state`` misses, has in excess or has with another shape than
    ``expected`` (key -> shape); empty when it fits. Expected keys ending in one of
    ``optional_suffixes`` may be absent."""
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith(optional_suffixes))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)}, model {expected[k]}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    lines = []
    for title, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", misshaped),
    ):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
            lines.append(f"  {title} keys: {', '.join(keys[:shown])}{more}")
    return lines


def read_checkpoint(
    paths: PathLike | Sequence[PathLike],
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Read one or several files into one full-model state dict with upstream key names.

    When several files are given, each part (image encoder, prompt encoder, mask decoder) comes
    from the first file that has it; the same part in later files is skipped and reported.
    E.g. ``read_checkpoint(["student_encoder.pth", "fastsam3d.pth"])``.

    Returns:
        ``(state_dict, report)``; keys are ``image_encoder.*``, ``prompt_encoder.*``,
        ``mask_decoder.*`` (plus anything unexpected, left for the strict loader to name).

    Raises:
        CheckpointError, UnsafeCheckpointError.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise CheckpointError("no checkpoint file given")
    report = LoadReport()
    merged: dict[str, torch.Tensor] = {}
    supplied: set[str] = set()
    for raw in paths:
        path = Path(raw)
        fmt, state = _split_file(path, report)
        parts = {k.split(".", 1)[0] for k in state}
        taken = tuple(p for p in PARTS if p in parts and p not in supplied)
        for key, value in state.items():
            part = key.split(".", 1)[0]
            if part in supplied:
                report.skipped.append(key)
            else:
                merged[key] = value
        supplied.update(taken)
        report.files.append((str(path), fmt, taken))
    log.info("read checkpoint:\n%s", report.summary())
    return merged, report


def save_native(
    path: PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: ModelConfig,
    model_name: str | None,
) -> Path:
    """Write our format atomically: ``.safetensors`` (config in metadata) or a ``.pt`` dict.

    The ``.pt`` variant holds only primitives and tensors, so ``torch.load(weights_only=True)``
    reads it without an allow-list.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {
        "format": NATIVE_FORMAT,
        "format_version": str(NATIVE_VERSION),
        "model_name": model_name or "",
        "model_config": json.dumps(config.to_dict()),
    }
    if path.suffix not in (".safetensors", ".pt", ".pth"):
        raise CheckpointError(f"{path}: output must end in .safetensors, .pt or .pth")
    with atomic_output(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=meta)
        else:
            torch.save(
                {
                    "format": NATIVE_FORMAT,
                    "format_version": NATIVE_VERSION,
                    "model_name": model_name or "",
                    "model_config": config.to_dict(),
                    "state_dict": tensors,
                },
                tmp,
            )
    return path
