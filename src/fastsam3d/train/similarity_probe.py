"""Does the decoder use what the ViT's embedding knows about a clicked structure?

For every structure of a scan: one positive click at its deepest voxel (largest distance to
its boundary), a region of the model's frame around it, and two masks inside that region:

- the model's own one-click mask (``decode`` with empty previous logits);
- the **similarity mask**: every token's cosine similarity to the clicked token of the ViT's
  embedding (:func:`~fastsam3d.modeling.similarity.click_similarity`), upsampled trilinearly
  and thresholded at the value that fits the structure best (an oracle threshold: this says
  what the embedding holds, not what a model without labels could do).

The report gives both Dice scores against the structure inside the region and the model
mask's size as a share of the structure's. On the v4 weights the embedding covers the training
CT's liver with Dice 0.84 where the model's own mask is a blob of 4% of it: the information is
in the embedding and the decoder does not read it (model card, experiments e23-e27).

    python -m fastsam3d.train.similarity_probe ct --structures liver,spleen,colon
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..build import load_model
from ..data.frame import FrameSpec
from ..data.volume import Volume
from ..eval.metrics import dice
from ..eval.probe import deepest_click_region
from ..eval.runner import sample_structures
from ..modeling.sam3d import Sam3D, upsample_logits
from ..modeling.similarity import click_similarity

THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.0, 1.0, 0.05), 2))
"""Cosine thresholds the similarity mask tries."""


@dataclass(frozen=True)
class SimilarityProbe:
    """One structure's probe (Dice and sizes inside the region, model-frame voxels)."""

    structure: str
    voxels: int
    model_dice: float
    model_share: float
    """Model mask voxels / structure voxels."""
    similarity_dice: float
    threshold: float


def probe_structure(
    model: Sam3D, volume: Volume, name: str, truth: np.ndarray, frame: FrameSpec
) -> SimilarityProbe:
    """The probe of one structure (``truth``: boolean mask on ``volume``'s grid)."""
    region = deepest_click_region(volume, truth, frame)
    image, inside, point = region.image, region.inside.numpy(), region.point
    points = torch.tensor(point[None, None], dtype=torch.float32, device=model.device)
    labels = torch.ones(1, 1, dtype=torch.long, device=model.device)
    size, low, d = model.cfg.image_size, model.cfg.low_res_size, model.cfg.prompt.embed_dim
    with torch.inference_mode():
        embedding = model.encode(image[None, None].to(model.device, model.dtype))
        empty = torch.zeros(1, 1, low, low, low, device=model.device, dtype=model.dtype)
        logits, _ = model.decode(embedding, points, labels, mask_logits=empty)
        own = (upsample_logits(logits.float(), size)[0, 0] > 0).cpu().numpy()
        sim = click_similarity(embedding[:, :d].float(), points, labels, size)[:, :1]
        sim_up = upsample_logits(sim, size)[0, 0].cpu().numpy()
    best, at = max((dice(sim_up > t, inside), t) for t in THRESHOLDS)
    voxels = int(inside.sum())
    return SimilarityProbe(
        name, voxels, dice(own, inside), int(own.sum()) / max(voxels, 1), best, at
    )


def probe_scan(
    model: Sam3D, sample: str, structures: Sequence[str] = (), min_voxels: int = 200
) -> list[SimilarityProbe]:
    """Probe every structure (or those named) of a bundled sample's first case."""
    volume, targets = sample_structures(sample, structures, min_voxels)
    frame = FrameSpec.for_model(model.cfg)
    return [probe_structure(model, volume, n, m, frame) for n, m in targets.items()]


def format_table(rows: Sequence[SimilarityProbe]) -> str:
    """A Markdown table of the probes and their means."""
    lines = [
        "| structure | voxels | model Dice | model mask / structure | similarity Dice | at cos > |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.structure} | {r.voxels} | {r.model_dice:.3f} | {100 * r.model_share:.0f}% "
            f"| {r.similarity_dice:.3f} | {r.threshold:.2f} |"
        )
    if rows:
        lines.append(
            f"| **mean** | | {np.mean([r.model_dice for r in rows]):.3f} | | "
            f"{np.mean([r.similarity_dice for r in rows]):.3f} | |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastsam3d.train.similarity_probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sample", help="bundled sample (e.g. ct, ct_dicom)")
    parser.add_argument(
        "--model",
        default=None,
        help="registry name (default: the checkpoint's, else fastsam3d-lite)",
    )
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--structures", default="", help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = args.model or (None if args.checkpoint else "fastsam3d-lite")
    model = load_model(name, args.checkpoint)
    names = [s for s in args.structures.split(",") if s]
    print(format_table(probe_scan(model, args.sample, names)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
