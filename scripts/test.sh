#!/usr/bin/env bash
# Set up the environment with the test extras and run the whole test suite.
# Real-data tests read $NOWCAST_JAX_DATA or ../shared/data and skip (with the reason) without it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
exec .venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
