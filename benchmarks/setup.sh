#!/usr/bin/env bash
# Create benchmarks/.venv: the package (editable, from this repo) plus the peer frameworks.
# Peers are benchmark-only: they are never dependencies of nowcast_jax.
#   torch==2.13.0  CPU build (the pinned version is found as a local CPU wheel; an unpinned
#                  `torch` would pull the CUDA build with several GB of nvidia packages)
#   keras          Keras 3, run on the JAX backend (KERAS_BACKEND=jax)
#   flax           linen ConvLSTMCell / OptimizedLSTMCell peers
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
if [ ! -x "$here/.venv/bin/python" ]; then
  "$py" -m venv "$here/.venv"
fi
pip="$here/.venv/bin/python -m pip"
# Keras reads its backend at import and, on its first import, writes a config file: run it on
# JAX and keep that file inside the venv (never ~/.keras, which would say "tensorflow").
export KERAS_BACKEND=jax KERAS_HOME="$here/.venv/keras"
$pip install --quiet --upgrade pip
# torch first, pinned, so that nothing later resolves an unpinned torch.
$pip install --quiet "torch==2.13.0"
# the package itself (relative to this script: ../), editable, with the radar readers (bench_loop.py reads MeteoSwiss)
(cd "$here" && $pip install --quiet -e "..[radar]")
$pip install --quiet "keras>=3" flax
"$here/.venv/bin/python" - <<'PY'
import jax, jaxlib, flax, keras, torch
print("benchmarks/.venv ready: jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__,
      "keras", keras.__version__, "torch", torch.__version__, "cuda build:", torch.version.cuda)
PY
