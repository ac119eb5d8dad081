#!/usr/bin/env bash
# Set-up on a fresh machine: .venv with the CPU build of torch, this package (editable) and its
# test tools, at the versions pinned in requirements/constraints.txt. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt)
# torch first and explicitly: a bare `torch` requirement could pull a multi-GB CUDA build
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[test]"
