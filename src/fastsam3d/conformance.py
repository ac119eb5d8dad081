"""Conformance with upstream: reference weights, upstream file layouts and the fixture scenarios.

The reference fixtures (``fastsam3d/reference/*_io_compact.pt``, shipped in the package) hold
outputs of the *upstream* code (SAM-Med3D / FastSAM3D) run with deterministic random weights.
This module

- rebuilds those weights from their documented rule (:func:`fixture_state_dict`): each tensor is
  drawn from a generator seeded with ``crc32(key)`` and scaled by a rule on key and shape;
- writes them in the layouts upstream publishes (:func:`write_upstream_checkpoint`), so tests
  and ``fastsam3d selfcheck`` load them through the same path users take;
- runs the fixture scenarios A/B/C on a model (:func:`run_scenarios`) and compares them with the
  references (:func:`compare`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .build import load_model
from .config import AttentionImpl, ModelConfig
from .errors import InputError
from .modeling.sam3d import Sam3D, upsample_logits
from .registry import get_spec

UpstreamLayout = Literal["training", "full", "ddp", "encoder"]

_UNIT_KEYS = (
    "iou_token",
    "mask_tokens",
    "point_embeddings",
    "not_a_point_embed",
    "no_mask_embed",
    "positional_encoding_gaussian_matrix",
)


def fixture_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 value the fixture rule gives upstream key ``key`` of ``shape``."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    z = torch.randn(shape, generator=gen, dtype=torch.float32)
    if any(unit in key for unit in _UNIT_KEYS):
        return z
    if key.endswith("pos_embed") or ".rel_pos_" in key:
        return 0.02 * z
    if len(shape) == 1 and key.endswith(".weight"):
        return 1 + 0.1 * z
    if len(shape) == 1 and key.endswith(".bias"):
        return 0.02 * z
    return z / math.sqrt(math.prod(shape[1:]))


def fixture_state_dict(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Fixture-rule state dict for upstream ``key -> shape``."""
    return {key: fixture_tensor(key, tuple(shape)) for key, shape in shapes.items()}


def model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Upstream state-dict keys and shapes of ``cfg`` (built on the meta device)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Sam3D(cfg).state_dict().items()}


def write_upstream_checkpoint(
    path: Path, state_dict: Mapping[str, torch.Tensor], layout: UpstreamLayout
) -> Path:
    """Write ``state_dict`` the way upstream publishes it.

    ``"training"``: ``train.py``'s dict (``model_state_dict``, optimizer and scheduler state, an
    ``argparse.Namespace`` under ``args``, numpy dices); ``"full"``: a bare full-model state dict;
    ``"ddp"``: the same with a ``module.`` prefix; ``"encoder"``: only the image encoder, keys
    without prefix (FastSAM3D's distilled student file).
    """
    state = dict(state_dict)
    obj: Any
    if layout == "training":
        obj = {
            "epoch": 83,
            "model_state_dict": state,
            "optimizer_state_dict": {
                "state": {0: {"step": torch.tensor(10.0)}},
                "param_groups": [{"lr": 8e-4, "betas": (0.9, 0.999), "params": [0]}],
            },
            "lr_scheduler_state_dict": {
                "milestones": collections.Counter({120: 1, 180: 1}),
                "gamma": 0.1,
                "last_epoch": 83,
                "_last_lr": [8e-4],
            },
            "losses": [0.5, 0.25],
            "dices": [np.float64(0.5), np.float64(0.75)],
            "best_loss": 0.25,
            "best_dice": np.float64(0.75),
            "args": argparse.Namespace(model_type="vit_b_ori", img_size=128, lr=8e-4),
            "used_datas": ["AMOS", "BraTS"],
        }
    elif layout == "full":
        obj = state
    elif layout == "ddp":
        obj = {f"module.{k}": v for k, v in state.items()}
    elif layout == "encoder":
        prefix = "image_encoder."
        obj = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    else:
        raise InputError(f"unknown layout {layout!r}")
    torch.save(obj, path)
    return path


@dataclass(frozen=True)
class Fixture:
    """One vendored reference file and the architecture that produced it."""

    name: str
    filename: str
    config: ModelConfig
    has_intermediates: bool


FIXTURES_DIR = Path(__file__).resolve().parent / "reference"
"""The vendored upstream reference files (inside the package: ``selfcheck`` works from a wheel)."""


def fixtures() -> list[Fixture]:
    """The two upstream reference fixtures."""
    teacher = get_spec("sam-med3d").config
    reduced = dataclasses.replace(
        teacher,
        encoder=dataclasses.replace(teacher.encoder, depth=2, global_attn_indexes=(1,)),
    )
    return [
        Fixture("fastsam3d student", "fastsam3d_io_compact.pt", get_spec("fastsam3d").config, True),
        Fixture("sam-med3d reduced teacher", "sammed3d_reduced_io_compact.pt", reduced, False),
    ]


def load_reference(path: Path) -> dict[str, Any]:
    """Load a fixture file (plain tensors, ``weights_only``) and rebuild its input volume."""
    ref: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if "input" not in ref:
        gen = torch.Generator().manual_seed(int(ref["input_seed"]))
        ref["input"] = torch.randn(1, 1, 128, 128, 128, generator=gen)
    return ref


@torch.inference_mode()
def run_scenarios(model: Sam3D, ref: Mapping[str, Any], intermediates: bool) -> dict[str, Any]:
    """Our outputs for every fixture key (scenarios A: no mask, B: zero mask, C: B's logits)."""
    image, points, labels = ref["input"], ref["points"], ref["labels"]
    out: dict[str, Any] = {}
    if intermediates:
        depth = model.cfg.encoder.depth
        depths = (0, *range(2, depth + 1, 2))  # upstream's list: every 2 blocks
        emb, inter = model.image_encoder.forward_intermediates(image, depths)
        out["encoder_intermediates"] = [*inter, emb]
    else:
        emb = model.encode(image)
    out["image_embedding"] = emb
    out["dense_pe"] = model.prompt_encoder.dense_pe()
    s = model.prompt_encoder.mask_size
    zeros = torch.zeros(1, 1, s, s, s)
    out["A_sparse"], out["A_dense"] = model.prompt_embeddings(points, labels, None)
    out["A_low_res_masks"], out["A_iou_predictions"] = model.decode(emb, points, labels)
    multi = model.decode(emb, points, labels, multimask=True)
    out["A_multi_low_res_masks"], out["A_multi_iou_predictions"] = multi
    out["B_sparse"], out["B_dense"] = model.prompt_embeddings(points, labels, zeros)
    out["B_low_res_masks"], out["B_iou_predictions"] = model.decode(emb, points, labels, zeros)
    out["B_mask128"] = upsample_logits(out["B_low_res_masks"], model.cfg.image_size)[0, 0] > 0
    prev = out["B_low_res_masks"]
    _, out["C_dense"] = model.prompt_embeddings(points, labels, prev)
    out["C_low_res_masks"], out["C_iou_predictions"] = model.decode(emb, points, labels, prev)
    return out


@dataclass(frozen=True)
class Comparison:
    key: str
    max_abs: float
    ok: bool


@torch.no_grad()
def compare(
    ours: Mapping[str, Any], ref: Mapping[str, Any], atol: float = 1e-4, rtol: float = 1e-4
) -> list[Comparison]:
    """Compare every key present in both (lists element-wise); booleans must match exactly."""
    rows: list[Comparison] = []
    for key in ours:
        if key not in ref:
            continue
        pairs = (
            [
                (f"{key}[{i}]", a, b)
                for i, (a, b) in enumerate(zip(ours[key], ref[key], strict=True))
            ]
            if isinstance(ours[key], list)
            else [(key, ours[key], ref[key])]
        )
        for name, a, b in pairs:
            if a.shape != b.shape:
                rows.append(Comparison(name, float("inf"), False))
            elif a.dtype == torch.bool:
                diff = int((a != b).sum())
                rows.append(Comparison(name, float(diff), diff == 0))
            else:
                a, b = a.double(), b.double()
                err = float((a - b).abs().max())
                ok = bool(torch.allclose(a, b, atol=atol, rtol=rtol))
                rows.append(Comparison(name, err, ok))
    return rows


VARIANT_KEY = "image_embedding_fastsam3d_block_variant"
"""Teacher fixture only: the embedding of the same weights under FastSAM3D's block formula."""


def with_fastsam3d_blocks(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with FastSAM3D's block formula (how FastSAM3D's code runs any encoder)."""
    return dataclasses.replace(
        cfg, encoder=dataclasses.replace(cfg.encoder, block_formula="fastsam3d")
    )


def check_fixture(
    fx: Fixture, ref: Mapping[str, Any], checkpoint: Path, attn_impl: AttentionImpl
) -> list[Comparison]:
    """Load ``checkpoint`` (upstream layout) as a user would and compare every output with ``ref``.

    Includes the teacher's block-variant embedding when the fixture has it.
    """
    model = load_model(fx.config, checkpoint, attn_impl=attn_impl)
    rows = compare(run_scenarios(model, ref, fx.has_intermediates), ref)
    if VARIANT_KEY in ref:
        variant = load_model(with_fastsam3d_blocks(fx.config), checkpoint, attn_impl=attn_impl)
        with torch.inference_mode():
            rows += compare({VARIANT_KEY: variant.encode(ref["input"])}, ref)
    return rows
