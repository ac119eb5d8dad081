"""The decoder's fine stage: logits at ``S/2`` from the encoder's ``S/2`` features."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import fastsam3d
from fastsam3d.build import build_model
from fastsam3d.errors import InputError
from fastsam3d.modeling.detail import pack, unpack
from fastsam3d.modeling.fine_stage import FineStage

from ..conftest import tiny_inputs


def _fine_config(channels: int = 4) -> fastsam3d.ModelConfig:
    base = fastsam3d.get_spec("test-tiny-hires").config
    return dataclasses.replace(
        base,
        encoder=dataclasses.replace(base.encoder, fine_feature_channels=channels),
        decoder=dataclasses.replace(base.decoder, fine_stage=True),
    )


def test_a_model_that_gains_the_stage_draws_its_old_masks_on_the_finer_grid(gen) -> None:
    base = fastsam3d.get_spec("test-tiny-hires").config
    cfg = _fine_config()
    plain = build_model(base, seed=5).eval()
    model = build_model(cfg, seed=5).eval()
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra
    assert all(
        k.startswith(("mask_decoder.fine_stage.", "image_encoder.fine_features.")) for k in extra
    )
    model.load_state_dict(plain.state_dict(), strict=False)
    assert (cfg.low_res_size, base.low_res_size) == (32, 16)
    assert model.prompt_encoder.mask_size == 32
    image, points, labels = tiny_inputs(model, gen, batch=2, n_points=2)
    previous = torch.randn(2, 1, 32, 32, 32, generator=gen)
    with torch.inference_mode():
        emb, plain_emb = model.encode(image), plain.encode(image)
        assert emb.shape[1] == plain_emb.shape[1] + 4 * 8**3
        torch.testing.assert_close(emb[:, : plain_emb.shape[1]], plain_emb)
        for prev, plain_prev in ((None, None), (previous, F.avg_pool3d(previous, 2))):
            got, iou = model.decode(emb, points, labels, prev)
            want, plain_iou = plain.decode(plain_emb, points, labels, plain_prev)
            assert got.shape == (2, 1, 32, 32, 32)
            up = F.interpolate(want, size=(32,) * 3, mode="trilinear", align_corners=False)
            torch.testing.assert_close(got, up, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(iou, plain_iou)
        many, _ = model.decode(emb, points, labels, multimask=True)
        assert many.shape == (2, 3, 32, 32, 32)
        with pytest.raises(ValueError, match=r"mask_logits must be \(2, 1, 32, 32, 32\)"):
            model.decode(emb, points, labels, torch.zeros(2, 1, 16, 16, 16))


def test_once_trained_the_fine_masks_follow_the_image_at_half_resolution(gen) -> None:
    model = build_model(_fine_config(), seed=5).eval()
    stage = model.mask_decoder.fine_stage
    assert stage is not None
    with torch.no_grad():
        for mlp in stage.hypernetworks:
            mlp.layers[-1].weight.normal_(generator=gen)
    image, points, labels = tiny_inputs(model, gen, n_points=2)
    with torch.inference_mode():
        emb = model.encode(image)
        parts = model.split_embedding(emb)
        _, features = model.image_encoder.forward_features(image)
        assert [f.shape[-1] for f in parts.features] == [8, 16, 16]
        torch.testing.assert_close(unpack(parts.features[2], 2), features[2])
        torch.testing.assert_close(parts.features[2], pack(features[2], 2))
        for got, want in zip(parts.features[:2], features[:2], strict=True):
            torch.testing.assert_close(got, want)
        logits = model.decode(emb, points, labels)[0]
        stage.zero_output()
        assert not torch.allclose(model.decode(emb, points, labels)[0], logits)
        with torch.no_grad():
            for mlp in stage.hypernetworks:
                mlp.layers[-1].weight.normal_(generator=gen)
        logits = model.decode(emb, points, labels)[0]
        # only the S/2 features of another image: the fine masks change, and only there
        other = model.encode(torch.randn(image.shape, generator=gen))
        start = emb.shape[1] - 4 * 8**3
        swapped = emb.clone()
        swapped[:, start:] = other[:, start:]
        changed = model.decode(swapped, points, labels)[0]
        assert not torch.allclose(changed, logits)


def test_the_upscaling_step_is_a_two_cubed_transposed_convolution(gen) -> None:
    stage = FineStage(token_dim=8, in_channels=6, channels=3, num_masks=1)
    conv = torch.nn.ConvTranspose3d(6, 3, kernel_size=2, stride=2)
    with torch.no_grad():
        stage.up.weight.normal_(generator=gen)
        stage.up.bias.normal_(generator=gen)
        # output channel (c, a, b, d) of the 1x1 conv is sub-cell (a, b, d) of channel c
        conv.weight.copy_(stage.up.weight[:, :, 0, 0, 0].T.reshape(6, 3, 2, 2, 2))
        conv.bias.copy_(stage.up.bias.view(3, 8)[:, 0])
        stage.up.bias.copy_(conv.bias.repeat_interleave(8))
    cube = torch.randn(2, 6, 4, 4, 4, generator=gen)
    torch.testing.assert_close(unpack(stage.up(cube), 2), conv(cube), atol=1e-5, rtol=1e-5)


def test_the_stage_and_its_features_come_together() -> None:
    base = fastsam3d.get_spec("test-tiny-hires").config
    with pytest.raises(InputError, match="come together"):
        dataclasses.replace(base, decoder=dataclasses.replace(base.decoder, fine_stage=True))
    with pytest.raises(InputError, match="come together"):
        dataclasses.replace(
            base, encoder=dataclasses.replace(base.encoder, fine_feature_channels=4)
        )
    with pytest.raises(InputError, match="needs feature_channels"):
        dataclasses.replace(base.encoder, feature_channels=(), fine_feature_channels=4)
    cfg = _fine_config()
    with pytest.raises(InputError, match="refiners"):
        dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, refine_channels=8))
    assert fastsam3d.ModelConfig.from_dict(cfg.to_dict()) == cfg
