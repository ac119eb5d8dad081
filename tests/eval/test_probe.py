"""The image-dependence probe."""

from __future__ import annotations

import numpy as np
import pytest
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
    model = fastsam3d.load_model("test-tiny-hires", seed=1, random_weights=True)
    volume, ball = _volume_with_ball()
    blind = image_dependence(_Blind(model), volume, [("ball", ball)])
    assert len(blind) == 1
    assert blind[0].structure == "ball"
    assert blind[0].changed == 0.0
    seeing = image_dependence(model, volume, [("ball", ball)])
    assert seeing[0].voxels >= 0
    assert seeing[0].changed > 0.0


def test_empty_structures_are_skipped() -> None:
    model = fastsam3d.load_model("test-tiny-hires", seed=1, random_weights=True)
    volume, ball = _volume_with_ball()
    assert image_dependence(model, volume, [("none", np.zeros_like(ball))]) == []


def test_the_parts_say_which_path_the_decoder_uses() -> None:
    """A model whose ViT embedding is blind (constant) but whose features see the image: the
    ViT part scores zero, the feature part and the whole do not."""
    model = fastsam3d.load_model("test-tiny-hires", seed=1, random_weights=True)
    volume, ball = _volume_with_ball()
    d = model.cfg.prompt.embed_dim
    s = model.cfg.image_size
    with torch.inference_mode():
        fixed = model.encode(torch.ones(1, 1, s, s, s))

    class _BlindViT(_Blind):
        def encode(self, image: torch.Tensor) -> torch.Tensor:
            seen = self.model.encode(image)
            return torch.cat([fixed[:, :d], seen[:, d:]], dim=1)

    blind_vit = _BlindViT(model)
    assert image_dependence(blind_vit, volume, [("ball", ball)], replace="vit")[0].changed == 0
    assert image_dependence(blind_vit, volume, [("ball", ball)], replace="features")[0].changed > 0
    assert image_dependence(blind_vit, volume, [("ball", ball)])[0].changed > 0


def test_parts_need_a_model_with_features() -> None:
    model = fastsam3d.load_model("test-tiny", seed=1, random_weights=True)
    volume, ball = _volume_with_ball()
    with pytest.raises(ValueError, match="feature_channels"):
        image_dependence(model, volume, [("ball", ball)], replace="vit")
    with pytest.raises(ValueError, match="expected one of all, vit, features"):
        image_dependence(model, volume, [("ball", ball)], replace="neck")
