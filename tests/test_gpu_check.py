"""``scripts/gpu_check.sh``: its CPU dry run does every step and writes every output."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The script in a session of its own: on a timeout SIGTERM reaches torchrun, which stops
    its workers."""
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        env={**os.environ, "PYTHON": sys.executable},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_dry_run_trains_resumes_benches_and_evaluates_on_the_cpu(tmp_path) -> None:
    out = tmp_path / "check"
    done = _run(["--dry-run", "--out", str(out)], timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with (out / "timings.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["step"] for r in rows] == [
        "train_first_half",
        "train_resumed",
        "train_outputs",
        "bench",
        "table3",
        "eval",
    ]
    assert {r["status"] for r in rows} == {"ok"}
    assert "dry run (CPU)" in (out / "environment.txt").read_text()
    assert "2 steps" in (out / "train_outputs.log").read_text()
    with (out / "train" / "metrics.csv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2]
    bench = json.loads((out / "bench.json").read_text())
    assert any("test-tiny" in label for label in bench["results"])
    table3 = json.loads((out / "table3.json").read_text())["results"]
    assert {row["kind"] for row in table3.values()} == {"2d", "3d"}
    with (out / "eval" / "results.csv").open() as f:
        results = list(csv.DictReader(f))
    assert {(r["case"], r["structure"], r["click"]) for r in results} == {
        ("ct", "spleen", "1"),
        ("ct", "spleen", "2"),
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU-only machines")
def test_without_a_gpu_it_says_to_use_the_dry_run(tmp_path) -> None:
    done = _run(["--out", str(tmp_path / "gpu")], timeout=60)
    assert done.returncode == 1
    assert "no CUDA device visible to torch; use --dry-run" in done.stderr
