#!/usr/bin/env bash
# Wheels of what the lent GPU machine's Python lacks for training and scoring on the bundled
# samples (nibabel, edt; torch, numpy, scipy, scikit-image, safetensors and tqdm are there), for
# its Python 3.12 on x86-64, at the versions requirements/constraints.txt pins, into .whl/
# (ignored by git). There: pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   usage: bash scripts/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" requirements/constraints.txt; }
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "$(pin nibabel)" "$(pin edt)" "$(pin importlib_resources)"
ls -la .whl
