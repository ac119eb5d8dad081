"""The encoder probe: attention entropy, token spread and image change per block."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastsam3d.build import build_model, get_spec
from fastsam3d.train.encoder_probe import encoder_stats, format_stats, main


def _global_tiny(**changes: object):
    spec = get_spec("test-tiny")
    enc = dataclasses.replace(spec.config.encoder, window_size=0, global_attn_indexes=(), **changes)
    return build_model(dataclasses.replace(spec.config, encoder=enc), seed=3).eval()


def test_probabilities_reproduce_the_attention_output() -> None:
    model = _global_tiny(attn_distance_bias=True)
    attention = model.image_encoder.blocks[0].attn
    assert attention is not None
    with torch.no_grad():
        for p in attention.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.2)
        x = torch.randn(1, 4, 4, 4, 32, generator=torch.Generator().manual_seed(1))
        probs = attention.probabilities(x)
        assert torch.allclose(probs.sum(-1), torch.ones(1, 4, 64))
        _, _, v = attention._project(x.reshape(1, 64, 32))
        by_hand = attention.proj((probs @ v).transpose(1, 2).reshape(1, 4, 4, 4, 32))
        assert torch.allclose(by_hand, attention(x), atol=1e-5)


def test_zero_queries_give_uniform_attention_and_a_constant_image_no_change() -> None:
    model = _global_tiny()
    encoder = model.image_encoder
    with torch.no_grad():
        for block in encoder.blocks:
            if block.attn is not None:
                block.attn.qkv.weight[: 2 * 32].zero_()  # q and k rows
                block.attn.qkv.bias.zero_()
    image = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    rows = encoder_stats(model, image)
    assert [r.block for r in rows] == [0, *range(1, len(encoder.blocks) + 1), -1]
    entropies = [r.attention_entropy for r in rows if r.attention_entropy is not None]
    assert entropies
    assert all(e == pytest.approx(1.0, abs=1e-6) for e in entropies)
    assert all(r.image_change > 0 for r in rows)
    blank = encoder_stats(model, torch.zeros_like(image))
    assert all(r.image_change == 0 for r in blank)
    table = format_stats(rows)
    assert table.count("\n") == len(rows) + 1
    assert "| neck |" in table


def test_command_prints_the_table_for_the_bundled_model(capsys) -> None:
    main(["--sample", "ct", "--structure", "spleen"])
    out = capsys.readouterr().out
    assert out.startswith("| block |")
    assert "| neck |" in out
    assert "| 6 |" in out
