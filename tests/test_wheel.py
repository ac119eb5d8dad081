"""The wheel is the product: built from this checkout, installed (not editable) into a fresh
venv, run from outside the clone, it has everything it needs (bundled weights, samples,
conformance fixtures, the NiiVue bundle)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from fastsam3d._version import __version__
from fastsam3d.server.process import free_port

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "src" / "fastsam3d" / "server" / "static" / "vendor"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its ``bin`` folder. The dependencies
    (torch, ...) come from this test environment's site-packages through a ``.pth`` line,
    which adds that folder without running its ``.pth`` files (so not this clone's editable
    install)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source, dist = tmp / "source", tmp / "dist"
    listed = subprocess.run(  # the checkout's files (tracked or new, not ignored), not its builds
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist,
         str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheels = list(dist.glob("fastsam3d-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheels[0])],
        check=True, capture_output=True,
    )  # fmt: skip
    return venv / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTSAM3D_NIIVUE")}
    return subprocess.run(
        [str(bin_dir / "fastsam3d"), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_installed_package_is_the_wheel_not_the_clone(installed, tmp_path) -> None:
    where = subprocess.run(
        [installed / "python", "-c", "import fastsam3d; print(fastsam3d.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(installed.parent), where
    assert not Path(where).is_relative_to(ROOT)
    done = _run(installed, "--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"fastsam3d {__version__}"


def test_selfcheck_and_demo_run_from_the_wheel(installed, tmp_path) -> None:
    done = _run(installed, "selfcheck", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all outputs match upstream" in done.stdout
    done = _run(installed, "demo", "--structures", "liver", "--clicks", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bundled weights" in done.stdout
    assert (tmp_path / "demo_out" / "liver.png").is_file()
    assert (tmp_path / "demo_out" / "labels.nii.gz").is_file()


def test_viewer_from_the_wheel_serves_niivue(installed, tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTSAM3D_NIIVUE")}
    cmd = [str(installed / "fastsam3d"), "serve", "--port", str(port), "--runtime", "torch",
           "--recovery-dir", ""]  # fmt: skip
    server = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200
        module = httpx.get(f"http://127.0.0.1:{port}/vendor/niivue.js", timeout=30)
        assert module.status_code == 200
        assert "javascript" in module.headers["content-type"]
        record = json.loads((VENDOR / "niivue.json").read_text())
        assert hashlib.sha256(module.content).hexdigest() == record["sha256"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_vendored_niivue_matches_its_record_and_the_npm_pin() -> None:
    record = json.loads((VENDOR / "niivue.json").read_text())
    data = (VENDOR / "niivue.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["sha256"]
    pin = json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]["@niivue/niivue"]
    assert record["version"] == pin, "run python scripts/update_niivue.py after changing the pin"
    assert (
        "NiiVue" in (VENDOR / "THIRD_PARTY_LICENSES.txt").read_text()
        or "niivue" in (VENDOR / "THIRD_PARTY_LICENSES.txt").read_text()
    )
    npm_copy = ROOT / "web" / "node_modules" / "@niivue" / "niivue" / "dist" / "index.js"
    if npm_copy.is_file():  # a contributor's npm install: the vendored file is the same
        assert npm_copy.read_bytes() == data
