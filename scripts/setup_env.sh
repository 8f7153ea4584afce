#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment .venv and install the project with the
# given extras from its own files. Usage: bash scripts/setup_env.sh "test"   (or "all", "dev", ...)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[${extras}]"
