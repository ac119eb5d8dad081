"""Training configuration parsing, the Eq. 2 schedule and the layer pairing."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import fastsam3d
from fastsam3d.train.config import load_config, parse_config
from fastsam3d.train.objectives import dice_ce_loss, init_from_teacher, layer_pairing, layers_in_use

from .conftest import distill_config, train_config


def test_valid_configs_parse() -> None:
    assert parse_config(train_config("/tmp/x")).kind == "train"
    config = parse_config(distill_config("/tmp/x"))
    assert config.kind == "distill"
    assert config.student is not None
    assert config.student.model_config().encoder.depth == 2


def test_architecture_overrides_reach_every_part() -> None:
    data = train_config("/tmp/x")
    data["model"] = {
        **data["model"],
        "prompt": {"click_maps": True, "click_map_sigma": 2.0},
        "decoder": {"iou_head_hidden_dim": 24},
    }
    cfg = parse_config(data).model
    assert cfg is not None
    built = cfg.model_config()
    assert built.prompt.click_maps
    assert built.prompt.click_map_sigma == 2.0
    assert built.decoder.iou_head_hidden_dim == 24


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"run": {"stepz": 3}}, r"\[run\]: unknown keys \['stepz'\]"),
        ({"optimizer": {}}, r"unknown tables \['optimizer'\]"),
        ({"data": {"augment": {"mirror": True}}}, r"augment: unknown keys \['mirror'\]"),
        ({"model": {"name": "vit-h"}}, "unknown model 'vit-h'"),
        ({"model": {"name": "test-tiny", "encoder": {"depth_": 3}}}, "depth_"),
        ({"model": {"name": "test-tiny", "prompt": {"click_map": True}}}, "click_map"),
        ({"model": {"name": "test-tiny", "decoder": {"heads": 2}}}, "heads"),
    ],
)
def test_config_errors(patch, match) -> None:
    data = train_config("/tmp/x")
    for table, values in patch.items():
        data[table] = {**data.get(table, {}), **values} if table != "optimizer" else values
    with pytest.raises((ValueError, TypeError), match=match):
        parse_config(data)


def test_config_command_checks(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs a \\[model\\]"):
        parse_config(distill_config("/tmp/x")).check("train")
    bad = distill_config("/tmp/x")
    bad["distill"]["logit_steps"] = 99
    with pytest.raises(ValueError, match="must equal \\[run\\] steps"):
        parse_config(bad).check("distill")
    no_root = train_config("/tmp/x")
    no_root["data"]["root"] = ""
    with pytest.raises(ValueError, match="root is required"):
        parse_config(no_root).check("train")
    path = tmp_path / "c.toml"
    path.write_text("[run\nsteps = 3")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_config(path)


@pytest.mark.parametrize(("total", "depth"), [(60, 6), (12, 6), (100, 6), (7, 3), (10, 4)])
def test_eq2_schedule_at_iteration_boundaries(total: int, depth: int) -> None:
    ks = [layers_in_use(t, total, depth) for t in range(1, total + 1)]
    assert ks == [math.ceil(t * depth / total) for t in range(1, total + 1)]
    assert ks[0] == 1
    assert ks[-1] == depth
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(ks))  # one layer at a time
    if total % depth == 0:
        per = total // depth
        for j in range(1, depth):
            assert layers_in_use(per * j, total, depth) == j
            assert layers_in_use(per * j + 1, total, depth) == j + 1
    with pytest.raises(ValueError, match="outside"):
        layers_in_use(0, total, depth)


def test_layer_pairing() -> None:
    assert layer_pairing(6, 12) == [2, 4, 6, 8, 10, 12]  # FastSAM3D: student i <-> teacher 2i
    assert layer_pairing(4, 12) == [3, 6, 9, 12]
    assert layer_pairing(12, 12) == list(range(1, 13))
    with pytest.raises(ValueError, match="cannot pair"):
        layer_pairing(6, 4)


def test_student_initialised_from_paired_teacher_blocks() -> None:
    teacher = fastsam3d.build_model(
        parse_config(distill_config("/tmp/x")).teacher.model_config(), seed=1
    )
    student = fastsam3d.build_model(
        parse_config(distill_config("/tmp/x")).student.model_config(), seed=2
    )
    report = init_from_teacher(student, teacher)
    t, s = teacher.state_dict(), student.state_dict()
    # student block 0 (MLP-only) <- teacher block 1 (depth 2); student block 1 <- teacher block 3
    assert torch.equal(
        s["image_encoder.blocks.0.mlp.lin1.weight"], t["image_encoder.blocks.1.mlp.lin1.weight"]
    )
    assert torch.equal(
        s["image_encoder.blocks.1.attn.qkv.weight"], t["image_encoder.blocks.3.attn.qkv.weight"]
    )
    assert torch.equal(s["mask_decoder.iou_token.weight"], t["mask_decoder.iou_token.weight"])
    assert "image_encoder.blocks.1.mlp.lin2.bias" in report["copied"]


def test_dice_ce_loss() -> None:
    target = torch.zeros(2, 1, 8, 8, 8)
    target[:, :, 2:6, 2:6, 2:6] = 1
    perfect = dice_ce_loss((target * 2 - 1) * 20, target)
    wrong = dice_ce_loss(-(target * 2 - 1) * 20, target)
    assert perfect < 0.01
    assert wrong > 1.9


def test_every_shipped_recipe_and_experiment_config_parses() -> None:
    """configs/ holds the recipe of the bundled model and the experiments that led to it: each
    must stay a valid config (names, tables, overrides)."""
    from pathlib import Path

    from fastsam3d.train.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    paths = sorted(root.rglob("*.toml"))
    assert len(paths) >= 8
    for path in paths:
        config = load_config(path)
        assert config.run.steps >= 1, path


def test_recipe_configs_build_the_architecture_they_were_written_for() -> None:
    """The registry's fastsam3d-lite carries the v4 options; the v4 recipe builds exactly the
    registry entries, and the v2 recipe (and every experiment written before v4) pins the
    options it was trained with, so re-running it builds its own architecture."""
    from pathlib import Path

    from fastsam3d.registry import get_spec
    from fastsam3d.train.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs" / "lite"
    for stage, sections in (
        ("teacher", ("model",)),
        ("distill", ("teacher", "student")),
        ("student", ("model",)),
    ):
        v4 = load_config(root / "v4" / f"{stage}.toml")
        v2 = load_config(root / f"{stage}.toml")
        for section in sections:
            new, old = getattr(v4, section), getattr(v2, section)
            assert new.model_config() == get_spec(new.name).config, (stage, section)
            built = old.model_config()
            assert built.encoder.layer_scale_init == 0.0
            assert not built.encoder.center_tokens
            assert not built.decoder.feature_gates
    # experiments before e14 never centred tokens; e07 (no features) must not get gates
    for path in sorted((root / "exp").glob("*.toml")):
        built = load_config(path).model.model_config()  # validated: raises if inconsistent
        if path.stem < "e14":
            assert not built.encoder.center_tokens, path


def test_decay_vectors_false_exempts_vectors_and_position_tables(tmp_path) -> None:
    from fastsam3d.train.loop import Trainer

    cfg = train_config(str(tmp_path))
    cfg["optim"]["weight_decay"] = 0.05
    names = {}
    for decay_vectors in (True, False):
        cfg["optim"]["decay_vectors"] = decay_vectors
        trainer = Trainer(parse_config(cfg), "train", progress=False)
        by_id = {id(p): n for n, p in trainer.step_module.named_parameters()}
        names[decay_vectors] = {
            by_id[id(p)]: group["weight_decay"]
            for group in trainer.optimizer.param_groups
            for p in group["params"]
        }
    assert set(names[True].values()) == {0.05}
    undecayed = {n for n, wd in names[False].items() if wd == 0.0}
    assert set(names[False]) == set(names[True])  # every parameter is still trained
    assert any(n.endswith("pos_embed") for n in undecayed)
    assert any(".rel_pos_" in n for n in undecayed)
    assert any(n.endswith("norm1.weight") for n in undecayed)
    assert any(n.endswith("qkv.bias") for n in undecayed)
    assert all(not n.endswith("qkv.weight") for n in undecayed)
    assert any(n.endswith("qkv.weight") and wd == 0.05 for n, wd in names[False].items())
