"""What happens inside the ViT encoder, block by block: does attention select, and does the
image survive to the neck?

For one input region (``(1, 1, S, S, S)``, model frame) :func:`encoder_stats` reports, after the
embedding (``block = 0``) and after each block:

- ``attention_entropy``: the block's mean attention entropy divided by ``log N`` (``N`` tokens);
  1.0 means every query attends to every token equally (the block only adds the mean of its
  values: "attention collapse"), ``None`` for blocks without (global dense) attention;
- ``spread``: spatial spread of the token grid relative to its mean token,
  ``sqrt(mean_n |x_n - mean x|^2) / |mean x|``: near 0 means every token is the same vector;
- ``image_change``: ``|x(image) - x(constant image)| / |x(image)|``: near 0 means the tokens no
  longer depend on the image.

The last row (``block = -1``) is the neck's output, the embedding the decoder receives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..modeling.image_encoder import Block3D
from ..modeling.sam3d import Sam3D


@dataclass(frozen=True)
class BlockStats:
    """One row of :func:`encoder_stats` (``block``: 0 embedding, 1..depth blocks, -1 neck)."""

    block: int
    attention_entropy: float | None
    spread: float
    image_change: float


def _spread(tokens: torch.Tensor) -> float:
    """``(1, G, G, G, C)`` -> spatial spread relative to the mean token."""
    flat = tokens[0].reshape(-1, tokens.shape[-1]).float()
    mean = flat.mean(dim=0)
    deviation = (flat - mean).pow(2).sum(dim=1).mean().sqrt()
    return float(deviation / mean.norm().clamp_min(1e-12))


def _change(real: torch.Tensor, blank: torch.Tensor) -> float:
    return float((real - blank).float().norm() / real.float().norm().clamp_min(1e-12))


@torch.no_grad()
def encoder_stats(model: Sam3D, image: torch.Tensor) -> list[BlockStats]:
    """Per-block statistics of ``model``'s image encoder on ``image`` ``(1, C_in, S, S, S)``
    (normalised, model frame); the constant image is all zeros."""
    encoder = model.image_encoder
    image = image.to(device=model.device, dtype=model.dtype)
    x = encoder.embed(image)
    x_blank = encoder.embed(torch.zeros_like(image))
    rows = [BlockStats(0, None, _spread(x), _change(x, x_blank))]
    n = x.shape[1] ** 3
    for index, block in enumerate(encoder.blocks, start=1):
        assert isinstance(block, Block3D)
        entropy = None
        attention, norm = block.attn, block.norm1
        if (
            attention is not None
            and norm is not None
            and attention.sparse is None
            and attention.window in (0, x.shape[1])
        ):
            p = attention.probabilities(norm(x)).float()
            h = -(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean()
            entropy = float(h) / math.log(n)
        x, x_blank = block(x), block(x_blank)
        rows.append(BlockStats(index, entropy, _spread(x), _change(x, x_blank)))
    neck, neck_blank = encoder.head(x), encoder.head(x_blank)
    rows.append(
        BlockStats(-1, None, _spread(neck.permute(0, 2, 3, 4, 1)), _change(neck, neck_blank))
    )
    return rows


def format_stats(rows: list[BlockStats]) -> str:
    """A Markdown table of :func:`encoder_stats`."""
    lines = [
        "| block | attention entropy / log N | spread | change with a constant image |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        name = {0: "embedding", -1: "neck"}.get(r.block, str(r.block))
        entropy = "-" if r.attention_entropy is None else f"{r.attention_entropy:.3f}"
        lines.append(f"| {name} | {entropy} | {r.spread:.3f} | {r.image_change:.2%} |")
    return "\n".join(lines)


def _region(model: Sam3D, sample_name: str, structure: str) -> torch.Tensor:
    """The model-frame region ``(1, 1, S, S, S)`` centred on ``structure`` of a bundled
    sample."""
    import numpy as np

    from ..data.frame import FrameSpec, normalize_roi, resample_to_roi, roi_around
    from ..data.io import read_volume
    from ..samples import label_value, sample

    found = sample(sample_name)
    volume = read_volume(found.image)
    labels = read_volume(found.labels).array
    voxels = np.argwhere(labels == label_value(found.label_set, structure))
    if not len(voxels):
        raise InputError(f"{structure!r} has no voxels in sample {sample_name!r}")
    frame = FrameSpec.for_model(model.cfg)
    roi = roi_around(volume, voxels.mean(axis=0), frame)
    return normalize_roi(resample_to_roi(volume, roi), frame.normalization)[None, None].float()


def main(argv: list[str] | None = None) -> None:
    """``python -m fastsam3d.train.encoder_probe --model NAME [--checkpoint FILE] [--config
    TRAIN.toml]``: print the table for a region around a structure of a bundled sample."""
    import argparse

    from ..build import load_model

    parser = argparse.ArgumentParser(prog="python -m fastsam3d.train.encoder_probe")
    parser.add_argument("--model", default="fastsam3d-lite", help="registry name")
    parser.add_argument("--checkpoint", help="weights (default: the bundled ones, if any)")
    parser.add_argument(
        "--config", help="training config whose [model] section gives the architecture"
    )
    parser.add_argument("--sample", default="ct", help="bundled sample (default: ct)")
    parser.add_argument("--structure", default="liver", help="region centre (default: liver)")
    args = parser.parse_args(argv)
    arch: str | object = args.model
    if args.config:
        from ..train.config import load_config

        spec = load_config(args.config).model
        if spec is None:
            parser.error(f"{args.config} has no [model] section")
        arch = spec.model_config()
    fresh = args.checkpoint is None and args.config is not None  # a config's initial model
    model = load_model(arch, args.checkpoint, random_weights=fresh)  # type: ignore[arg-type]
    print(format_stats(encoder_stats(model, _region(model, args.sample, args.structure))))


if __name__ == "__main__":
    main()
