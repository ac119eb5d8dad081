"""LayerScale in the encoder blocks (``EncoderConfig.layer_scale_init``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastsam3d.build import build_model, get_spec
from fastsam3d.config import EncoderConfig
from fastsam3d.modeling.image_encoder import Block3D


def _tiny_encoder(**changes: object) -> EncoderConfig:
    return dataclasses.replace(get_spec("test-tiny").config.encoder, **changes)


@pytest.mark.parametrize("formula", ["prenorm", "fastsam3d"])
def test_layer_scale_multiplies_each_branch(formula: str) -> None:
    plain_cfg = _tiny_encoder(block_formula=formula)
    scaled_cfg = _tiny_encoder(block_formula=formula, layer_scale_init=0.1)
    plain, scaled = Block3D(plain_cfg, 3), Block3D(scaled_cfg, 3)
    missing, unexpected = scaled.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["ls1", "ls2"]
    assert not unexpected
    assert scaled.ls1 is not None
    assert scaled.ls2 is not None
    assert torch.all(scaled.ls1 == 0.1)
    assert torch.all(scaled.ls2 == 0.1)
    x = torch.randn(2, 4, 4, 4, plain_cfg.embed_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scaled.ls1.fill_(1.0)
        scaled.ls2.fill_(1.0)
        assert torch.allclose(scaled(x), plain(x), atol=1e-6)
        scaled.ls1.fill_(0.0)
        scaled.ls2.fill_(0.0)
        expected = x if formula == "prenorm" else scaled.norm2(x)
        assert torch.allclose(scaled(x), expected, atol=1e-6)


def test_layer_scale_keys_init_and_validation() -> None:
    spec = get_spec("test-tiny")
    cfg = dataclasses.replace(spec.config, encoder=_tiny_encoder(layer_scale_init=0.25))
    model = build_model(cfg, seed=0)
    keys = [k for k in model.state_dict() if k.endswith((".ls1", ".ls2"))]
    blocks = cfg.encoder.depth
    with_attention = blocks - cfg.encoder.attn_free_blocks
    assert len(keys) == blocks + with_attention
    assert all(torch.all(model.state_dict()[k] == 0.25) for k in keys)
    assert not any(k.endswith(".ls1") for k in build_model(spec.config, seed=0).state_dict())
    with pytest.raises(ValueError, match="layer_scale_init"):
        _tiny_encoder(layer_scale_init=-0.1)


def test_distance_bias_table_is_local_for_the_first_head_and_flat_for_the_last() -> None:
    from fastsam3d.modeling.attention import distance_bias_table

    table = distance_bias_table(6, 4)
    assert table.shape == (6, 64, 64)
    assert torch.all(table.diagonal(dim1=1, dim2=2) == 0)
    # token 0 = (0, 0, 0); token 1 = (0, 0, 1); token 63 = (3, 3, 3)
    assert table[0, 0, 1].item() == pytest.approx(-2.0)
    assert table[-1, 0, 63].item() == pytest.approx(-(3 * 3**0.5) / 16)
    assert torch.equal(table, table.transpose(1, 2))


def test_distance_bias_equal_in_sdpa_and_eager_and_changes_the_output() -> None:
    from fastsam3d.modeling.attention import EncoderAttention

    gen = torch.Generator().manual_seed(1)
    kwargs = dict(dim=32, num_heads=4, qkv_bias=True, use_rel_pos=True, rel_pos_side=4, window=0)
    fast = EncoderAttention(**kwargs, distance_bias=True)  # type: ignore[arg-type]
    slow = EncoderAttention(**kwargs, impl="eager", distance_bias=True)  # type: ignore[arg-type]
    plain = EncoderAttention(**kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in fast.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    slow.load_state_dict(fast.state_dict())
    plain.load_state_dict(fast.state_dict())
    assert set(fast.state_dict()) == set(plain.state_dict())  # the table is not saved
    x = torch.randn(2, 4, 4, 4, 32, generator=gen)
    with torch.no_grad():
        assert torch.allclose(fast(x), slow(x), atol=1e-5)
        assert not torch.allclose(fast(x), plain(x), atol=1e-3)


def test_distance_bias_needs_global_dense_attention() -> None:
    with pytest.raises(ValueError, match="attn_distance_bias"):
        _tiny_encoder(attn_distance_bias=True, window_size=2)


def test_distance_table_survives_building_and_loading(tmp_path) -> None:
    from safetensors.torch import save_file

    from fastsam3d.build import load_model
    from fastsam3d.modeling.attention import EncoderAttention, distance_bias_table

    spec = get_spec("test-tiny")
    enc = _tiny_encoder(attn_distance_bias=True, window_size=0, global_attn_indexes=())
    cfg = dataclasses.replace(spec.config, encoder=enc)
    built = build_model(cfg, seed=0)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in built.state_dict().items()}, str(path))
    loaded = load_model(cfg, path)
    for model in (built, loaded):
        tables = [m.distance for m in model.modules() if isinstance(m, EncoderAttention)]
        assert tables
        assert all(t is not None for t in tables)
        expected = distance_bias_table(enc.num_heads, enc.grid_size)
        assert all(torch.equal(t, expected) for t in tables)
