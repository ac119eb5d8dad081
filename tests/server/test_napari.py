"""napari end to end: the napari-nninteractive plugin (PyPI) connects to a running
``fastsam3d serve``; one point in its point layer fills its label layer with the server's mask.
Runs ``napari_e2e.py`` under Xvfb in a child process; the screenshot goes to
``test-artifacts/napari/``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastsam3d.server.process import serving

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE.parents[1] / "test-artifacts" / "napari"


def _missing() -> str | None:
    if shutil.which("xvfb-run") is None:
        return "xvfb-run not found (Debian package xvfb; scripts/setup.sh --browser)"
    try:
        import napari  # noqa: F401
        import napari_nninteractive  # noqa: F401
    except ImportError as err:
        return f"napari / napari-nninteractive not installed ({err})"
    return None


def test_napari_plugin_fills_its_label_layer_from_the_server(tmp_path) -> None:
    reason = _missing()
    if reason is not None:
        if os.environ.get("FASTSAM3D_REQUIRE_BROWSER") == "1":
            pytest.fail(f"napari test required but {reason}")
        pytest.skip(reason)
    token = "napari-test-token"
    with serving(["--data-dir", str(tmp_path), "--token", token, "--threads", "2"]) as server:
        run = subprocess.run(
            [
                "xvfb-run",
                "-a",
                "-s",
                "-screen 0 1280x1024x24",
                sys.executable,
                str(HERE / "napari_e2e.py"),
                server.url,
                token,
                str(ARTIFACTS),
            ],
            capture_output=True,
            encoding="utf-8",  # napari prints non-ASCII; do not depend on the locale
            errors="replace",
            timeout=300,
            env={**os.environ, "QT_QPA_PLATFORM": "xcb"},
        )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((ARTIFACTS / "napari-e2e.json").read_text())
    assert result["mask_voxels"] > 0
    assert result["equals_server"], result
    assert result["on_liver"] > 0.5, result
    assert result["coloured_pixels"] > 200, result  # the mask is drawn over the CT
