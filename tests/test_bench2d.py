"""Table 3 with 2D rows: `fastsam3d bench models` with 2D and 3D models (tiny settings)."""

from __future__ import annotations

import json

import pytest

from fastsam3d.bench.table3 import VOLUME_SLICES, Candidate2D, count_flops_2d, peak_memory_mb_2d


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from fastsam3d.cli import main

    path = tmp_path_factory.mktemp("bench2d") / "out.json"
    args = ["bench", "models", "--models", "sam-med2d,mobilesam,test-tiny", "--runtimes"]
    args += ["torch,onnxruntime", "--rounds", "1", "--warmup", "0", "--slices", "1"]
    args += ["--max-retries", "0"]
    args += ["--no-accuracy", "--threads", "1", "--json", str(path)]
    assert main(args) == 0
    return json.loads(path.read_text())


def test_one_report_with_2d_and_3d_rows(report: dict) -> None:
    rows = report["results"]
    assert (
        set(rows)
        == {
            "test-tiny (sdpa)",
            "test-tiny (sdpa, onnxruntime)",
            "sam-med2d (2D, torch)",
            "mobilesam (2D, torch)",
        }
        or "onnxruntime" not in report["machine"]
    )
    assert {r["kind"] for r in rows.values()} == {"2d", "3d"}
    assert all(r["runtime"] == "torch" for r in rows.values() if r["kind"] == "2d")
    assert report["machine"]["torch"]
    assert "random weights" in report["weights"]
    assert report["rounds"] == 1


def test_2d_rows_are_scaled_per_slice_x128_and_labelled(report: dict) -> None:
    for label in ("sam-med2d (2D, torch)", "mobilesam (2D, torch)"):
        r = report["results"][label]
        assert r["measured_slices"] == 1
        assert r["volume_slices"] == VOLUME_SLICES == 128
        assert r["encoder_volume"]["scaled"] == "scaled from 1 slice x128"
        per_slice = r["encoder_per_slice"]["median_ms"]
        assert r["encoder_volume"]["median_ms"] == pytest.approx(128 * per_slice)
        assert r["encoder_measured"]["median_ms"] == pytest.approx(per_slice)  # 1 slice
        dec = r["decoder_per_slice"]["median_ms"]
        assert r["decoder_volume"]["median_ms"] == pytest.approx(128 * dec)
        assert r["gflops_per_slice"] > 0
        assert r["gflops"] == pytest.approx(128 * r["gflops_per_slice"])
        assert r["encoder_params"] > 0


def test_acceleration_is_computed_from_the_tables_numbers(report: dict) -> None:
    rows, ref = report["results"], report["acceleration_reference"]
    assert ref == "test-tiny (sdpa)"  # no fastsam3d row: the last 3D torch row
    assert "128^3 volume" in report["acceleration_definition"]
    ref_enc = rows[ref]["encoder_volume"]["median_ms"]
    ref_all = ref_enc + rows[ref]["decoder_volume"]["median_ms"]
    for r in rows.values():
        overall = r["encoder_volume"]["median_ms"] + r["decoder_volume"]["median_ms"]
        assert r["acceleration"]["encoder_x"] == pytest.approx(
            r["encoder_volume"]["median_ms"] / ref_enc
        )
        assert r["acceleration"]["overall_x"] == pytest.approx(overall / ref_all)
    assert rows[ref]["acceleration"]["encoder_x"] == pytest.approx(1.0)


def test_flops_per_slice_match_the_known_encoders() -> None:
    assert count_flops_2d("sam-vit-b")["gflops_per_slice"] == pytest.approx(972, rel=0.02)
    assert count_flops_2d("sam-med2d")["gflops_per_slice"] > 0


def test_peak_memory_2d_runs_in_a_fresh_process() -> None:
    assert peak_memory_mb_2d(Candidate2D("mobilesam"), threads=1) > 50
