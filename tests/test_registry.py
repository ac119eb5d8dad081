"""The model registry and configs: names, parameter counts and key layouts of the releases."""

from __future__ import annotations

import dataclasses

import pytest

import fastsam3d
from fastsam3d.build import build_meta
from fastsam3d.config import EncoderConfig, ModelConfig, SparseAttentionConfig, SparsePattern

from .conftest import manifest


def test_required_names_are_registered() -> None:
    assert {"sam-med3d", "fastsam3d-teacher", "fastsam3d", "test-tiny"} <= set(
        fastsam3d.list_models()
    )


@pytest.mark.parametrize("name", fastsam3d.list_models())
def test_every_entry_builds_on_meta(name: str) -> None:
    model = build_meta(fastsam3d.get_spec(name).config)
    assert next(model.parameters()).is_meta


@pytest.mark.parametrize(
    ("name", "manifest_name"),
    [
        ("sam-med3d", "sam_med3d_vit_b"),
        ("fastsam3d-teacher", "sam_med3d_vit_b"),
        ("fastsam3d", "fastsam3d"),
    ],
)
def test_released_layouts_equal_the_manifests(name: str, manifest_name: str) -> None:
    ref = manifest(manifest_name)
    model = build_meta(fastsam3d.get_spec(name).config)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: v for k, v in ref.items() if not k.startswith("_")}
    assert sum(p.numel() for p in model.parameters()) == ref["_total_params"]
    per_module = dict(ref["_params_per_module"])
    for part, count in per_module.items():
        assert sum(p.numel() for p in getattr(model, part).parameters()) == count


def test_headline_parameter_counts() -> None:
    count = {
        n: sum(p.numel() for p in build_meta(fastsam3d.get_spec(n).config).parameters())
        for n in ("sam-med3d", "fastsam3d")
    }
    assert count == {"sam-med3d": 100_509_232, "fastsam3d": 53_224_240}


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vit_b'.*'fastsam3d'"):
        fastsam3d.get_spec("vit_b")


@pytest.mark.parametrize("name", fastsam3d.list_models())
def test_config_round_trips_through_plain_dicts(name: str) -> None:
    cfg = fastsam3d.get_spec(name).config
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    sparse = cfg.with_attention(encoder_sparse=SparseAttentionConfig((SparsePattern(32, 2),)))
    assert ModelConfig.from_dict(sparse.to_dict()) == sparse


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    data = fastsam3d.get_spec("fastsam3d").config.to_dict()
    data["encoder"]["num_layers"] = 6
    with pytest.raises(ValueError, match=r"model_config.encoder: unknown keys \['num_layers'\]"):
        ModelConfig.from_dict(data)
    with pytest.raises(ValueError, match="block_formula must be one of"):
        EncoderConfig(block_formula="postnorm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        EncoderConfig(img_size=100)
    with pytest.raises(ValueError, match=r"must equal prompt\.embed_dim"):
        dataclasses.replace(
            fastsam3d.get_spec("fastsam3d").config,
            encoder=EncoderConfig(out_chans=256),
        )
