#!/usr/bin/env bash
# The project's test command (README, CI): set-up, format and lint checks, type check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
# the browser tests must run here, not skip
export FASTSAM3D_REQUIRE_BROWSER=1
.venv/bin/ruff format --check src tests
.venv/bin/ruff check src tests
.venv/bin/mypy
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: treating as a failure" >&2
    exit 1
fi
exit "$status"
