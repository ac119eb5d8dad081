"""Short load test of ``fastsam3d serve`` (the 60 s run for the README is
``fastsam3d bench serve --sessions 8 --seconds 60``): concurrent users, no errors, no cross-talk,
every session's label map equal to a replay of its own clicks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fastsam3d.bench.serve_load import run_load_test
from fastsam3d.cli import main


def test_eight_concurrent_sessions_without_errors_or_crosstalk() -> None:
    report = run_load_test(sessions=8, seconds=5, threads=2)
    assert report["errors"] == []
    assert report["crosstalk"] == []
    assert len(report["replay_mismatched_voxels"]) == 8
    assert all(v == 0 for v in report["replay_mismatched_voxels"].values())
    assert all(n >= 1 for n in report["per_session_clicks"])
    assert report["open_sessions_at_end"] == 8
    assert 0 < report["latency_ms"]["median"] <= report["latency_ms"]["p95"]
    assert math.isfinite(report["memory_mb"]["peak"])


def test_cli_bench_serve_writes_report_and_plot(tmp_path: Path, capsys) -> None:
    out, plot = tmp_path / "load.json", tmp_path / "load.png"
    code = main(
        [
            *("bench", "serve", "--sessions", "2", "--seconds", "2"),
            *("--json", str(out), "--plot", str(plot)),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| sessions |" in printed
    assert "machine:" in printed
    report = json.loads(out.read_text())
    assert report["sessions"] == 2
    assert report["errors"] == []
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("sessions", [0])
def test_load_test_needs_users(sessions: int) -> None:
    with pytest.raises(ValueError, match="at least one"):
        run_load_test(sessions=sessions, seconds=1)
