"""The click-similarity prompt: the maps themselves, and the decoder path that reads them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import fastsam3d
from fastsam3d.build import build_model
from fastsam3d.modeling.similarity import SimilarityPrompt, click_similarity

from ..conftest import tiny_inputs


def _embedding(gen: torch.Generator, b: int = 1, d: int = 6, g: int = 4) -> torch.Tensor:
    return torch.randn(b, d, g, g, g, generator=gen)


def test_a_click_on_a_token_centre_compares_every_token_with_that_token(gen) -> None:
    emb = _embedding(gen)
    # input 32^3, grid 4: token (1, 2, 3) is centred at voxel (i + 0.5) * 8 - 0.5
    centre = [(c + 0.5) * 8 - 0.5 for c in (1, 2, 3)]
    points = torch.tensor([[centre, [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, -1]])  # the second is padding
    maps = click_similarity(emb, points, labels, 32)
    assert maps.shape == (1, 2, 4, 4, 4)
    unit = F.normalize(emb, dim=1)
    want = torch.einsum("c,bcijk->bijk", unit[0, :, 1, 2, 3], unit)
    torch.testing.assert_close(maps[:, 0], want, atol=1e-6, rtol=1e-6)
    assert maps[0, 0, 1, 2, 3] == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(maps[:, 1], torch.zeros_like(maps[:, 1]))  # no negative click


def test_several_clicks_take_the_largest_similarity_per_kind(gen) -> None:
    emb = _embedding(gen)
    a = [(c + 0.5) * 8 - 0.5 for c in (0, 0, 0)]
    b = [(c + 0.5) * 8 - 0.5 for c in (3, 1, 2)]
    n = [(c + 0.5) * 8 - 0.5 for c in (2, 2, 2)]
    maps = click_similarity(emb, torch.tensor([[a, b, n]]), torch.tensor([[1, 1, 0]]), 32)
    unit = F.normalize(emb, dim=1)[0]
    sims = [
        torch.einsum("c,cijk->ijk", unit[:, i, j, k], unit) for i, j, k in ((0, 0, 0), (3, 1, 2))
    ]
    torch.testing.assert_close(maps[0, 0], torch.maximum(*sims), atol=1e-6, rtol=1e-6)
    neg = torch.einsum("c,cijk->ijk", unit[:, 2, 2, 2], unit)
    torch.testing.assert_close(maps[0, 1], neg, atol=1e-6, rtol=1e-6)


def test_a_click_between_tokens_mixes_them_and_one_embedding_serves_a_batch(gen) -> None:
    emb = _embedding(gen)
    centre = [(c + 0.5) * 8 - 0.5 for c in range(4)]
    between = [centre[1], (centre[1] + centre[2]) / 2, centre[3]]  # j halfway from 1 to 2
    points = torch.tensor([[between], [[centre[0]] * 3]])
    labels = torch.tensor([[1], [0]])
    maps = click_similarity(emb, points, labels, 32)  # (1, ...) embedding, two prompt sets
    unit = F.normalize(emb, dim=1)[0]
    query = F.normalize(0.5 * unit[:, 1, 1, 3] + 0.5 * unit[:, 1, 2, 3], dim=0)
    torch.testing.assert_close(
        maps[0, 0], torch.einsum("c,cijk->ijk", query, unit), atol=1e-5, rtol=1e-5
    )
    assert torch.equal(maps[1, 0], torch.zeros_like(maps[1, 0]))  # only a negative click
    assert maps[1, 1, 0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    single = click_similarity(emb, points[1:], labels[1:], 32)
    torch.testing.assert_close(maps[1:], single)


def test_the_decoder_path_starts_closed_and_then_follows_the_clicked_tissue(gen) -> None:
    base = fastsam3d.get_spec("test-tiny-hires").config
    cfg = dataclasses.replace(
        base, decoder=dataclasses.replace(base.decoder, click_similarity=True)
    )
    model = build_model(cfg, seed=5).eval()
    plain = build_model(base, seed=5).eval()
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra
    assert all(k.startswith("mask_decoder.similarity.") for k in extra)
    plain.load_state_dict(model.state_dict(), strict=False)
    image, points, labels = tiny_inputs(model, gen, batch=2, n_points=2)
    zeros = torch.zeros(2, 1, 16, 16, 16)
    with torch.inference_mode():
        emb = model.encode(image)
        start = model.decode(emb, points, labels, zeros)[0]
        torch.testing.assert_close(start, plain.decode(emb, points, labels, zeros)[0])
        sim = model.mask_decoder.similarity
        assert sim is not None
        sim.fine.weight.normal_(generator=gen)
        sim.coarse.weight.normal_(generator=gen)
        assert sim.mix is not None
        sim.mix.weight.normal_(generator=gen)
        opened = model.decode(emb, points, labels, zeros)[0]
        assert not torch.allclose(opened, start)
        # the same clicks on another image change the maps, hence the mask
        other = model.encode(torch.randn(image.shape, generator=gen))
        d = cfg.prompt.embed_dim
        swapped = emb.clone()
        swapped[:, :d] = other[:, :d]
        assert not torch.allclose(model.decode(swapped, points, labels, zeros)[0], opened)
    with pytest.raises(ValueError, match="click_similarity"):
        dataclasses.replace(
            base,
            decoder=dataclasses.replace(
                base.decoder, click_similarity=True, refine_with_features=True
            ),
        )
    assert fastsam3d.ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_each_mask_token_weighs_the_maps_into_its_own_logits(gen) -> None:
    prompt = SimilarityPrompt(dim=8, fine_channels=4)
    maps = torch.rand(2, 2, 4, 4, 4, generator=gen) * 2 - 1
    tokens = torch.randn(2, 3, 8, generator=gen)
    assert torch.equal(prompt.logits(maps, tokens), torch.zeros(2, 3, 16, 16, 16))
    assert prompt.mix is not None
    with torch.no_grad():
        prompt.mix.weight.normal_(generator=gen)
        prompt.mix.bias.normal_(generator=gen)
    got = prompt.logits(maps, tokens)
    up = F.interpolate(maps, size=(16, 16, 16), mode="trilinear", align_corners=False)
    mix = SimilarityPrompt.GAIN * (tokens @ prompt.mix.weight.T + prompt.mix.bias)
    for b in range(2):
        for m in range(3):
            want = mix[b, m, 0] * up[b, 0] + mix[b, m, 1] * up[b, 1] + mix[b, m, 2]
            torch.testing.assert_close(got[b, m], want, atol=1e-5, rtol=1e-5)
    bare = SimilarityPrompt(dim=8, fine_channels=4, logits=False)
    assert bare.mix is None
    assert "mix.weight" not in bare.state_dict()
    with pytest.raises(RuntimeError, match="similarity_logits"):
        bare.logits(maps, tokens)
    base = fastsam3d.get_spec("test-tiny-hires").config
    cfg = dataclasses.replace(
        base,
        decoder=dataclasses.replace(base.decoder, click_similarity=True, similarity_logits=False),
    )
    model = build_model(cfg, seed=5).eval()
    assert not any(".mix." in k for k in model.state_dict())
    image, points, labels = tiny_inputs(model, gen, batch=1, n_points=2)
    with torch.inference_mode():
        assert model.decode(model.encode(image), points, labels)[0].shape == (1, 1, 16, 16, 16)
