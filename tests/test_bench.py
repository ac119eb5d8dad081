"""Timing helpers (statistics and foreign-load monitoring; no speed assertions)."""

from __future__ import annotations

import time

from fastsam3d.bench.encoders import Candidate, benchmark_encoders, markdown_table
from fastsam3d.bench.timing import ForeignLoad, round_robin


def test_round_robin_interleaves_and_reports_stats() -> None:
    calls: list[str] = []

    def make(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)

        return run

    # no retries: a sample repeated under foreign load would change the call order
    stats = round_robin(
        {"a": make("a", 0.001), "b": make("b", 0.004)}, rounds=3, warmup=1, max_retries=0
    )
    assert calls[:2] == ["a", "b"]  # warm-up once each
    assert calls[2:8:2] == ["a", "a", "a"]
    assert calls[3:8:2] == ["b", "b", "b"]
    assert len(stats["a"].samples) == 3 == len(stats["b"].samples)
    assert stats["a"].min_ms <= stats["a"].median_ms <= stats["a"].p90_ms
    assert stats["b"].median_ms > stats["a"].median_ms


def test_foreign_load_is_measured_on_linux() -> None:
    with ForeignLoad() as load:
        sum(range(200_000))
    assert load.cores is None or load.cores >= 0.0


def test_encoder_benchmark_on_tiny_models() -> None:
    report = benchmark_encoders(
        [Candidate("test-tiny"), Candidate("test-tiny", "eager")], rounds=2, threads=1
    )
    assert report["machine"]["threads"] == 1
    table = markdown_table(report)
    assert "test-tiny (sdpa)" in table
    assert "test-tiny (eager)" in table


def test_encoder_benchmark_labels_runtimes() -> None:
    report = benchmark_encoders([Candidate("test-tiny", runtime="onednn")], rounds=1, threads=1)
    (row,) = report["results"].values()
    assert row["runtime"] == "onednn"
    assert "test-tiny (sdpa, onednn)" in report["results"]


def test_session_benchmark_structure() -> None:
    from fastsam3d.bench.session import benchmark_session, session_markdown

    report = benchmark_session(model_name="test-tiny", rounds=2, warm_clicks=3, threads=1)
    assert len(report["records"]) == 2
    assert len(report["warm_samples_ms"]) == 6
    first = report["first_click_ms"]
    assert first["median"] >= first["encode"] > 0
    assert first["median_with_file_read"] >= first["median"]
    assert "warm click" in session_markdown(report)


def test_session_benchmark_reports_the_runtime_auto_stands_for(monkeypatch, capsys) -> None:
    """`fastsam3d bench session` measures what a user gets: the bundled model on the runtime
    `auto` picks (here forced to torch), and names that runtime."""
    from fastsam3d.bench import session as bench_session
    from fastsam3d.cli import main
    from fastsam3d.runtime import select

    monkeypatch.setattr(select, "resolve", lambda runtime, model: "torch")
    monkeypatch.setattr(bench_session, "resolve", lambda runtime, model: "torch")
    seen = {}
    original = bench_session.load_model

    def spy(name, random_weights=False):
        seen["model"] = name
        assert not random_weights  # the bundled model has weights
        return original("test-tiny", random_weights=True)

    monkeypatch.setattr(bench_session, "load_model", spy)
    assert main(["bench", "session", "--rounds", "1", "--threads", "1"]) == 0
    assert seen["model"] == "fastsam3d-lite"
    assert "torch" in capsys.readouterr().out
    assert main(["bench", "--runtimes", "auto", "--models", "test-tiny"]) == 2
