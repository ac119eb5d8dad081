"""The prototype loss on the image embedding: what lowers it, where its gradient goes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastsam3d.build import build_model
from fastsam3d.eval.clicks import make_simulator
from fastsam3d.train.config import parse_config
from fastsam3d.train.objectives import InteractiveStep, prototype_loss

from .conftest import train_config


def _two_structures(size: int = 32) -> torch.Tensor:
    """``(1, 2, S, S, S)``: a left and a right half-box, aligned to 8^3 token cells."""
    target = torch.zeros(1, 2, size, size, size)
    target[0, 0, :, :, : size // 2] = 1
    target[0, 1, :, :, size // 2 :] = 1
    return target


def test_separating_the_structures_lowers_the_loss() -> None:
    target = _two_structures()
    g = torch.Generator().manual_seed(0)
    constant = torch.ones(1, 16, 8, 8, 8)
    random = torch.randn(1, 16, 8, 8, 8, generator=g)
    separated = torch.zeros(1, 16, 8, 8, 8)
    separated[:, 0, :, :, :4] = 1  # left tokens point one way, right tokens another
    separated[:, 1, :, :, 4:] = 1
    losses = [float(prototype_loss(e, target)) for e in (constant, random, separated)]
    assert losses[2] < 0.1
    assert losses[2] < losses[1]
    assert losses[2] < losses[0]


def test_gradient_reaches_the_embedding_and_absent_structures_are_ignored() -> None:
    target = torch.cat([_two_structures(), torch.zeros(1, 1, 32, 32, 32)], dim=1)  # 3rd absent
    embedding = torch.randn(1, 16, 8, 8, 8, requires_grad=True)
    loss = prototype_loss(embedding, target)
    loss.backward()
    assert embedding.grad is not None
    assert torch.isfinite(embedding.grad).all()
    assert embedding.grad.abs().sum() > 0
    only_present = prototype_loss(embedding.detach(), target[:, :2])
    assert float(loss.detach()) == pytest.approx(float(only_present))
    assert float(prototype_loss(embedding.detach(), torch.zeros(1, 2, 32, 32, 32))) == 0.0


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_the_step_adds_it_only_when_asked(weight: float) -> None:
    model = build_model("test-tiny", seed=0)
    config = parse_config(train_config("unused")).interactive
    assert config is not None
    config = dataclasses.replace(config, embedding_loss_weight=weight, click_iterations=2)
    image = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    target = _two_structures()
    step = InteractiveStep(model, config, make_simulator("random"), seed=0)
    with_aux = step(image, target, torch.tensor([0]))
    plain = InteractiveStep(
        model, dataclasses.replace(config, embedding_loss_weight=0.0), make_simulator("random"), 0
    )(image, target, torch.tensor([0]))
    expected = prototype_loss(model.encode(image), target) if weight else torch.zeros(())
    torch.testing.assert_close(with_aux - plain, weight * expected, atol=1e-5, rtol=1e-4)


def _loss(step: InteractiveStep, image: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        return float(step(image, target, torch.tensor([0])))


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_feature_dropout_hides_the_features_from_the_decoder(dropout: float) -> None:
    """With every target's features dropped the loss no longer depends on the feature heads;
    without dropout it does."""
    model = build_model("test-tiny-hires", seed=0)
    config = parse_config(train_config("unused")).interactive
    assert config is not None
    config = dataclasses.replace(config, feature_dropout=dropout, click_iterations=2)
    step = InteractiveStep(model, config, make_simulator("random"), seed=0)
    image = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(1))
    target = _two_structures(64)
    before = _loss(step, image, target)
    assert model.image_encoder.features is not None
    with torch.no_grad():
        for p in model.image_encoder.features.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    after = _loss(step, image, target)
    if dropout == 1.0:
        assert after == pytest.approx(before, abs=1e-6)
    else:
        assert abs(after - before) > 1e-4


def test_feature_dropout_needs_features_and_a_probability() -> None:
    config = parse_config(train_config("unused")).interactive
    assert config is not None
    with pytest.raises(ValueError, match="feature_channels"):
        InteractiveStep(
            build_model("test-tiny", seed=0),
            dataclasses.replace(config, feature_dropout=0.5),
            make_simulator("random"),
            seed=0,
        )
    with pytest.raises(ValueError, match=r"feature_dropout must be in \[0, 1\], got 1.5"):
        dataclasses.replace(config, feature_dropout=1.5)


def test_vit_path_loss_is_the_loss_from_the_embedding_alone() -> None:
    """One round: the added term is ``weight`` x the loss of the same click decoded with the
    features zeroed (what ``feature_dropout = 1`` trains on)."""
    model = build_model("test-tiny-hires", seed=0)
    config = parse_config(train_config("unused")).interactive
    assert config is not None
    one = dataclasses.replace(config, click_iterations=1, free_rounds=(0, 0))
    image = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(1))
    target = _two_structures(64)
    assert model.image_encoder.features is not None
    with torch.no_grad():  # features that matter, so both paths differ clearly
        for p in model.image_encoder.features.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))

    def loss(**changes: float) -> float:
        step_config = dataclasses.replace(one, **changes)
        return _loss(
            InteractiveStep(model, step_config, make_simulator("random"), 0), image, target
        )

    plain, both, vit_alone = loss(), loss(vit_path_weight=0.5), loss(feature_dropout=1.0)
    assert abs(vit_alone - plain) > 1e-4  # the features matter to the full path (~3e-4)
    assert both - plain == pytest.approx(0.5 * vit_alone, abs=1e-5)


def test_vit_path_needs_features_and_a_weight() -> None:
    config = parse_config(train_config("unused")).interactive
    assert config is not None
    with pytest.raises(ValueError, match=r"vit_path_weight = 0\.5 needs a model"):
        InteractiveStep(
            build_model("test-tiny", seed=0),
            dataclasses.replace(config, vit_path_weight=0.5),
            make_simulator("random"),
            seed=0,
        )
    with pytest.raises(ValueError, match=r"vit_path_weight must be >= 0, got -1\.0"):
        dataclasses.replace(config, vit_path_weight=-1.0)
