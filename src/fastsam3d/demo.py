"""The demo: a simulated user segments structures of a bundled scan with a model; masks, a
label map and overlay PNGs are written to a folder.

Clicks are placed at the centre of the largest error against TotalSegmentator's labels (its
predictions, not manual ground truth), as in the evaluation's realistic protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import samples
from .contract import PromptableModel
from .data.align import labels_on_grid
from .data.io import read_volume, write_label_map
from .data.volume import Volume
from .errors import InputError
from .eval.clicks import CenterClicker
from .eval.metrics import dice
from .interactive.session import Session
from .viewer.render import render_overlay


@dataclass(frozen=True)
class DemoScan:
    """A bundled sample read for the demo: the image and one boolean truth per structure."""

    name: str
    volume: Volume
    truths: dict[str, np.ndarray]


def read_demo_scan(sample_name: str, structures: Sequence[str]) -> DemoScan:
    """The sample's image and the truth ``(I, J, K)`` bool of each structure, on its grid."""
    sample = samples.sample(sample_name)
    volume = read_volume(sample.image)
    labels = labels_on_grid(read_volume(sample.labels), volume)
    truths = {n: labels == samples.label_value(sample.label_set, n) for n in structures}
    missing = [name for name, truth in truths.items() if not truth.any()]
    if missing:
        raise InputError(f"structures {missing} are not labelled in sample {sample_name!r}")
    return DemoScan(sample_name, volume, truths)


def run_demo(
    runner: PromptableModel,
    scan: DemoScan,
    out: Path,
    *,
    clicks: int = 3,
    say: Callable[[str], None] = print,
) -> dict[str, float]:
    """Segment every structure of ``scan`` with up to ``clicks`` simulated clicks each.

    Writes ``out/NAME.nii.gz`` and ``out/NAME.png`` per structure and ``out/labels.nii.gz``
    (values 1..N in the order of ``scan.truths``); ``say`` gets one line per click.
    Returns the final Dice of each structure.
    """
    out.mkdir(parents=True, exist_ok=True)
    volume = scan.volume
    combined = np.zeros(volume.shape, np.uint8)
    session = Session(runner, runtime="torch")
    session.set_image(volume)
    rng = np.random.default_rng(0)
    scores = {}
    for value, (name, truth) in enumerate(scan.truths.items(), start=1):
        session.reset()
        placed = []
        for step in range(clicks):
            click = CenterClicker().next_click(session.mask, truth, rng, volume.spacing, step)
            if click is None:
                break
            result = session.add_click(click.index, click.positive)
            assert result is not None  # predict=True always answers
            placed.append((click.index, click.positive))
            t = result.timings_ms
            extra = f", encode {t['encode']:.0f} ms" if t["encode"] else ""
            say(
                f"{name:<12} click {step + 1} {'+' if click.positive else '-'} at {click.index}: "
                f"Dice {dice(session.mask, truth):.3f}  ({t['total']:.0f} ms{extra})"
            )
        mask = session.mask.copy()
        scores[name] = dice(mask, truth)
        combined[mask & (combined == 0)] = value
        write_label_map(mask, volume, out / f"{name}.nii.gz")
        render_overlay(
            volume,
            mask,
            out / f"{name}.png",
            clicks=placed,
            title=f"{name}: {len(placed)} clicks, Dice {scores[name]:.3f} vs TotalSegmentator",
        )
    write_label_map(combined, volume, out / "labels.nii.gz")
    names = list(scan.truths)
    say(
        f"wrote {out}/labels.nii.gz (values 1..{len(names)}: {', '.join(names)}), "
        f"{', '.join(f'{n}.nii.gz' for n in names)} and overlays "
        f"{', '.join(f'{n}.png' for n in names)}"
    )
    return scores
