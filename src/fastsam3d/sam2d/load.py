"""Loading the 2D baselines from their authors' published checkpoints (or random weights).

Files are read with :func:`fastsam3d.checkpoint.read_checkpoint` (``torch.load(weights_only=True)``
with the package's allow-list; the ``model`` / ``state_dict`` / ``model_state_dict`` wrappers and
a ``module.`` prefix are handled there). One addition for SAM-Med2D: its ``train.py`` saves
``{'model': state_dict, 'optimizer': optimizer}`` with the ``torch.optim.Adam`` object itself, and
the published ``sam-med2d_b.pth`` (2.4 GB for 271M float32 weights, i.e. with Adam's two moment
buffers of the trained parameters) is such a file. Unpickling that object would run torch.optim
code; here the optimizer classes are allow-listed as :class:`DiscardedObject`, an inert stand-in
that drops its state; the optimizer's ``state`` (a ``defaultdict(dict)``) is read as a plain
dict (``collections.defaultdict`` mapped to a function returning ``{}``, and ``dict``). Nothing else
is added to the allow-list.

Keys and shapes must equal the model's exactly (BatchNorm ``num_batches_tracked`` counters may be
absent, as ``torch.nn.Module.load_state_dict`` allows); otherwise :class:`CheckpointMismatchError2D`
names the model and the first missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, PathLike, read_checkpoint, state_dict_mismatch
from ..distributed import process_device
from ..errors import InputError
from .models import SamFamily2D
from .registry import MODELS_2D, get_spec_2d
from .tinyvit import WindowAttention

OPTIMIZER_CLASSES = ("Adam", "AdamW", "SGD")
"""torch.optim classes whose pickled objects a checkpoint may carry (read as DiscardedObject)."""


class DiscardedObject:
    """Stands in for a pickled object whose contents are not needed (a training optimizer)."""

    def __setstate__(self, state: Any) -> None:
        del state


def _plain_dict(default_factory: Any = None) -> dict[Any, Any]:
    """Reads a pickled ``collections.defaultdict`` as a plain dict (its factory is not kept)."""
    del default_factory
    return {}


def _discarded_optimizers() -> list[Any]:
    entries: list[Any] = [(_plain_dict, "collections.defaultdict"), dict]  # optimizer.state
    for cls in OPTIMIZER_CLASSES:
        module = cls.lower() if cls != "AdamW" else "adamw"
        entries.append((DiscardedObject, f"torch.optim.{module}.{cls}"))
    return entries


class CheckpointMismatchError2D(CheckpointError):
    """A checkpoint's keys or shapes do not fit the 2D model; the message names them."""


def build_meta_2d(name: str) -> SamFamily2D:
    """The model on the ``meta`` device (no memory, no initialisation): shapes, parameter
    counts, FLOP counting."""
    spec = get_spec_2d(name)
    with torch.device("meta"):
        return spec.build()


def read_checkpoint_2d(path: PathLike) -> dict[str, torch.Tensor]:
    """A published 2D checkpoint -> full-model state dict (``image_encoder.*`` ...)."""
    with torch.serialization.safe_globals(_discarded_optimizers()):
        state, _ = read_checkpoint(path)
    return state


def check_state_dict_2d(model: nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    """Raise :class:`CheckpointMismatchError2D` unless ``state`` has ``model``'s keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = state_dict_mismatch(
        expected, state, optional_suffixes=(".num_batches_tracked",), shown=8
    )
    if not problems:
        return
    lines = [f"checkpoint does not fit the 2D model {name!r}:", *problems]
    fits = [n for n in matching_models_2d(state) if n != name]
    if fits:
        lines.append(f"  the checkpoint's keys and shapes fit: {', '.join(fits)}")
    raise CheckpointMismatchError2D("\n".join(lines))


def matching_models_2d(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the 2D models whose keys and shapes ``state`` has (counters aside)."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    found = []
    for name in MODELS_2D:
        model = {
            k: tuple(v.shape)
            for k, v in build_meta_2d(name).state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
        if model == shapes:
            found.append(name)
    return found


def load_model_2d(
    name: str,
    checkpoint: PathLike | None = None,
    *,
    random_weights: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> SamFamily2D:
    """One of the 2D baselines (:data:`MODELS_2D`) in eval mode, with ``checkpoint``'s weights.

    Args:
        name: ``sam-vit-b``, ``medsam``, ``mobilesam``, ``tinysam`` or ``sam-med2d``.
        checkpoint: the authors' published file (e.g. ``sam_vit_b_01ec64.pth``,
            ``medsam_vit_b.pth``, ``mobile_sam.pt``, ``tinysam_42.3.pth``, ``sam-med2d_b.pth``).
        random_weights: a seeded random initialisation instead (tests, benchmarks); takes no
            checkpoint.
        device: where the model lives. seed: the random initialisation's seed.

    Raises:
        InputError: unknown name, no checkpoint without ``random_weights``, or both.
        CheckpointError / UnsafeCheckpointError / CheckpointMismatchError2D: the file cannot be
        read or does not fit.

    Example:
        >>> model = load_model_2d("mobilesam", "mobile_sam.pt")  # doctest: +SKIP
        >>> emb = model.encode(image)                             # (1, 256, 64, 64)
    """
    spec = get_spec_2d(name)
    if random_weights and checkpoint is not None:
        raise InputError(
            f"random_weights=True takes no checkpoint (got {checkpoint!r} for {name!r})"
        )
    if not random_weights and checkpoint is None:
        raise InputError(
            f"2D model {name!r} has no bundled weights: pass its published checkpoint "
            f"({spec.checkpoint_file}), or ask for random weights explicitly "
            "(random_weights=True)"
        )
    net = build_meta_2d(name).to_empty(device="cpu")
    if checkpoint is None:
        init_weights_2d(net, torch.Generator().manual_seed(seed))
    else:
        state = read_checkpoint_2d(checkpoint)
        check_state_dict_2d(net, state, name)
        own = net.state_dict()
        counters = {k: own[k].zero_() for k in own if k.endswith(".num_batches_tracked")}
        net.load_state_dict({**counters, **state}, strict=True)
    fill_index_tables(net)
    return net.to(process_device(device)).eval()


@torch.no_grad()
def fill_index_tables(model: nn.Module) -> None:
    """Refill the unsaved index tables (TinyViT's window offsets) after ``to_empty``."""
    for module in model.modules():
        if isinstance(module, WindowAttention):
            module.reset_index()


@torch.no_grad()
def init_weights_2d(model: nn.Module, generator: torch.Generator) -> None:
    """Initialise every parameter and persistent buffer of ``model`` (CPU) from ``generator``.

    Linear and convolution weights: normal (std 0.02) clipped at two std (cheaper than a
    truncated normal over SAM-Med2D's 271M weights), biases 0; norms (LayerNorm,
    LayerNorm2d, BatchNorm): scale 1, shift 0, running mean 0 / variance 1; embeddings and the
    prompt encoder's Fourier matrix: standard normal; position tables and attention biases: 0.
    """
    done: set[int] = set()
    for module in model.modules():
        params = dict(module.named_parameters(recurse=False))
        weight, bias = params.get("weight"), params.get("bias")
        if isinstance(module, nn.Embedding):
            module.weight.normal_(generator=generator)
        elif isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            module.weight.normal_(std=0.02, generator=generator).clamp_(-0.04, 0.04)
        elif weight is not None and weight.ndim == 1:  # LayerNorm, LayerNorm2d, BatchNorm2d
            weight.fill_(1.0)
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            done.update(id(b) for b in module.buffers(recurse=False))
        if bias is not None:
            bias.zero_()
        done.update(id(p) for p in (weight, bias) if p is not None)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("pos_embed", "rel_pos_h", "rel_pos_w", "attention_biases"):
            tensor.zero_()
        elif leaf == "positional_encoding_gaussian_matrix":
            tensor.normal_(generator=generator)
        elif leaf != "attention_bias_idxs":  # the index table is refilled, not drawn
            continue
        done.add(id(tensor))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) not in done]
    assert not left, f"init_weights_2d missed {left[:5]}"
