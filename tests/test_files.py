"""Atomic outputs: a failed write changes nothing and leaves no temporary file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fastsam3d.files import atomic_output


def test_success_replaces_the_file_with_the_usual_mode(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with atomic_output(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failure_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.txt"
    path.parent.mkdir()
    path.write_text("good")

    def write_half() -> None:
        with atomic_output(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_half()
    assert path.read_text() == "good"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]
