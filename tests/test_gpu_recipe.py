"""``scripts/gpu_recipe.py``: the stage configs it writes are the recipe's, valid and sized to
the budget; its timing, cache seeding and packing. (Its CPU dry run trains three stages, which
takes minutes on 2 cores: the training runs themselves are tested in ``test_train*``.)"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fastsam3d.train.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "lite" / "v4"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_recipe", ROOT / "scripts" / "gpu_recipe.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_recipe = _script()


def _stage(name: str, tmp_path: Path, steps: int, dry_run: bool = False) -> dict[str, Any]:
    recipe = tomllib.loads((RECIPE / f"{name}.toml").read_text())
    inputs = {"teacher": tmp_path / "t" / "model.safetensors"}
    if name == "student":
        inputs["distill"] = tmp_path / "d" / "model.safetensors"
    config: dict[str, Any] = gpu_recipe.stage_config(
        recipe,
        out_dir=tmp_path / name,
        steps=steps,
        recipe_steps=recipe["run"]["steps"],
        device="cpu" if dry_run else "cuda",
        amp="none" if dry_run else "bf16",
        batch=4,
        workers=6,
        threads=4,
        cache_dir=tmp_path / "cache",
        inputs=inputs,
        dry_run=dry_run,
    )
    return config


@pytest.mark.parametrize("name", ["teacher", "distill", "student"])
def test_stage_configs_are_the_recipe_on_this_machine(name: str, tmp_path: Path) -> None:
    recipe = tomllib.loads((RECIPE / f"{name}.toml").read_text())
    config = _stage(name, tmp_path, steps=500)
    # written and read back as TOML, and valid for the trainer
    text = gpu_recipe.to_toml(config)
    assert tomllib.loads(text) == config
    parsed = parse_config(tomllib.loads(text), name)
    assert parsed.run.device == "cuda"
    assert parsed.run.amp == "bf16"
    assert parsed.run.steps == 500
    assert parsed.run.out_dir == str(tmp_path / name)
    assert parsed.data.batch_size == 4
    assert parsed.data.workers == 6
    assert parsed.data.engine.cache_dir == str(tmp_path / "cache")
    # what the recipe decides is kept: data engine, optimiser, model options, losses
    assert config["data"]["engine"] == {
        **recipe["data"]["engine"],
        "cache_dir": str(tmp_path / "cache"),
    }
    # the rate grows with the square root of the batch (4 here)
    scale = (4 / recipe["data"]["batch_size"]) ** 0.5
    assert config["optim"]["lr"] == pytest.approx(recipe["optim"]["lr"] * scale)
    assert config["optim"]["schedule"] == recipe["optim"]["schedule"]
    # warm-up scaled with the steps
    expected_warmup = round(recipe["optim"]["warmup_steps"] * 500 / recipe["run"]["steps"])
    assert config["optim"]["warmup_steps"] == max(1, expected_warmup)
    if name == "distill":
        assert parsed.distill is not None
        assert parsed.distill.layerwise_steps + parsed.distill.logit_steps == 500
        assert parsed.teacher is not None
        assert parsed.student is not None
        assert parsed.teacher.checkpoint == (str(tmp_path / "t" / "model.safetensors"),)
        assert config["student"]["encoder"] == recipe["student"]["encoder"]
        assert config["distill"]["frozen"] == recipe["distill"]["frozen"]
    else:
        assert parsed.model is not None
        assert config["model"]["encoder"] == recipe["model"]["encoder"]
        assert config["interactive"] == recipe["interactive"]
    if name == "student":
        assert parsed.model is not None
        assert parsed.model.checkpoint == (str(tmp_path / "d" / "model.safetensors"),)
    if name == "teacher":
        assert "checkpoint" not in config["model"]


def test_dry_run_configs_use_the_miniature_lite_layout(tmp_path: Path) -> None:
    teacher = parse_config(_stage("teacher", tmp_path, 2, dry_run=True), "teacher")
    distill = parse_config(_stage("distill", tmp_path, 2, dry_run=True), "distill")
    student = parse_config(_stage("student", tmp_path, 2, dry_run=True), "student")
    assert teacher.model is not None
    assert student.model is not None
    assert distill.teacher is not None
    assert distill.student is not None
    assert teacher.run.device == "cpu"
    assert teacher.run.amp == "none"
    assert teacher.model.model_config().encoder.depth == 2
    assert distill.teacher.model_config().encoder.depth == 2
    assert distill.student.model_config().encoder.depth == 1
    assert student.model.model_config().encoder.depth == 1
    assert teacher.model.model_config().image_size == 64


def test_seconds_per_step_is_the_median_after_start_up(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    elapsed = [10.0, 12.0, 12.5, 13.0, 13.5, 14.5, 15.0]  # steps of 2, 0.5, 0.5, 0.5, 1, 0.5
    metrics.write_text(
        "step,loss,elapsed_s\n" + "".join(f"{i + 1},0.5,{e}\n" for i, e in enumerate(elapsed))
    )
    assert gpu_recipe.seconds_per_step(metrics, skip=0) == 0.5
    assert gpu_recipe.seconds_per_step(metrics, skip=4) == 1.0  # steps 1.0 and 0.5: upper median
    with pytest.raises(RuntimeError, match="too few steps"):
        gpu_recipe.seconds_per_step(metrics, skip=6)


def test_pack_cuts_the_records_in_pieces_that_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_recipe, "PIECE_BYTES", 1000)
    out = tmp_path / "out"
    (out / "student").mkdir(parents=True)
    (out / "student" / "model.safetensors").write_bytes(bytes(range(256)) * 10)
    (out / "student" / "last.pt").write_bytes(b"optimizer state" * 100)
    (out / "distill").mkdir()
    (out / "distill" / "model.safetensors").write_bytes(b"distilled" * 100)
    (out / "distill" / "metrics.csv").write_text("step,loss\n1,0.5\n")
    (out / "engine-cache").mkdir()
    (out / "engine-cache" / "slic-ct-0.npy").write_bytes(b"x" * 100)
    (out / "recipe.json").write_text("{}")
    pieces = gpu_recipe.pack(out, tmp_path / "pack")
    assert len(pieces) >= 3
    assert all(p.stat().st_size <= 1000 for p in pieces)
    joined = b"".join(p.read_bytes() for p in pieces)
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        names = sorted(tar.getnames())
        model = tar.extractfile("student/model.safetensors")
        assert model is not None
        assert model.read() == bytes(range(256)) * 10
    assert names == ["distill/metrics.csv", "recipe.json", "student/model.safetensors"]
    assert not (tmp_path / "pack" / "recipe.tar").exists()
    assert sorted(p.name for p in (tmp_path / "pack").iterdir()) == [p.name for p in pieces]


def test_seed_cache_from_a_folder_or_a_tgz(tmp_path: Path) -> None:
    source = tmp_path / "engine-cache"
    source.mkdir()
    (source / "slic-ct-abc.npy").write_bytes(b"abc")
    (source / "notes.txt").write_text("not a cache file")
    archive = tmp_path / "cache.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="engine-cache")
    for given, target in ((source, tmp_path / "a"), (archive, tmp_path / "b")):
        gpu_recipe.seed_cache(given, target)
        assert sorted(p.name for p in target.iterdir()) == ["slic-ct-abc.npy"]
        assert (target / "slic-ct-abc.npy").read_bytes() == b"abc"


def test_build_cache_writes_the_supervoxels_a_recipe_trains_on(tmp_path: Path) -> None:
    recipe_dir = tmp_path / "recipe"
    recipe_dir.mkdir()
    for name in ("teacher", "distill", "student"):  # the v4 recipe on the small CT slab
        config = tomllib.loads((RECIPE / f"{name}.toml").read_text())
        config["data"]["root"] = "ct_sm"
        config["data"]["engine"]["supervoxels"] = [40]
        (recipe_dir / f"{name}.toml").write_text(gpu_recipe.to_toml(config))
    archive = tmp_path / "cache.tgz"
    files = gpu_recipe.build_engine_cache(recipe_dir, archive)
    assert len(files) == 1  # one scan, one scale: the three stages share it
    assert files[0].startswith("slic-ct_sm-")
    target = tmp_path / "seeded"
    gpu_recipe.seed_cache(archive, target)
    assert sorted(p.name for p in target.iterdir()) == files


def test_dry_run_trains_scores_and_packs(tmp_path: Path) -> None:
    """The whole script on the CPU: a miniature model, the v4 recipe on the small CT slab."""
    recipe_dir = tmp_path / "recipe"
    recipe_dir.mkdir()
    for name in ("teacher", "distill", "student"):
        config = tomllib.loads((RECIPE / f"{name}.toml").read_text())
        config["data"]["root"] = "ct_sm"
        config["data"]["engine"]["supervoxels"] = [40]
        (recipe_dir / f"{name}.toml").write_text(gpu_recipe.to_toml(config))
    out, pieces = tmp_path / "out", tmp_path / "pack"
    status = gpu_recipe.main(
        ["--out", str(out), "--recipe", str(recipe_dir), "--dry-run", "--minutes", "0.1",
         "--calibration-steps", "3", "--pack", str(pieces)]
    )  # fmt: skip
    assert status == 0
    report = json.loads((pieces / "recipe.json").read_text())
    assert "error" not in report
    assert list(report["stages"]) == ["teacher", "distill", "student"]
    for stage in report["stages"].values():
        assert stage["steps"] == 2  # the dry run's floor: 0.1 minutes fit fewer
        assert stage["seconds_per_step"] > 0
    assert report["train_ct_eval"]["exit"] == 0
    joined = b"".join(p.read_bytes() for p in sorted(pieces.glob("recipe.tar.part-*")))
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        names = set(tar.getnames())
    for stage in ("teacher", "student"):
        assert {f"{stage}/model.safetensors", f"{stage}/metrics.csv", f"{stage}.log"} <= names
    assert "train-ct/results.csv" in names
    rows = list(csv.DictReader((out / "train-ct" / "results.csv").open()))
    assert {r["structure"] for r in rows} == {"spleen"}
