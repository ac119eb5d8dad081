"""Building models from the registry and loading checkpoints into them.

Models are constructed on the ``meta`` device (no memory, no default initialisation) and then
either filled from a checkpoint or initialised explicitly from a seeded generator, so building
never touches torch's global RNG.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .checkpoint import CheckpointError, PathLike, read_checkpoint, state_dict_mismatch
from .config import AttentionImpl, ModelConfig, SparseAttentionConfig
from .distributed import process_device
from .errors import InputError
from .modeling.attention import EncoderAttention
from .modeling.detail import DetailRefiner
from .modeling.feature_refiner import FeatureRefiner
from .modeling.fine_stage import FineStage
from .modeling.layers import LayerNorm3d
from .modeling.prompt_encoder import PositionEmbeddingRandom3D
from .modeling.sam3d import Sam3D
from .modeling.similarity import SimilarityPrompt
from .registry import MODELS, get_spec

log = logging.getLogger(__name__)

DeviceLike = str | torch.device


class CheckpointMismatchError(CheckpointError):
    """Checkpoint keys or shapes do not fit the model; the message names every offending key."""


def resolve_config(
    model: str | ModelConfig,
    attn_impl: AttentionImpl | None = None,
    sparse: SparseAttentionConfig | Literal["keep"] | None = "keep",
) -> ModelConfig:
    """Registry name or config -> config with runtime overrides applied.

    ``sparse`` sets the encoder's sparse attention (``None`` = dense); ``"keep"`` leaves it.
    """
    cfg = get_spec(model).config if isinstance(model, str) else model
    return cfg.with_attention(attn_impl=attn_impl, encoder_sparse=sparse)


def build_meta(cfg: ModelConfig) -> Sam3D:
    """The model on the ``meta`` device: shapes and parameter counts without memory."""
    with torch.device("meta"):
        return Sam3D(cfg)


def build_model(
    model: str | ModelConfig,
    *,
    device: DeviceLike = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    attn_impl: AttentionImpl | None = None,
    sparse: SparseAttentionConfig | Literal["keep"] | None = "keep",
) -> Sam3D:
    """A randomly initialised model (train mode), deterministic for ``seed``.

    Example:
        >>> student = build_model("test-tiny-student", seed=1)
    """
    cfg = resolve_config(model, attn_impl, sparse)
    net = build_meta(cfg).to_empty(device="cpu")
    init_weights(net, torch.Generator().manual_seed(seed))
    return net.to(device=process_device(device), dtype=dtype)


def load_model(
    name: str | ModelConfig | None,
    checkpoint: PathLike | Sequence[PathLike] | None = None,
    device: DeviceLike = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
    attn_impl: AttentionImpl | None = None,
    sparse: SparseAttentionConfig | Literal["keep"] | None = "keep",
    seed: int = 0,
    fresh: Sequence[str] = (),
    random_weights: bool = False,
) -> Sam3D:
    """A model in eval mode with ``checkpoint``'s weights; without a checkpoint, the weights
    bundled with the entry (``fastsam3d-lite``). Random weights only when asked for:
    ``random_weights=True`` (tests, benchmarks; :func:`build_model` always initialises
    randomly).

    Args:
        name: registry name (see :func:`fastsam3d.list_models`) or a :class:`ModelConfig`.
            May be ``None`` for our native checkpoints, which carry their config.
        checkpoint: path, or several paths combined part by part (e.g. a bare student encoder
            followed by a full model supplying the prompt encoder and decoder). Any format of
            :mod:`fastsam3d.checkpoint`.
        device: where the model lives (under torchrun, ``"cuda"`` is ``cuda:LOCAL_RANK``,
            see :func:`fastsam3d.distributed.process_device`).
        dtype: parameter dtype (float32 reproduces upstream).
        attn_impl: override the attention implementation (``"sdpa"`` / ``"eager"``).
        sparse: encoder sparse attention (weights trained densely lose accuracy under it).
        seed: initialisation seed of ``random_weights`` (and of ``fresh`` parts).
        fresh: state_dict prefixes the checkpoint may lack, e.g. ``"mask_decoder.refiner."``
            to add a detail refiner to a trained model: those parts keep their initialisation
            from ``seed`` (a refiner starts as the identity) and the checkpoint's architecture
            may differ from ``name``'s by them; every other key must fit exactly.

        random_weights: a random initialisation from ``seed`` instead of any weights.

    Raises:
        InputError: unknown name, or no checkpoint for an entry without bundled weights (and
            ``random_weights`` not asked for). CheckpointError / UnsafeCheckpointError /
        CheckpointMismatchError: the file cannot be read or does not fit.

    Example:
        >>> model = load_model("fastsam3d", "fastsam3d.pth")  # doctest: +SKIP
        >>> emb = model.encode(image)                          # (1, 384, 8, 8, 8)
    """
    device = process_device(device)
    if random_weights:
        if checkpoint is not None or name is None:
            raise InputError(
                "random_weights=True takes a model name and no checkpoint, got "
                f"name {name!r}, checkpoint {checkpoint!r}"
            )
        net = build_model(name, dtype=dtype, seed=seed, attn_impl=attn_impl, sparse=sparse)
        return net.to(device).eval()
    if checkpoint is None and isinstance(name, str) and get_spec(name).weights is not None:
        checkpoint = _verified_bundled_weights(name)
    if checkpoint is None:
        if name is None:
            raise InputError("load_model needs a model name or a checkpoint")
        raise InputError(
            f"model {_label(name)!r} has no bundled weights: pass its checkpoint file "
            f"(load_model({_label(name)!r}, 'weights.pth'), or --checkpoint FILE on the command "
            "line; the published SAM-Med3D / FastSAM3D files load as they are), use the bundled "
            "fastsam3d-lite, or ask for random weights explicitly (random_weights=True, "
            "--checkpoint random)"
        )
    state, report = read_checkpoint(checkpoint)
    if name is None:
        if report.model_config is None:
            raise InputError(
                "this checkpoint does not name its architecture; pass a model name, "
                f"one of {sorted(MODELS)}"
            )
        base = report.model_config
    else:
        base = resolve_config(name)
        if (
            report.model_config is not None
            and not fresh
            and not _same_architecture(base, report.model_config)
        ):
            diffs = config_differences(report.model_config, base)
            raise CheckpointMismatchError(
                f"{report.files[0][0]} was written for model {report.model_name!r} with another "
                f"architecture than {_label(name)!r} ({'; '.join(diffs[:6])}"
                f"{'; ...' if len(diffs) > 6 else ''}): load it with the architecture it names "
                "(load_model(None, path), or --model from-checkpoint on the command line)"
            )
    cfg = resolve_config(base, attn_impl, sparse)
    label = _label(name) if name is not None else report.model_name or ""
    if fresh:
        net = build_model(cfg, seed=seed)
        prefixes = tuple(fresh)
        kept = {k: v for k, v in net.state_dict().items() if k.startswith(prefixes)}
        check_state_dict(net, {**kept, **state}, label)
        net.load_state_dict(state, strict=False)
    else:
        net = build_meta(cfg).to_empty(device="cpu")
        check_state_dict(net, state, label)
        net.load_state_dict(state, strict=True)
        fill_fixed_tables(net)
    return net.to(device=device, dtype=dtype).eval()


def _verified_bundled_weights(name: str) -> Path:
    """The bundled weights of ``name``, after checking that they are intact."""
    import hashlib

    spec = get_spec(name)
    path = spec.bundled_weights()
    assert path is not None
    if not path.is_file():
        raise CheckpointError(
            f"{path}: the weights bundled with {name!r} are missing; reinstall fastsam3d"
        )
    if spec.weights_sha256 is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != spec.weights_sha256:
            raise CheckpointError(
                f"{path}: checksum {digest} differs from {spec.weights_sha256}; reinstall fastsam3d"
            )
    return path


def _label(name: str | ModelConfig) -> str:
    return name if isinstance(name, str) else "custom config"


def config_differences(in_file: ModelConfig, named: ModelConfig) -> list[str]:
    """The architecture fields that differ, as ``"encoder.depth: 6 in the file, 12 named"``
    (runtime-only fields, the attention implementation and sparse attention, left out)."""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        return {k: v for key, value in d.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    a = flat(_without_runtime(in_file).to_dict())
    b = flat(_without_runtime(named).to_dict())
    return [
        f"{k}: {a.get(k)!r} in the file, {b.get(k)!r} named"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def _without_runtime(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with the runtime-only fields (attention implementation, sparse attention) reset."""
    return cfg.with_attention("sdpa", None, None)


def _same_architecture(a: ModelConfig, b: ModelConfig) -> bool:
    """Equal up to runtime-only fields (attention implementation, sparse attention)."""
    return _without_runtime(a) == _without_runtime(b)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    """Raise :class:`CheckpointMismatchError` naming missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = state_dict_mismatch(expected, state)
    if not problems:
        return
    lines = [f"checkpoint does not fit model {name!r}:", *problems]
    guesses = [n for n in matching_models(state) if n != name]
    if guesses:
        lines.append(f"  the checkpoint's shapes fit: {', '.join(guesses)}")
    raise CheckpointMismatchError("\n".join(lines))


def matching_models(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Registry names whose keys and shapes equal those of ``state``."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = []
    for name, spec in MODELS.items():
        model_shapes = {k: tuple(v.shape) for k, v in build_meta(spec.config).state_dict().items()}
        if model_shapes == shapes:
            found.append(name)
    return sorted(found)


@torch.no_grad()
def fill_fixed_tables(model: nn.Module) -> list[torch.Tensor]:
    """Fill the fixed, unsaved tables (the encoder's attention distance bias) of a model made
    with ``to_empty``; returns them. They are functions of the architecture, not weights."""
    tables = []
    for module in model.modules():
        if isinstance(module, EncoderAttention) and module.distance is not None:
            module.reset_distance_bias()
            tables.append(module.distance)
    return tables


@torch.no_grad()
def init_weights(model: Sam3D, generator: torch.Generator) -> None:
    """Initialise every parameter and buffer of ``model`` (on CPU) from ``generator``.

    Linear: truncated normal (std 0.02), zero bias. Convolutions: Kaiming normal (fan-in), zero
    bias. LayerNorms: 1 / 0. Embeddings and the Fourier matrix: standard normal. Absolute
    position embedding: truncated normal (0.02); relative position tables: zeros (upstream's
    ``rel_pos_zero_init``). LayerScale vectors: ``EncoderConfig.layer_scale_init``.
    """
    done: set[int] = set()

    def mark(*tensors: torch.Tensor | None) -> None:
        done.update(id(t) for t in tensors if t is not None)

    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            mark(module.weight, module.bias)
        elif isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            mark(module.weight, module.bias)
        elif isinstance(module, nn.LayerNorm | LayerNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            mark(module.weight, module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, generator=generator)
            mark(module.weight)
        elif isinstance(module, PositionEmbeddingRandom3D):
            matrix = module.positional_encoding_gaussian_matrix
            nn.init.normal_(matrix, generator=generator)
            mark(matrix)
    for name, param in model.named_parameters():
        if name.endswith("pos_embed"):
            nn.init.trunc_normal_(param, std=0.02, generator=generator)
            mark(param)
        elif ".rel_pos_" in name:
            nn.init.zeros_(param)
            mark(param)
        elif name.endswith((".feature_gate8", ".feature_gate4")):
            nn.init.zeros_(param)  # the features start switched off
            mark(param)
        elif name.endswith((".ls1", ".ls2")):
            nn.init.constant_(param, model.cfg.encoder.layer_scale_init)
            mark(param)
    for table in fill_fixed_tables(model):
        mark(table)
    for module in model.modules():
        if isinstance(module, DetailRefiner | FeatureRefiner | SimilarityPrompt | FineStage):
            module.zero_output()  # a part added to a trained model changes nothing at first
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) not in done]
    assert not left, f"init_weights missed {left}"
