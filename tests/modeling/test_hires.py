"""The lite layout's additions: conv stem, high-resolution features for the decoder, the fine
prompt path, and the model's own prompting default."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import fastsam3d
from fastsam3d.build import build_meta, build_model
from fastsam3d.config import DecoderConfig, EncoderConfig, ModelConfig, PromptEncoderConfig
from fastsam3d.interactive.session import Session, model_prompting
from fastsam3d.modeling.detail import pack

from ..conftest import tiny_inputs


@pytest.fixture
def hires() -> fastsam3d.Sam3D:
    return fastsam3d.load_model("test-tiny-hires", seed=5, random_weights=True)


def test_embedding_packs_the_features_and_splits_back(hires, gen) -> None:
    cfg = hires.cfg
    assert cfg.embedding_grid == 4
    image, _, _ = tiny_inputs(hires, gen, batch=2)
    with torch.inference_mode():
        emb = hires.encode(image)
        vit, features = hires.image_encoder.forward_features(image)
    f8, f4 = cfg.encoder.feature_channels
    assert (
        emb.shape == (2, 48 + f8 * 8 + f4 * 64, 4, 4, 4) == (2, hires.embedding_channels, 4, 4, 4)
    )
    assert [tuple(f.shape) for f in features] == [(2, f8, 8, 8, 8), (2, f4, 16, 16, 16)]
    parts = hires.split_embedding(emb)
    assert torch.equal(parts.vit, vit)
    assert all(torch.equal(a, b) for a, b in zip(parts.features, features, strict=True))
    assert parts.detail is None
    assert torch.equal(torch.cat([vit, pack(features[0], 2), pack(features[1], 4)], 1), emb)


def test_decoder_uses_the_features_and_the_fine_prompt(hires, gen) -> None:
    image, points, labels = tiny_inputs(hires, gen, batch=1, n_points=2)
    zeros = torch.zeros(1, 1, 16, 16, 16)
    with torch.inference_mode():
        emb = hires.encode(image)
        base = hires.decode(emb, points, labels, zeros)[0]
        d = hires.cfg.prompt.embed_dim
        no_features = emb.clone()
        no_features[:, d:] = 0
        assert not torch.allclose(hires.decode(no_features, points, labels, zeros)[0], base)
        # the previous logits reach the last stage directly (1x1 conv): a change in one cell of
        # the mask input changes that cell's logit
        previous = zeros.clone()
        previous[0, 0, 3, 4, 5] = 20.0
        changed = hires.decode(emb, points, labels, previous)[0] - base
        assert changed[0, 0, 3, 4, 5].abs() > 0
    # a shared embedding decodes several prompt sets as separate ones do
    pts = torch.cat([points, points.flip(1)])
    lab = torch.cat([labels, labels.flip(1)])
    with torch.inference_mode():
        both = hires.decode(emb, pts, lab, zeros.expand(2, -1, -1, -1, -1))[0]
        second = hires.decode(emb, pts[1:], lab[1:], zeros)[0]
    torch.testing.assert_close(both[:1], base, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


def test_upstream_layouts_are_unchanged() -> None:
    for name in ("sam-med3d", "fastsam3d", "fastsam3d-teacher"):
        cfg = fastsam3d.get_spec(name).config
        assert not cfg.encoder.stem_channels
        assert not cfg.encoder.feature_channels
        assert not cfg.decoder.image_features
        assert cfg.prompt.fine_channels == 0
        assert cfg.prompt.prompting == "newest"
        model = build_meta(cfg)
        assert model.image_encoder.stem is None
        assert model.image_encoder.patch_embed is not None


def test_invalid_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="needs patch_size 16"):
        EncoderConfig(img_size=64, patch_size=8, stem_channels=(8, 16))
    with pytest.raises(ValueError, match="needs a stem"):
        EncoderConfig(feature_channels=(8, 4))
    base = fastsam3d.get_spec("test-tiny-hires").config
    wider = dataclasses.replace(base.decoder, upscale_channels=(16, 8))
    with pytest.raises(ValueError, match="upscale widths"):
        dataclasses.replace(base, decoder=wider)
    without = dataclasses.replace(base.decoder, image_features=False)
    with pytest.raises(ValueError, match="image_features is off"):
        dataclasses.replace(base, decoder=without)
    with pytest.raises(ValueError, match="fine_channels needs click_maps"):
        PromptEncoderConfig(fine_channels=8)
    with pytest.raises(ValueError, match="prompting must be one of"):
        PromptEncoderConfig(prompting="every")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two widths"):
        DecoderConfig(upscale_channels=(8,))


def test_checkpoint_round_trip(tmp_path, hires, gen) -> None:
    path = fastsam3d.save_native(
        tmp_path / "m.safetensors", hires.state_dict(), hires.cfg, "test-tiny-hires"
    )
    loaded = fastsam3d.load_model(None, path)
    assert loaded.cfg == hires.cfg
    image, points, labels = tiny_inputs(hires, gen)
    with torch.inference_mode():
        emb = hires.encode(image)
        torch.testing.assert_close(loaded.encode(image), emb)
        torch.testing.assert_close(
            loaded.decode(emb, points, labels)[0], hires.decode(emb, points, labels)[0]
        )


def test_sessions_prompt_as_the_model_was_trained(hires, tiny_model) -> None:
    assert model_prompting(hires) == "all"
    assert model_prompting(tiny_model) == "newest"
    volume = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    session = Session(hires, runtime="torch")
    assert session.prompting == "all"
    assert Session(hires, runtime="torch", prompting="newest").prompting == "newest"
    assert Session(tiny_model, runtime="torch").prompting == "newest"
    session.set_image(volume)
    session.add_click((20, 20, 20))
    session.add_click((10, 12, 14), positive=False)
    assert len(session.prompts) == 2


def test_the_lite_config_round_trips() -> None:
    cfg = fastsam3d.get_spec("test-tiny-hires").config
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert build_model(cfg, seed=0).image_encoder.stem is not None


def test_feature_gates_start_closed_and_scale_the_features(gen) -> None:
    base = fastsam3d.get_spec("test-tiny-hires").config
    gated_cfg = dataclasses.replace(
        base, decoder=dataclasses.replace(base.decoder, feature_gates=True)
    )
    gated = build_model(gated_cfg, seed=5).eval()
    plain = build_model(base, seed=5).eval()
    assert set(gated.state_dict()) - set(plain.state_dict()) == {
        "mask_decoder.feature_gate8",
        "mask_decoder.feature_gate4",
    }
    image, points, labels = tiny_inputs(gated, gen, batch=1, n_points=2)
    zeros = torch.zeros(1, 1, 16, 16, 16)
    d = base.prompt.embed_dim
    with torch.inference_mode():
        emb = gated.encode(image)
        no_features = emb.clone()
        no_features[:, d:] = 0
        closed = gated.decode(emb, points, labels, zeros)[0]
        assert torch.equal(closed, gated.decode(no_features, points, labels, zeros)[0])
        gated.mask_decoder.feature_gate8.fill_(1.0)
        gated.mask_decoder.feature_gate4.fill_(1.0)
        plain.load_state_dict(gated.state_dict(), strict=False)
        opened = gated.decode(emb, points, labels, zeros)[0]
        torch.testing.assert_close(opened, plain.decode(emb, points, labels, zeros)[0])
        assert not torch.allclose(opened, closed)
    with pytest.raises(ValueError, match="feature_gates"):
        dataclasses.replace(
            base,
            encoder=dataclasses.replace(base.encoder, feature_channels=()),
            decoder=dataclasses.replace(base.decoder, image_features=False, feature_gates=True),
        )


def _refining(base: ModelConfig) -> ModelConfig:
    return dataclasses.replace(
        base, decoder=dataclasses.replace(base.decoder, refine_with_features=True)
    )


def test_feature_refiner_starts_from_the_vit_mask_and_then_reads_the_features(gen) -> None:
    """With ``refine_with_features`` the untrained refiner returns the mask decoded from the
    ViT's embedding alone (the features cannot change it); once its output layer is non-zero,
    they do, also when one embedding is shared by several prompt sets."""
    base = fastsam3d.get_spec("test-tiny-hires").config
    model = build_model(_refining(base), seed=5).eval()
    plain = build_model(base, seed=5).eval()
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra
    assert all(k.startswith("mask_decoder.feature_refiner.") for k in extra)
    image, points, labels = tiny_inputs(model, gen, batch=2, n_points=2)
    zeros = torch.zeros(2, 1, 16, 16, 16)
    d = base.prompt.embed_dim
    with torch.inference_mode():
        emb = model.encode(image)
        no_features = emb.clone()
        no_features[:, d:] = 0
        start = model.decode(emb, points, labels, zeros)[0]
        assert torch.equal(start, model.decode(no_features, points, labels, zeros)[0])
        refiner = model.mask_decoder.feature_refiner
        assert refiner is not None
        refiner.out.weight.normal_(generator=torch.Generator().manual_seed(0))
        refined = model.decode(emb, points, labels, zeros)[0]
        assert not torch.allclose(refined, start)
        assert not torch.allclose(refined, model.decode(no_features, points, labels, zeros)[0])
        # one shared embedding for both prompt sets gives the same masks as a batch of two
        # (to float32 rounding: the kernels block a batch of two differently from a batch of
        # one, 1.3e-5 apart on one machine; a mix-up of prompts or embeddings is O(1))
        shared = model.decode(emb[:1], points[:1].repeat(2, 1, 1), labels[:1].repeat(2, 1), zeros)
        torch.testing.assert_close(
            shared[0][0],
            model.decode(emb[:1], points[:1], labels[:1], zeros[:1])[0][0],
            rtol=1e-4,
            atol=1e-4,
        )
        # multimask output: every candidate is refined on its own
        multi = model.decode(emb, points, labels, zeros, multimask=True)[0]
        assert multi.shape == (2, 3, 16, 16, 16)


def test_feature_refiner_config_errors() -> None:
    base = fastsam3d.get_spec("test-tiny-hires").config
    with pytest.raises(ValueError, match="refine_with_features needs"):
        dataclasses.replace(
            base,
            encoder=dataclasses.replace(base.encoder, feature_channels=()),
            decoder=dataclasses.replace(
                base.decoder, image_features=False, refine_with_features=True
            ),
        )
    with pytest.raises(ValueError, match="exclude each other"):
        dataclasses.replace(
            base,
            decoder=dataclasses.replace(
                base.decoder, feature_gates=True, refine_with_features=True
            ),
        )
    assert ModelConfig.from_dict(_refining(base).to_dict()) == _refining(base)


def test_centred_tokens_make_the_embedding_blind_to_a_shared_token_offset(gen) -> None:
    """``center_tokens``: adding one vector to every token before the neck changes nothing;
    without it the same offset changes the embedding."""
    base = fastsam3d.get_spec("test-tiny-hires").config
    centred_cfg = dataclasses.replace(
        base, encoder=dataclasses.replace(base.encoder, center_tokens=True)
    )
    centred = build_model(centred_cfg, seed=5).eval()
    plain = build_model(base, seed=5).eval()
    assert set(centred.state_dict()) == set(plain.state_dict())
    g, c = base.embedding_grid, base.encoder.embed_dim
    tokens = torch.randn(2, g, g, g, c, generator=torch.Generator().manual_seed(3))
    offset = 50.0 * torch.randn(1, 1, 1, 1, c, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        head = centred.image_encoder.head
        torch.testing.assert_close(head(tokens + offset), head(tokens), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(
            plain.image_encoder.head(tokens + offset), plain.image_encoder.head(tokens), atol=1e-2
        )
        image, _, _ = tiny_inputs(centred, gen, batch=1)
        assert centred.encode(image).shape == plain.encode(image).shape
