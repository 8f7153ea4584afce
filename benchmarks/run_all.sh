#!/usr/bin/env bash
# Regenerate every benchmark table in one command:
#   bash benchmarks/run_all.sh            (creates benchmarks/.venv first if it is missing)
# Writes benchmarks/results/*.md (one per script) and benchmarks/results/all.md (concatenated),
# which is what docs/benchmarks.md quotes. Scripts run one after another, never in parallel,
# so they do not disturb each other. RUNS=10 (default) sets the timed runs per contender;
# SLOW_RUNS=3 those of contenders whose first (compiling) call takes > 3x that of ours.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
[ -x benchmarks/.venv/bin/python ] || bash benchmarks/setup.sh
py=benchmarks/.venv/bin/python
export KERAS_BACKEND=jax
runs="${RUNS:-10}"
mkdir -p benchmarks/results
"$py" benchmarks/bench_convlstm.py --runs "$runs" --slow-runs "${SLOW_RUNS:-3}" > benchmarks/results/convlstm.md
"$py" benchmarks/bench_roofline.py --runs "$runs" > benchmarks/results/roofline.md
"$py" benchmarks/bench_compile.py --reps "${COMPILE_REPS:-3}" > benchmarks/results/compile.md
"$py" benchmarks/bench_memory.py > benchmarks/results/memory.md
"$py" benchmarks/bench_station.py --runs "$runs" > benchmarks/results/station.md
"$py" benchmarks/bench_allocator.py --reps 3 > benchmarks/results/allocator.md
"$py" benchmarks/bench_grid.py > benchmarks/results/grid.md
cat benchmarks/results/{convlstm,roofline,compile,memory,station,allocator,grid}.md > benchmarks/results/all.md
echo "wrote benchmarks/results/all.md"
