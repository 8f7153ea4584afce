#!/usr/bin/env bash
# Regenerate every benchmark table in one command:
#   bash benchmarks/run_all.sh            full run (82 min on a 2-core EPYC, 26 min on an AVX-512 one) -> benchmarks/results/
#   bash benchmarks/run_all.sh --quick    a check that every script runs (< 10 min) -> benchmarks/results/quick/
# Creates benchmarks/.venv first if it is missing. Writes one .md per script and all.md (concatenated),
# which is what docs/benchmarks.md quotes (host A's run in results/, host B's in results/avx512/). Scripts run one after another, never in parallel, so they do
# not disturb each other; a script that fails is named in all.md and the others still run (exit 1 at the end).
# OUT sets the full run's folder (default benchmarks/results; e.g. OUT=benchmarks/results/<host> keeps a
# second host's run beside the first).
# RUNS (default 7) sets the timed runs per contender; SLOW_RUNS (default 3) those of contenders whose first
# (compiling) call takes > 3x that of ours (the lax.conv-based steps, Flax, Keras).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
[ -x benchmarks/.venv/bin/python ] || bash benchmarks/setup.sh || exit 1
py=benchmarks/.venv/bin/python
export KERAS_BACKEND=jax KERAS_HOME="$here/.venv/keras"
if [ "$quick" = 1 ]; then
  runs="${RUNS:-2}"; slow="${SLOW_RUNS:-1}"; out=benchmarks/results/quick
  main_only="--only ours,ours_direct,torch,torch_best"   # no lax.conv / Flax / Keras steps (~100 s each)
  extra_only="ours,torch"
  extra_runs=1; grid_frames="64"   # one grid: a check that the script runs, not of the threshold
  # shorter sequences for the larger workloads (the check took 14 min at full length on 2026-12-03)
  extra_seq="--in-steps 5 --out-steps 5"; mem_steps=5; roof_steps=3
else
  runs="${RUNS:-7}"; slow="${SLOW_RUNS:-3}"; out="${OUT:-benchmarks/results}"
  main_only=""
  extra_only="ours,torch,torch_best"
  extra_runs="$runs"; grid_frames="64,80,96,128"
  extra_seq=""; mem_steps=20; roof_steps=10
fi
mkdir -p "$out"
echo "started $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)" > "$out/run.log"
failed=()
bench() {  # bench NAME SCRIPT ARGS...: one table, its stderr kept in NAME.log
  local name=$1; shift
  echo "[run_all] $name: $*" >&2
  local t0=$SECONDS
  if "$py" "$@" > "$out/$name.md" 2> "$out/$name.log"; then
    echo "$name: $((SECONDS - t0)) s" >> "$out/run.log"
  else
    failed+=("$name"); echo "**$name failed** (see $out/$name.log)" > "$out/$name.md"
    echo "$name: FAILED after $((SECONDS - t0)) s" >> "$out/run.log"
  fi
}
bench convlstm benchmarks/bench_convlstm.py --runs "$runs" --slow-runs "$slow" $main_only
bench station benchmarks/bench_station.py --runs "$runs"
bench memory benchmarks/bench_memory.py --steps "$mem_steps" --timed "$([ "$quick" = 1 ] && echo 1 || echo 3)"
bench loop benchmarks/bench_loop.py --runs "$([ "$quick" = 1 ] && echo 1 || echo 5)" --steps "$([ "$quick" = 1 ] && echo 12 || echo 40)"
bench compile benchmarks/bench_compile.py --reps "$([ "$quick" = 1 ] && echo 1 || echo 3)"
# the other workloads of issue 17: batch 1 and 32, and 32x32 / 64x64 patched grids (frames 128 / 256)
bench convlstm_b1 benchmarks/bench_convlstm.py --runs "$extra_runs" --batch 1 --only "$extra_only"
bench convlstm_b32 benchmarks/bench_convlstm.py --runs "$extra_runs" --batch 32 --only "$extra_only" $extra_seq
bench convlstm_g32 benchmarks/bench_convlstm.py --runs "$extra_runs" --frame 128 --only "$extra_only" $extra_seq
bench convlstm_g64 benchmarks/bench_convlstm.py --runs "$extra_runs" --frame 256 --batch 2 --only "$extra_only" $extra_seq
bench roofline benchmarks/bench_roofline.py --runs "$extra_runs" --steps "$roof_steps"
bench grid benchmarks/bench_grid.py --runs "$([ "$quick" = 1 ] && echo 1 || echo 4)" --frames "$grid_frames"
if [ "$quick" = 1 ]; then  # one allocator per process, each compiling the step: ~4 min even at one rep
  echo "allocator: skipped in --quick (run without --quick)" > "$out/allocator.md"; echo "allocator: skipped" >> "$out/run.log"
else
  bench allocator benchmarks/bench_allocator.py --reps 3
fi
echo "ended $(date -u '+%Y-%m-%d %H:%M UTC') after $SECONDS s, load average $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/run.log"
names=(convlstm station memory loop compile convlstm_b1 convlstm_b32 convlstm_g32 convlstm_g64 roofline grid allocator)
{ cat "$out/run.log"; echo; for n in "${names[@]}"; do cat "$out/$n.md"; echo; done; } > "$out/all.md"
echo "wrote $out/all.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
