"""The model's input contract (``ModelConfig.input``): sessions, evaluation and training read
the region spacing, normalisation, mask threshold and prompting mode from the model instead of
assuming 1.5 mm, z-scores, logit 0 and one prompting mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import fastsam3d
from fastsam3d.config import InputConfig, ModelConfig
from fastsam3d.data.frame import FrameSpec
from fastsam3d.data.volume import Volume
from fastsam3d.errors import InputError


def _with_input(model: fastsam3d.Sam3D, **changes: object) -> fastsam3d.Sam3D:
    model.cfg = dataclasses.replace(model.cfg, input=InputConfig(**changes))  # type: ignore[arg-type]
    return model


def test_registry_entries_carry_the_contract_and_checkpoints_keep_it(tmp_path) -> None:
    spec = fastsam3d.get_spec("fastsam3d")
    assert spec.input == InputConfig(1.5, "zscore_positive", 0.0)
    cfg = dataclasses.replace(spec.config, input=InputConfig(spacing=2.0, mask_threshold=0.3))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["input"]  # files written before the contract existed: the released defaults
    assert ModelConfig.from_dict(old).input == InputConfig()
    with pytest.raises(InputError, match=r"input\.spacing"):
        InputConfig(spacing=0)
    with pytest.raises(InputError, match="normalization"):
        InputConfig(normalization="minmax")  # type: ignore[arg-type]


def test_session_frame_and_threshold_come_from_the_model() -> None:
    model = _with_input(fastsam3d.load_model("test-tiny", random_weights=True, seed=1), spacing=3.0)
    session = fastsam3d.Session(model, runtime="torch")
    assert session.frame == FrameSpec.for_model(model.cfg)
    assert session.frame.spacing == 3.0
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=(40, 36, 30)).astype(np.float32), np.eye(4))
    session.set_image(volume)
    loose = session.add_click((20, 18, 15)).mask.sum()  # type: ignore[union-attr]
    _with_input(model, spacing=3.0, mask_threshold=1e9)  # nothing exceeds this logit
    strict = fastsam3d.Session(model, runtime="torch")
    strict.set_image(volume)
    assert strict.add_click((20, 18, 15)).mask.sum() == 0  # type: ignore[union-attr]
    assert loose > 0


def test_training_prompts_as_the_model_is_prompted() -> None:
    from fastsam3d.train.config import InteractiveConfig

    assert InteractiveConfig().prompt_points == "auto"
    assert fastsam3d.get_spec("fastsam3d-lite").config.prompt.prompting == "all"
    assert fastsam3d.get_spec("fastsam3d").config.prompt.prompting == "newest"
