"""Scoring every checkpoint of a run (fastsam3d.train.trajectory)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fastsam3d.errors import InputError
from fastsam3d.train.config import load_config
from fastsam3d.train.loop import Trainer
from fastsam3d.train.trajectory import main, plot, run_checkpoints, score_runs

from .test_experiment import CONFIG


def _tiny_run(tmp_path: Path) -> Path:
    config = tmp_path / "tiny.toml"
    text = CONFIG.format(out=tmp_path / "run").replace(
        "checkpoint_every = 1000", "checkpoint_every = 1"
    )
    config.write_text(text)
    cfg = load_config(config)
    Trainer(cfg, cfg.kind, progress=False).run()
    return tmp_path / "run"


def test_checkpoints_are_scored_once_and_plotted(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path)
    assert [p.step for p in run_checkpoints(run, 1)] == [1, 2]
    assert [p.step for p in run_checkpoints(run, 2)] == [2]
    out = tmp_path / "records"
    kwargs = dict(
        work=tmp_path / "work",
        train_structures=("spleen",),
        held_out_structures=("spleen",),
        clicks=(1, 2),
    )
    rows = score_runs([run], out, every=1, marks=[("final", run / "model.safetensors")], **kwargs)
    keys = {(r["run"], r["step"], r["part"], r["click"]) for r in rows}
    assert keys == {
        (name, step, part, click)
        for name, step in (("run", "1"), ("run", "2"), ("final", "-1"))
        for part in ("train-ct", "held-out")
        for click in ("1", "2")
    }
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)

    # the last checkpoint is the final model: the same scores
    def dice(name: str, step: str) -> list[str]:
        return [r["dice"] for r in rows if (r["run"], r["step"]) == (name, step)]

    assert dice("run", "2") == dice("final", "-1")
    with (out / "trajectories.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == rows
    # scored steps are skipped on a second call (nothing to evaluate: no work files appear)
    again = score_runs([run], out, every=1, **{**kwargs, "work": tmp_path / "work2"})
    assert again == rows
    assert not (tmp_path / "work2").exists()
    png = plot(rows, out / "trajectories.png")
    assert png.stat().st_size > 10_000


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no checkpoints/ folder"):
        run_checkpoints(tmp_path, 1)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_000003.pt").write_bytes(b"")
    with pytest.raises(InputError, match="multiple of 2"):
        run_checkpoints(tmp_path, 2)
    with pytest.raises(InputError, match="at least 1"):
        score_runs([tmp_path], tmp_path / "out", every=0)
    with pytest.raises(InputError, match="NAME=MODEL_FILE"):
        main(["--mark", "shipped", "--out", str(tmp_path / "out")])
    with pytest.raises(InputError, match="missing"):
        score_runs([tmp_path], tmp_path / "out", every=3)
