"""The ``fastsam3d`` command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fastsam3d
from fastsam3d.cli import main
from fastsam3d.conformance import write_upstream_checkpoint


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in fastsam3d.list_models():
        assert name in out
    assert "100,509,232" in out
    assert "53,224,240" in out


def test_convert_training_checkpoint_to_safetensors(tmp_path: Path, capsys) -> None:
    src_model = fastsam3d.build_model("test-tiny", seed=5)
    src = write_upstream_checkpoint(tmp_path / "up.pth", src_model.state_dict(), "training")
    dst = tmp_path / "native.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0  # architecture inferred from shapes
    out = capsys.readouterr().out
    assert "ignored non-weight entries" in out
    assert "model test-tiny" in out
    model = fastsam3d.load_model(None, dst)
    sa, sb = model.state_dict(), src_model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_convert_two_files(tmp_path: Path) -> None:
    student = fastsam3d.build_model("test-tiny-student", seed=1)
    enc = write_upstream_checkpoint(tmp_path / "enc.pth", student.state_dict(), "encoder")
    full = write_upstream_checkpoint(tmp_path / "full.pth", student.state_dict(), "full")
    dst = tmp_path / "student.pt"
    assert main(["convert", str(enc), str(full), str(dst), "--model", "test-tiny-student"]) == 0
    assert fastsam3d.load_model("test-tiny-student", dst).cfg == student.cfg


def test_convert_needs_model_for_ambiguous_teachers(tmp_path: Path, capsys) -> None:
    shapes = fastsam3d.build.build_meta(fastsam3d.get_spec("sam-med3d").config).state_dict()
    src = tmp_path / "teacher.pth"
    torch.save({k: torch.zeros(()).expand(v.shape) for k, v in shapes.items()}, src)
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "fastsam3d-teacher and sam-med3d" in err
    assert "--model" in err
    assert not dst.exists()


def test_convert_refuses_to_overwrite_its_input(tmp_path: Path, capsys) -> None:
    src = write_upstream_checkpoint(
        tmp_path / "m.pt", fastsam3d.build_model("test-tiny").state_dict(), "full"
    )
    before = src.read_bytes()
    assert main(["convert", str(src), str(src)]) == 2
    assert "also an input" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_failed_convert_leaves_existing_output_untouched(tmp_path: Path, capsys) -> None:
    src = write_upstream_checkpoint(
        tmp_path / "s.pth", fastsam3d.build_model("test-tiny-student").state_dict(), "full"
    )
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"precious")
    assert main(["convert", str(src), str(dst), "--model", "test-tiny"]) == 2
    assert "does not fit model 'test-tiny'" in capsys.readouterr().err
    assert dst.read_bytes() == b"precious"
    assert set(tmp_path.iterdir()) == {src, dst}  # no temporary leftovers


def test_bench_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--models",
        "test-tiny,test-tiny-student",
        "--runtimes",
        "torch,onednn",
        "--rounds",
        "2",
        "--json",
        str(out),
        "--plot",
        str(tmp_path / "p.png"),
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {
        "test-tiny (sdpa)",
        "test-tiny-student (sdpa)",
        "test-tiny (sdpa, onednn)",
        "test-tiny-student (sdpa, onednn)",
    }
    for r in report["results"].values():
        assert len(r["encoder"]["samples_ms"]) == 2
        assert r["decoder"]["median_ms"] > 0
        assert r["gmacs"] > 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert "| test-tiny (sdpa) |" in capsys.readouterr().out


def test_bench_rejects_unknown_runtime(capsys) -> None:
    assert main(["bench", "--models", "test-tiny", "--runtimes", "tensorrt"]) == 2
    assert "unknown runtime 'tensorrt'" in capsys.readouterr().err


def test_selfcheck_reproduces_upstream(capsys) -> None:
    assert main(["selfcheck"]) == 0
    out = capsys.readouterr().out
    assert out.count("OK ") == 4
    assert "all outputs match upstream" in out


def test_selfcheck_without_fixtures_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["selfcheck", "--fixtures", str(tmp_path)]) == 2
    assert "fastsam3d_io_compact.pt not found" in capsys.readouterr().err
