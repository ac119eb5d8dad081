"""Evaluation protocols for the 2D baselines, segmenting a volume slice by slice (issue 16).

A 2D model runs through a :class:`~fastsam3d.interactive.slices.SliceSession`; the simulated
user clicks on slices with the 3D simulators' rules applied to one slice's 2D error
(:func:`~fastsam3d.eval.clicks.next_click_on_slice`). ``--protocol`` maps to:

- ``paper`` (FastSAM3D's 2D rows): every slice that contains the object gets its own clicks;
  click ``n`` on a slice goes where the simulator puts it given that slice's error after its
  ``n - 1`` earlier clicks. Dice@n is the Dice of the stacked volume after ``n`` clicks on each
  such slice, so a person would have made ``n`` x (slices containing the object) clicks
  (fewer where a slice had no error left): ``total_clicks`` in the results.
- ``realistic``: every click a person makes counts. Clicks are placed one at a time on the
  slice with the most wrong voxels (ties: the lowest slice index), where the simulator puts
  it on that slice's 2D error (``center``: the centre of the largest 2D error region).
  Dice@n and NSD@n are after ``n`` clicks in total, comparable with the 3D methods' rows.

The upstream simulator's ``step`` (its first two clicks use the core rule) counts the clicks
already made on the slice being clicked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..data.volume import Volume
from ..interactive.slices import SliceIntensity, SliceSession
from ..sam2d.contract import PromptableModel2D
from .clicks import ClickSimulator, next_click_on_slice
from .metrics import dice
from .protocols import ClickRecord, Protocol, scored_record, unchanged_record


@dataclass(frozen=True)
class SliceMethod:
    """A 2D model under evaluation, applied slice by slice.

    Attributes:
        name: label in reports, e.g. ``"medsam (medsam_vit_b.pth)"``.
        model: a :class:`~fastsam3d.sam2d.contract.PromptableModel2D`.
        axis: the voxel axis slices are taken along (2: axial for RAS-ish scans).
        intensity: the 8-bit mapping (default: CT window / MR percentiles, auto-detected).
    """

    name: str
    model: PromptableModel2D
    axis: int = 2
    intensity: SliceIntensity | None = None

    def session(self, volume: Volume) -> SliceSession:
        """A fresh slice session on ``volume``."""
        session = SliceSession(self.model, axis=self.axis, intensity=self.intensity)
        session.set_image(volume)
        return session


def object_slices(gt: np.ndarray, axis: int) -> list[int]:
    """The slices along ``axis`` that contain part of the object."""
    others = tuple(a for a in range(3) if a != axis)
    return [int(s) for s in np.flatnonzero(gt.any(axis=others))]


def worst_slice(pred: np.ndarray, gt: np.ndarray, axis: int) -> int | None:
    """The slice with the most wrong voxels (ties: the lowest index); ``None`` when none is
    wrong."""
    others = tuple(a for a in range(3) if a != axis)
    wrong = (np.asarray(pred, bool) ^ np.asarray(gt, bool)).sum(axis=others)
    return int(np.argmax(wrong)) if wrong.any() else None


def run_slices_paper(
    method: SliceMethod,
    volume: Volume,
    gt: np.ndarray,
    simulator: ClickSimulator,
    n_clicks: int,
    rng: np.random.Generator,
) -> list[ClickRecord]:
    """``n_clicks`` rounds of one click on every slice containing the object (see the module
    docstring); one record per round, ``index`` ``None`` (a round clicks many slices)."""
    session = method.session(volume)
    slices = object_slices(gt, method.axis)
    records: list[ClickRecord] = []
    for step in range(n_clicks):
        t0 = time.perf_counter()
        encodes = session.encodes
        for s in slices:
            click = next_click_on_slice(
                simulator, session.mask, gt, rng, volume.spacing, step, method.axis, s
            )
            if click is not None:
                session.add_click(click.index, click.positive)
        elapsed = 1e3 * (time.perf_counter() - t0)
        records.append(
            ClickRecord(
                step + 1,
                None,
                None,
                dice(session.mask, gt),
                math.nan,
                elapsed,
                session.encodes > encodes,
                total_clicks=session.total_clicks,
            )
        )
    return records


def run_slices_realistic(
    method: SliceMethod,
    volume: Volume,
    gt: np.ndarray,
    simulator: ClickSimulator,
    n_clicks: int,
    rng: np.random.Generator,
    tolerance_mm: float = 2.0,
) -> list[ClickRecord]:
    """``n_clicks`` clicks in total, each on the slice with the most wrong voxels (see the
    module docstring); Dice and NSD on the volume after each."""
    session = method.session(volume)
    records: list[ClickRecord] = []
    for step in range(n_clicks):
        s = worst_slice(session.mask, gt, method.axis)
        click = None
        if s is not None:
            done = session.clicks_per_slice.get(s, 0)
            click = next_click_on_slice(
                simulator, session.mask, gt, rng, volume.spacing, done, method.axis, s
            )
        if click is None:
            records.append(unchanged_record(records, step, total_clicks=session.total_clicks))
            continue
        t0 = time.perf_counter()
        result = session.add_click(click.index, click.positive)
        elapsed = 1e3 * (time.perf_counter() - t0)
        records.append(
            scored_record(
                step,
                click,
                session.mask,
                gt,
                volume.spacing,
                tolerance_mm,
                elapsed,
                result.encoded,
                total_clicks=session.total_clicks,
            )
        )
    return records


def run_slices(
    method: SliceMethod,
    protocol: Protocol,
    volume: Volume,
    gt: np.ndarray,
    simulator: ClickSimulator,
    n_clicks: int,
    rng: np.random.Generator,
    tolerance_mm: float = 2.0,
) -> list[ClickRecord]:
    """The 2D protocol ``--protocol`` maps to (see the module docstring)."""
    if protocol == "paper":
        return run_slices_paper(method, volume, gt, simulator, n_clicks, rng)
    return run_slices_realistic(method, volume, gt, simulator, n_clicks, rng, tolerance_mm)
