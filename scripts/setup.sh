#!/usr/bin/env bash
# Set-up on a fresh machine: .venv with the CPU build of torch, this package (editable) and its
# test tools, at the versions pinned in requirements/constraints.txt. NiiVue is vendored in the
# package; when npm is there, the npm copy of its pin is installed too so the tests can check that
# the vendored file equals it (scripts/update_niivue.py refreshes the vendored one). Safe to re-run.
#   --browser  also install the Debian packages the tests need (Chromium, dicom3tools, Xvfb and
#              Qt's X libraries; apt; needs root or sudo)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt)
# torch first and explicitly: a bare `torch` requirement could pull a multi-GB CUDA build
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test]"

# NiiVue from npm (the vendored copy must equal it; see tests/test_wheel.py)
if command -v npm >/dev/null 2>&1; then
    # web/node_modules/.installed-lock: the lock file of the last install (skip when unchanged)
    if ! cmp -s web/package-lock.json web/node_modules/.installed-lock; then
        npm ci --prefix web --no-audit --no-fund --loglevel=error
        cp web/package-lock.json web/node_modules/.installed-lock
    fi
else
    echo "setup: npm not found: the vendored NiiVue is used as is (not compared with npm's)" >&2
fi

# --browser: Debian packages the tests need: Chromium (browser tests), dicom3tools (dciodvfy
# validates the DICOM SEG output), Xvfb and the X/GL libraries Qt needs (the napari test)
if [ "${1:-}" = "--browser" ] \
    && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/dciodvfy ] || [ ! -x /usr/bin/xvfb-run ]; }; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    packages=(chromium dicom3tools xvfb xauth libgl1 libegl1 libgl1-mesa-dri libfontconfig1
        libdbus-1-3 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0
        libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-xkb1)
    $sudo apt-get install -y --no-install-recommends "${packages[@]}" >/dev/null \
        || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "${packages[@]}" >/dev/null; }
fi
