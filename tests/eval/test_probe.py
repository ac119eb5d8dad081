"""The image-dependence probe."""

from __future__ import annotations

import numpy as np
import torch

import fastsam3d
from fastsam3d.data.volume import Volume
from fastsam3d.eval.probe import image_dependence


def _volume_with_ball() -> tuple[Volume, np.ndarray]:
    rng = np.random.default_rng(0)
    array = rng.normal(100, 5, (48, 48, 48)).astype(np.float32)
    grid = np.indices(array.shape)
    ball = ((grid - np.array([24, 22, 26])[:, None, None, None]) ** 2).sum(0) < 64
    array[ball] += 300
    return Volume.from_array(array, (2.0, 2.0, 2.0)), ball


class _Blind:
    """A model whose embedding does not depend on the image (the 'blob around the click')."""

    def __init__(self, model: fastsam3d.Sam3D) -> None:
        self.model, self.cfg = model, model.cfg
        self.device, self.dtype = model.device, model.dtype
        s = model.cfg.image_size
        with torch.inference_mode():
            self.fixed = model.encode(torch.ones(1, 1, s, s, s))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.fixed

    def decode(self, *args, **kwargs):
        return self.model.decode(*args, **kwargs)


def test_a_blind_model_scores_zero_and_a_seeing_one_does_not() -> None:
    model = fastsam3d.load_model("test-tiny-hires", seed=1)
    volume, ball = _volume_with_ball()
    blind = image_dependence(_Blind(model), volume, [("ball", ball)])
    assert len(blind) == 1
    assert blind[0].structure == "ball"
    assert blind[0].changed == 0.0
    seeing = image_dependence(model, volume, [("ball", ball)])
    assert seeing[0].voxels >= 0
    assert seeing[0].changed > 0.0


def test_empty_structures_are_skipped() -> None:
    model = fastsam3d.load_model("test-tiny-hires", seed=1)
    volume, ball = _volume_with_ball()
    assert image_dependence(model, volume, [("none", np.zeros_like(ball))]) == []
