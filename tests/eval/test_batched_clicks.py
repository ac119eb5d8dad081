"""Batched click simulation in torch: exact distances and the host simulators' very clicks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from fastsam3d.build import build_model
from fastsam3d.errors import InputError
from fastsam3d.eval.batched_clicks import next_clicks, squared_inner_distance
from fastsam3d.eval.clicks import UpstreamClicker, make_simulator
from fastsam3d.train.config import parse_config
from fastsam3d.train.objectives import InteractiveStep

from ..train.conftest import train_config

SPACINGS = [(3.0, 3.0, 3.0), (1.0, 1.2, 2.0)]


def _blob(shape, center, radius) -> np.ndarray:
    idx = np.indices(shape).reshape(3, -1).T
    return (np.linalg.norm(idx - center, axis=1) <= radius).reshape(shape)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_distances_match_scipy_with_the_grid_edge_as_outside(spacing) -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 12, 10, 9)) < 0.85  # regions touch every face of the grid
    masks[2] = True  # one region is the whole grid: its depth comes from the edge alone
    got = squared_inner_distance(torch.from_numpy(masks), spacing).double().numpy()
    scale = spacing[0] ** 2 if len(set(spacing)) == 1 else 1.0  # isotropic: squared voxels
    for mask, dist in zip(masks, got, strict=True):
        padded = np.pad(mask, 1)
        ref = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1] ** 2
        np.testing.assert_allclose(dist * scale, ref, rtol=1e-12, atol=1e-9)


def _cases(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (20, 18, 16)
    gt = np.stack([_blob(shape, rng.uniform(4, 12, 3), rng.uniform(3, 7)) for _ in range(batch)])
    pred = np.stack(
        [
            _blob(shape, rng.uniform(4, 12, 3), rng.uniform(2, 6))
            if b % 3
            else np.zeros(shape, bool)
            for b in range(batch)
        ]
    )
    pred[-1] = gt[-1]  # nothing left to correct
    return pred, gt


@pytest.mark.parametrize("name", ["center", "upstream", "random", "mixed"])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_same_clicks_and_generator_states_as_the_host_simulator(name, spacing) -> None:
    rng = np.random.default_rng(1)
    simulator = make_simulator(name)
    for _ in range(12):
        pred, gt = _cases(rng, batch=5)
        seeds = rng.integers(2**31, size=len(gt))
        steps = [int(s) for s in rng.integers(0, 4, size=len(gt))]
        host_rngs = [np.random.default_rng(s) for s in seeds]
        host = [
            simulator.next_click(p, g, r, spacing, s)
            for p, g, r, s in zip(pred, gt, host_rngs, steps, strict=True)
        ]
        torch_rngs = [np.random.default_rng(s) for s in seeds]
        batched = next_clicks(
            simulator, torch.from_numpy(pred), torch.from_numpy(gt), torch_rngs, spacing, steps
        )
        assert batched == host
        assert batched[-1] is None
        assert [r.random() for r in torch_rngs] == [r.random() for r in host_rngs]


def test_upstream_core_then_uniform_by_step() -> None:
    """Clicks 1-2 of the upstream rule come from the inner half of the larger error; later
    ones from anywhere in it (most of a ball lies in its outer half)."""
    shape = (24, 24, 24)
    gt = _blob(shape, np.array([12, 12, 12]), 9)
    pred = np.zeros(shape, bool)  # the error is the whole ball
    dist = ndimage.distance_transform_edt(np.pad(gt & ~pred, 1))[1:-1, 1:-1, 1:-1]
    sim = UpstreamClicker()
    depths = {0: [], 2: []}
    for step in depths:
        rngs = [np.random.default_rng(seed) for seed in range(40)]
        clicks = next_clicks(
            sim,
            torch.from_numpy(np.stack([pred] * 40)),
            torch.from_numpy(np.stack([gt] * 40)),
            rngs,
            (1.0, 1.0, 1.0),
            [step] * 40,
        )
        depths[step] = [dist[c.index] for c in clicks if c is not None]
    assert min(depths[0]) > dist.max() / 2
    assert min(depths[2]) < dist.max() / 2


def test_bad_input_is_named() -> None:
    pred = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    gt = torch.ones(2, 4, 4, 4, dtype=torch.bool)
    sim = make_simulator("center")
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="own generator"):
        next_clicks(sim, pred, gt, [rng, rng], (1.0,) * 3, [0, 0])
    with pytest.raises(InputError, match="2 samples but 1 generators"):
        next_clicks(sim, pred, gt, [rng], (1.0,) * 3, [0, 0])
    with pytest.raises(InputError, match=r"\(B, I, J, K\)"):
        next_clicks(sim, pred[0], gt[0], [rng], (1.0,) * 3, [0])
    with pytest.raises(InputError, match="no batched version"):
        next_clicks(object(), pred, gt, [rng, np.random.default_rng(1)], (1.0,) * 3, [0, 0])  # type: ignore[arg-type]


def test_training_step_gives_the_same_loss_with_either_backend() -> None:
    """The interactive step's click loop on the host and batched on the device (here both on
    the CPU): the same clicks, so the same loss to the last bit."""
    model = build_model("test-tiny", seed=0)
    config = parse_config(train_config("unused")).interactive
    assert config is not None
    config = dataclasses.replace(config, click_iterations=3, free_rounds=(1, 2))
    g = torch.Generator().manual_seed(3)
    image = torch.randn(2, 1, 32, 32, 32, generator=g)
    target = torch.zeros(2, 2, 32, 32, 32)
    target[0, 0, 4:20, 6:22, 8:26] = 1
    target[0, 1, 18:30, 2:12, 10:30] = 1
    target[1, 0, 10:28, 10:28, 4:14] = 1  # target[1, 1] stays empty
    losses = []
    for backend in ("host", "device"):
        step = InteractiveStep(
            model,
            dataclasses.replace(config, click_backend=backend),
            make_simulator("mixed"),
            seed=0,
        )
        with torch.no_grad():
            losses.append(float(step(image, target, torch.tensor([4, 7]))))
    assert losses[0] == losses[1]
