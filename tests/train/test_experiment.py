"""``fastsam3d experiment``: train, score, record one line per run."""

from __future__ import annotations

import csv
import json

from fastsam3d.cli import main
from fastsam3d.train.experiment import (
    Summary,
    _train_minutes,
    append_line,
    run_experiment,
    score_checkpoint,
)

CONFIG = """
[run]
out_dir = "{out}"
seed = 0
steps = 2
threads = 1
checkpoint_every = 1000

[data]
root = "ct"
layout = "samples"
structures = ["spleen", "liver"]
jitter_mm = 5.0

[optim]
lr = 1e-3

[model]
name = "test-tiny-hires"

[interactive]
click_iterations = 2
loss_size = 16
simulator = "mixed"
trainable = "all"
"""


def test_experiment_trains_scores_and_records(tmp_path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG.format(out=tmp_path / "run"))
    records = tmp_path / "records"
    summary = run_experiment(
        config,
        records,
        note="smoke",
        progress=False,
        train_structures=("spleen",),
        held_out_structures=("spleen",),
        clicks=(1, 2),
    )
    assert summary.name == "tiny"
    assert summary.steps == 2
    assert set(summary.train_dice) == {1, 2}
    assert set(summary.held_out_dice) == {1, 2}
    assert summary.image_dependence >= 0.0
    assert 0.0 <= summary.vit_dependence <= 1.0  # the tiny model has decoder features
    assert set(summary.per_structure_probe) == {"spleen"}
    folder = records / "tiny"
    for name in ("config.toml", "summary.json", "metrics.csv", "train-ct.csv", "held-out.csv"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "summary.json").read_text())["note"] == "smoke"
    table = (records / "README.md").read_text()
    assert table.count("| [tiny](tiny/) |") == 1
    with (folder / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert float(rows[-1]["grad_encoder"]) > 0
    assert float(rows[-1]["grad_prompt_decoder"]) > 0
    # scoring a model file without training: same numbers, its own line
    scored = score_checkpoint(
        tmp_path / "run" / "model.safetensors",
        records,
        name="tiny-file",
        scores_dir=tmp_path / "scores",
        train_structures=("spleen",),
        held_out_structures=("spleen",),
        clicks=(1, 2),
    )
    assert scored.train_dice == summary.train_dice
    assert scored.held_out_dice == summary.held_out_dice
    assert "| [tiny-file](tiny-file/) | 0 |" in (records / "README.md").read_text()


def test_experiment_command_needs_a_config_or_a_checkpoint(capsys) -> None:
    assert main(["experiment"]) == 2
    assert "give a TOML config" in capsys.readouterr().err
    assert main(["experiment", "--checkpoint", "m.safetensors"]) == 2
    assert "--checkpoint needs --name" in capsys.readouterr().err


def test_table_keeps_one_line_per_run(tmp_path) -> None:
    readme = tmp_path / "README.md"
    first = Summary("a", "a.toml", 10, 1.0, {1: 0.5}, {1: 0.25}, 0.4, "first")
    append_line(readme, first)
    append_line(readme, Summary("b", "b.toml", 10, 1.0, {1: 0.5}, {1: 0.25}, 0.4))
    again = Summary("a", "a.toml", 20, 2.0, {1: 0.6}, {1: 0.3}, 0.5, "again", vit_dependence=0.02)
    append_line(readme, again)
    lines = readme.read_text().splitlines()
    assert sum(ln.startswith("| [a](a/)") for ln in lines) == 1
    assert "| [a](a/) | 20 | 2.0 | 0.600 | 0.300 | 50% | 2% | again |" in lines
    assert "| [b](b/) | 10 | 1.0 | 0.500 | 0.250 | 40% | - |  |" in lines
    assert lines[0] == "# Experiments"


def test_train_minutes_add_up_resumed_pieces(tmp_path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,elapsed_s\n1,30\n2,60\n3,20\n4,40\n")  # resumed after step 2
    assert abs(_train_minutes(metrics, 0.0) - 100 / 60) < 1e-9
    assert _train_minutes(tmp_path / "missing.csv", 3.0) == 3.0
