"""Evaluation protocols: how one method segments one structure from simulated clicks.

``paper`` (FastSAM3D Table 2, SAM-Med3D's original evaluation; docs/upstream.md U7): the model-frame
``128^3`` crop is centred on the ground truth's bounding box (an oracle placement), the model
gets the newest click plus its previous logits, and Dice is computed on the crop after
upsampling the logits. Upstream reports ``max`` over the clicks; the per-click values are kept.

``realistic``: nothing is placed with the ground truth: the simulator's clicks go to a
:class:`~fastsam3d.interactive.session.Session`, whose region follows the clicks, and Dice and
normalised surface Dice (2 mm) are computed on the original grid, as a user would see the mask.

The simulator always looks at the ground truth (it plays the user); the protocols differ in
what the *model* is given.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..contract import PromptableModel
from ..data.frame import FrameSpec, normalize_roi, resample_to_roi, roi_around
from ..data.volume import Volume
from ..interactive.session import Session, model_prompting
from ..modeling.sam3d import upsample_logits
from .clicks import ClickSimulator, SimulatedClick
from .metrics import dice, normalized_surface_dice

Protocol = Literal["paper", "realistic"]


@dataclass(frozen=True)
class Method:
    """A segmentation method under evaluation.

    Attributes:
        name: label in reports, e.g. ``"fastsam3d (random weights)"``.
        model: a :class:`~fastsam3d.Sam3D` or anything with its interface (``cfg.image_size``,
            ``cfg.low_res_size``, ``device``, ``dtype``, ``encode``, ``decode``).
        prompting: ``"newest"`` or ``"all"`` clicks per prediction; ``"auto"``: the model's
            own (:func:`~fastsam3d.interactive.session.model_prompting`).
    """

    name: str
    model: PromptableModel
    prompting: Literal["newest", "all", "auto"] = "auto"


@dataclass(frozen=True)
class ClickRecord:
    """The state after one click. ``index`` is on the evaluation grid (the crop for ``paper``,
    the original volume for ``realistic``); ``None`` when the simulator found no error left
    (the mask is then kept as it was, and for the 2D paper protocol, whose step clicks on
    many slices). ``total_clicks``: clicks a person made so far (``None``: ``click``)."""

    click: int
    index: tuple[int, int, int] | None
    positive: bool | None
    dice: float
    nsd: float
    time_ms: float
    new_region: bool
    total_clicks: int | None = None


def unchanged_record(
    records: list[ClickRecord], step: int, nsd: float | None = None, total_clicks: int | None = None
) -> ClickRecord:
    """The record of a step where the simulator found no error left: the previous scores kept
    (a perfect 1.0 before any click), no click, no time; ``nsd`` overrides the kept NSD."""
    last = records[-1] if records else None
    kept_nsd = (last.nsd if last else 1.0) if nsd is None else nsd
    return ClickRecord(
        step + 1,
        None,
        None,
        last.dice if last else 1.0,
        kept_nsd,
        0.0,
        False,
        total_clicks=total_clicks,
    )


def scored_record(
    step: int,
    click: SimulatedClick,
    mask: np.ndarray,
    gt: np.ndarray,
    spacing: tuple[float, float, float],
    tolerance_mm: float,
    time_ms: float,
    new_region: bool,
    total_clicks: int | None = None,
) -> ClickRecord:
    """The record of a click that ran: Dice and NSD (``tolerance_mm``) of ``mask`` on the
    evaluation grid against ``gt``."""
    return ClickRecord(
        step + 1,
        click.index,
        click.positive,
        dice(mask, gt),
        normalized_surface_dice(mask, gt, spacing, tolerance_mm),
        time_ms,
        new_region,
        total_clicks=total_clicks,
    )


def _upsample(logits: torch.Tensor, size: int) -> torch.Tensor:
    """``(1, 1, L, L, L)`` logits -> ``(size, size, size)`` float32 (upstream's upsampling)."""
    return upsample_logits(logits.float(), size)[0, 0]


def run_paper(
    method: Method,
    volume: Volume,
    gt: np.ndarray,
    simulator: ClickSimulator,
    n_clicks: int,
    rng: np.random.Generator,
    frame: FrameSpec,
) -> list[ClickRecord]:
    """Upstream's protocol on a ground-truth-centred crop (see the module docstring)."""
    model = method.model
    prompting = model_prompting(model) if method.prompting == "auto" else method.prompting
    centre = (np.argwhere(gt).min(axis=0) + np.argwhere(gt).max(axis=0)) / 2
    roi = roi_around(volume, centre, frame, clamp=False)
    image = normalize_roi(resample_to_roi(volume, roi), frame.normalization)
    gt_crop = (resample_to_roi(Volume(gt.astype(np.float32), volume.affine), roi) > 0.5).numpy()
    size, low = frame.size, model.cfg.low_res_size
    device, dtype = model.device, model.dtype
    spacing = (frame.spacing,) * 3
    records: list[ClickRecord] = []
    with torch.inference_mode():
        embedding = model.encode(image[None, None].to(device=device, dtype=dtype))
        logits = torch.zeros(1, 1, low, low, low, device=device, dtype=dtype)
        clicks: list[tuple[tuple[int, int, int], bool]] = []
        pred = np.zeros_like(gt_crop)
        for step in range(n_clicks):
            view = (_upsample(logits, size) > simulator.prediction_threshold).cpu().numpy()
            click = simulator.next_click(view, gt_crop, rng, spacing, step)
            if click is None:
                records.append(unchanged_record(records, step, nsd=math.nan))
                continue
            clicks.append((click.index, click.positive))
            sent = clicks if prompting == "all" else clicks[-1:]
            t0 = time.perf_counter()
            points = torch.tensor([[c for c, _ in sent]], dtype=torch.float32, device=device)
            labels = torch.tensor([[int(p) for _, p in sent]], device=device)
            logits, _ = model.decode(embedding, points, labels, mask_logits=logits)
            pred = (_upsample(logits, size) > model.cfg.input.mask_threshold).cpu().numpy()
            elapsed = 1e3 * (time.perf_counter() - t0)
            records.append(
                ClickRecord(
                    step + 1,
                    click.index,
                    click.positive,
                    dice(pred, gt_crop),
                    math.nan,
                    elapsed,
                    step == 0,
                )
            )
    return records


def run_realistic(
    method: Method,
    volume: Volume,
    gt: np.ndarray,
    simulator: ClickSimulator,
    n_clicks: int,
    rng: np.random.Generator,
    frame: FrameSpec,
    tolerance_mm: float = 2.0,
    carry_mask: bool = True,
) -> list[ClickRecord]:
    """Clicks through a :class:`Session` (``carry_mask``: see its argument); Dice and NSD on
    the original grid."""
    # the runner prepares each method's runtime once; the session uses the model as given
    session = Session(
        method.model,
        frame=frame,
        prompting=method.prompting,
        runtime="torch",
        carry_mask=carry_mask,
    )
    session.set_image(volume)
    records: list[ClickRecord] = []
    for step in range(n_clicks):
        click = simulator.next_click(session.mask, gt, rng, volume.spacing, step)
        if click is None:
            records.append(unchanged_record(records, step))
            continue
        t0 = time.perf_counter()
        result = session.add_click(click.index, click.positive)
        elapsed = 1e3 * (time.perf_counter() - t0)
        assert result is not None
        records.append(
            scored_record(
                step,
                click,
                session.mask,
                gt,
                volume.spacing,
                tolerance_mm,
                elapsed,
                result.new_region,
            )
        )
    return records
