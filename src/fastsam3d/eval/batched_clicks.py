"""The click simulators of :mod:`fastsam3d.eval.clicks` on a batch of masks, in torch, on the
masks' device: the same clicks, without a round trip to the host per target.

Training decodes many targets per step; on a GPU the per-target distance transforms on the host
(``edt``, which holds the GIL) would take most of a step. Here one exact Euclidean distance
transform runs for the whole batch (the separable lower envelope along each axis, offset by
offset, up to the deepest error's depth), and only the candidates' counts and one index per
sample cross to the host, where each sample's own ``numpy.random.Generator`` draws as the host
simulator would.

Same clicks as :mod:`fastsam3d.eval.clicks` means: the same rule, the same candidates in the same
(C) order and the same draws from each generator, so a seed gives one click sequence whichever
backend ran it. Distances are compared squared and exactly (integers in units of the squared
spacing when the spacing is isotropic, float64 otherwise); ``edt`` compares float32 distances,
which can only differ where two different distances round to one float32 (not possible for
isotropic grids of the sizes used here).

Masks are ``(B, I, J, K)`` bool tensors on one grid with voxel ``spacing`` in mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError
from .clicks import (
    CenterClicker,
    ClickSimulator,
    MixedClicker,
    RandomClicker,
    SimulatedClick,
    UpstreamClicker,
)

_FAR = 1e30
"""Stands for "no outside voxel on this line yet"; finite so sums stay ordered."""


def squared_inner_distance(regions: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """``(B, I, J, K)`` squared distance of each voxel of ``regions`` to the nearest voxel
    outside it, everything beyond the grid counting as outside (as the host simulator pads the
    region's box with one background voxel); 0 outside the region.

    Units: squared voxels when the three spacings are equal (exact integers, float32), squared
    mm otherwise (float64).
    """
    if regions.dim() != 4:
        raise InputError(f"regions must be (B, I, J, K), got shape {tuple(regions.shape)}")
    isotropic = len({float(s) for s in spacing}) == 1
    dtype = torch.float32 if isotropic else torch.float64
    weights = [1.0] * 3 if isotropic else [float(s) ** 2 for s in spacing]
    inside = torch.nn.functional.pad(regions.bool(), (1, 1, 1, 1, 1, 1))
    dist = torch.where(inside, _FAR, 0.0).to(dtype)
    for axis, weight in enumerate(weights):
        dist = _lower_envelope(dist, axis + 1, weight)
    return dist[:, 1:-1, 1:-1, 1:-1]


def _lower_envelope(values: torch.Tensor, dim: int, weight: float) -> torch.Tensor:
    """``out[x] = min_y values[y] + weight (x - y)^2`` along ``dim``, exactly.

    Offsets ``|x - y| = 1, 2, ...`` are folded in one at a time (two shifted minima over the
    whole batch each) until every value is final: once ``weight (d + 1)^2`` reaches the
    largest value so far, no farther ``y`` can lower any of them. Error regions are shallow, so
    this stops after a few offsets instead of the axis length.
    """
    out = values.clone()
    n = values.shape[dim]
    for offset in range(1, n):
        step = weight * offset * offset
        near, far = values.narrow(dim, 0, n - offset), values.narrow(dim, offset, n - offset)
        head, tail = out.narrow(dim, 0, n - offset), out.narrow(dim, offset, n - offset)
        torch.minimum(head, far + step, out=head)
        torch.minimum(tail, near + step, out=tail)
        if float(out.max()) <= weight * (offset + 1) ** 2:
            break
    return out


def _errors(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != gt.shape or pred.dim() != 4:
        raise InputError(
            f"prediction {tuple(pred.shape)} and truth {tuple(gt.shape)} must be one (B, I, J, K)"
        )
    p, g = pred.bool(), gt.bool()
    return g & ~p, p & ~g


def _rule_per_sample(
    simulator: ClickSimulator, steps: Sequence[int], rngs: Sequence[np.random.Generator]
) -> list[str]:
    """``"center"``, ``"core"`` or ``"random"`` for each sample, drawing what the host
    simulator draws before it looks at the masks (the mixed rule's choice)."""
    if isinstance(simulator, CenterClicker):
        return ["center"] * len(steps)
    if isinstance(simulator, RandomClicker):
        return ["random"] * len(steps)
    if isinstance(simulator, UpstreamClicker):
        return ["core" if step < simulator.core_clicks else "random" for step in steps]
    if isinstance(simulator, MixedClicker):
        return ["center" if rng.random() < simulator.center else "core" for rng in rngs]
    raise InputError(
        f"no batched version of the {getattr(simulator, 'name', simulator)!r} simulator"
    )


def next_clicks(
    simulator: ClickSimulator,
    pred: torch.Tensor,
    gt: torch.Tensor,
    rngs: Sequence[np.random.Generator],
    spacing: Sequence[float],
    steps: Sequence[int],
) -> list[SimulatedClick | None]:
    """Each sample's next click, as ``simulator.next_click(pred[s], gt[s], rngs[s], spacing,
    steps[s])`` would return it (``None``: no error left), computed for the batch at once.

    Args:
        pred, gt: ``(B, I, J, K)`` bool (the prediction already binarised at the simulator's
            ``prediction_threshold``); rngs, steps: one per sample.
    """
    fn, fp = _errors(pred, gt)
    b = fn.shape[0]
    if len(rngs) != b or len(steps) != b:
        raise InputError(f"{b} samples but {len(rngs)} generators and {len(steps)} steps")
    if len({id(r) for r in rngs}) != b:
        raise InputError("every sample needs its own generator (the draws would interleave)")
    rules = _rule_per_sample(simulator, steps, rngs)
    candidates = (fn | fp).clone()  # the random rule's; the others' replace it below
    deep = [s for s, rule in enumerate(rules) if rule != "random"]
    if deep:
        index = torch.tensor(deep, device=fn.device)
        d_fn, d_fp = squared_inner_distance(torch.cat([fn[index], fp[index]]), spacing).chunk(2)
        top_fn, top_fp = d_fn.flatten(1).amax(1), d_fp.flatten(1).amax(1)
        use_fn = (top_fn >= top_fp).view(-1, 1, 1, 1)  # ties go to the false negatives
        dist = torch.where(use_fn, d_fn, d_fp)
        top = torch.maximum(top_fn, top_fp).view(-1, 1, 1, 1)
        center = torch.tensor([rules[s] == "center" for s in deep], device=fn.device)
        at_top = (dist == top) & (top > 0)
        in_core = 4 * dist > top  # squared form of upstream's "distance > maximum / 2"
        candidates[index] = torch.where(center.view(-1, 1, 1, 1), at_top, in_core)
    flat = candidates.flatten(1)
    counts = flat.sum(1).tolist()
    picks = [int(rngs[s].integers(n)) if n else -1 for s, n in enumerate(counts)]
    order = flat.long().cumsum(1)
    wanted = torch.tensor(picks, device=flat.device).view(-1, 1) + 1
    chosen = (flat & (order == wanted)).long().argmax(1).tolist()
    positive = fn.flatten(1).gather(1, torch.tensor(chosen, device=fn.device)[:, None])[:, 0]
    shape = fn.shape[1:]
    clicks: list[SimulatedClick | None] = []
    for n, flat_index, pos in zip(counts, chosen, positive.tolist(), strict=True):
        if n == 0:
            clicks.append(None)
            continue
        i, j, k = (int(v) for v in np.unravel_index(flat_index, shape))
        clicks.append(SimulatedClick((i, j, k), bool(pos)))
    return clicks
