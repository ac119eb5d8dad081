"""Image detail packed into the embedding, and the decoder's detail refiner."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fastsam3d
from fastsam3d.build import build_model
from fastsam3d.modeling.detail import DetailRefiner, image_detail, pack, unpack
from fastsam3d.registry import get_spec

from ..conftest import tiny_inputs


def _with_refiner(name: str, channels: int = 8):
    cfg = get_spec(name).config
    return dataclasses.replace(
        cfg, decoder=dataclasses.replace(cfg.decoder, refine_channels=channels)
    )


def test_pack_and_unpack_are_inverse(gen: torch.Generator) -> None:
    x = torch.randn(2, 4, 16, 16, 16, generator=gen)
    packed = pack(x, 4)
    assert packed.shape == (2, 4 * 64, 4, 4, 4)
    assert torch.equal(unpack(packed, 4), x)
    # one embedding cell holds exactly the 4^3 block of detail cells above it
    assert torch.equal(packed[0, :64, 1, 2, 3], x[0, 0, 4:8, 8:12, 12:16].reshape(-1))


def test_image_detail_is_block_statistics() -> None:
    image = torch.zeros(1, 1, 8, 8, 8)
    image[0, 0, :4, :4, :4] = torch.arange(64, dtype=torch.float32).view(4, 4, 4)
    detail = image_detail(image, 4)
    assert detail.shape == (1, 4, 2, 2, 2)
    block = torch.arange(64, dtype=torch.float32)
    mean, high, low, std = detail[0, :, 0, 0, 0]
    assert mean == pytest.approx(block.mean().item())
    assert high == 63
    assert low == 0
    assert std == pytest.approx(block.std(unbiased=False).item(), rel=1e-4)
    assert torch.equal(detail[0, :, 1, 1, 1], torch.zeros(4))


def test_refiner_starts_as_identity_and_model_outputs_are_unchanged(
    gen: torch.Generator,
) -> None:
    plain = fastsam3d.load_model("test-tiny", seed=5, random_weights=True)
    refined = build_model(_with_refiner("test-tiny"), seed=9).eval()
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == []
    assert missing
    assert all(k.startswith("mask_decoder.refiner.") for k in missing)
    image, points, labels = tiny_inputs(plain, gen, batch=2)
    with torch.inference_mode():
        emb = refined.encode(image)
        assert emb.shape[1] == refined.embedding_channels == plain.cfg.prompt.embed_dim + 4 * 64
        vit, _, detail = refined.split_embedding(emb)
        assert torch.equal(vit, plain.encode(image))
        assert detail is not None
        assert detail.shape == (2, 4, 16, 16, 16)
        for multimask in (False, True):
            got = refined.decode(emb, points, labels, multimask=multimask)
            want = plain.decode(plain.encode(image), points, labels, multimask=multimask)
            assert torch.equal(got[0], want[0])
            assert torch.equal(got[1], want[1])


def test_trained_refiner_uses_the_image(gen: torch.Generator) -> None:
    model = build_model(_with_refiner("test-tiny"), seed=9).eval()
    refiner = model.mask_decoder.refiner
    assert isinstance(refiner, DetailRefiner)
    torch.nn.init.normal_(refiner.out.weight, generator=gen)
    image, points, labels = tiny_inputs(model, gen)
    with torch.inference_mode():
        a, _ = model.decode(model.encode(image), points, labels)
        b, _ = model.decode(model.encode(image * 3), points, labels)
    assert not torch.equal(a, b)


def test_decoder_without_detail_or_wrong_embedding(gen: torch.Generator) -> None:
    model = build_model(_with_refiner("test-tiny"), seed=9).eval()
    image, points, labels = tiny_inputs(model, gen)
    emb = model.encode(image)
    with pytest.raises(ValueError, match="embedding must be"):
        model.decode(emb[:, : model.cfg.prompt.embed_dim], points, labels)
    sparse, dense = model.prompt_embeddings(points, labels)
    vit = model.split_embedding(emb).vit
    with pytest.raises(ValueError, match="pass detail"):
        model.mask_decoder(vit, model.prompt_encoder.dense_pe(), sparse, dense, False)
    with pytest.raises(ValueError, match="refine_channels"):
        dataclasses.replace(model.cfg.decoder, refine_channels=-1)


def test_refiner_checkpoint_round_trip(tmp_path, gen: torch.Generator) -> None:
    from fastsam3d.checkpoint import save_native

    model = build_model(_with_refiner("test-tiny"), seed=9).eval()
    path = save_native(tmp_path / "r.safetensors", model.state_dict(), model.cfg, None)
    loaded = fastsam3d.load_model(None, path)
    assert loaded.cfg.decoder.refine_channels == 8
    image, points, labels = tiny_inputs(model, gen)
    with torch.inference_mode():
        torch.testing.assert_close(
            loaded.decode(loaded.encode(image), points, labels)[0],
            model.decode(model.encode(image), points, labels)[0],
        )


def test_load_model_adds_a_fresh_refiner_to_trained_weights(tmp_path, gen) -> None:
    from fastsam3d.build import CheckpointMismatchError
    from fastsam3d.checkpoint import save_native

    plain = fastsam3d.load_model("test-tiny", seed=5, random_weights=True)
    path = save_native(tmp_path / "plain.safetensors", plain.state_dict(), plain.cfg, None)
    cfg = _with_refiner("test-tiny")
    with pytest.raises(
        CheckpointMismatchError,
        match=r"another architecture than .*decoder\.refine_channels: 0 in the file, 8 named"
        r".*--model from-checkpoint",
    ):
        fastsam3d.load_model(cfg, path)
    refined = fastsam3d.load_model(cfg, path, fresh=["mask_decoder.refiner."])
    assert refined.mask_decoder.refiner is not None
    image, points, labels = tiny_inputs(plain, gen)
    with torch.inference_mode():
        torch.testing.assert_close(
            refined.decode(refined.encode(image), points, labels)[0],
            plain.decode(plain.encode(image), points, labels)[0],
            atol=0,
            rtol=0,
        )
    # only the named parts may be missing
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        fastsam3d.load_model(cfg, path, fresh=["mask_decoder.iou_prediction_head."])
