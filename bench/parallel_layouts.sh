#!/usr/bin/env bash
# Trains the small benchmark config (configs/small_llama.yaml) for a few steps on each parallel layout that fits in this machine
# (1 rank; dp=2; cp=2; pp=2 under mpirun -np 2) and prints one table: tokens/s (mean over steps
# 2..N, one OpenMP thread per rank), the final loss (equal across layouts: they compute the same
# thing) and the pipeline bubble, measured and simulated.
#   bench/parallel_layouts.sh [steps]     (default 20; writes the benchmarks' dataset when it is missing)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
steps="${1:-20}"
data="$(bench_longtail_dataset)"
train="$build_dir/bin/chunkflow-train"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
common=(--config "$repo_root/configs/small_llama.yaml" --set data.path="$data" --set run.steps="$steps"
        --set run.output_dir="$work" --set logging.progress=lines --set logging.tensorboard=false)
run_layout() {
  local name="$1" ranks="$2"; shift 2
  if [ "$ranks" = 1 ]; then
    "$train" "${common[@]}" --set run.name="$name" "$@" >"$work/$name.log" 2>&1
  else
    mpirun -np "$ranks" --bind-to none "$train" "${common[@]}" --set run.name="$name" "$@" >"$work/$name.log" 2>&1
  fi
}
run_layout single 1
run_layout dp2 2 --set parallel.dp=2
run_layout cp2 2 --set parallel.cp=2
run_layout pp2 2 --set parallel.pp=2
"${CHUNKFLOW_VENV:-$cache_root/venv}/bin/python" - "$work" <<'PY'
import json, math, sys
work = sys.argv[1]
print(f"{'layout':8} {'tokens/s':>9} {'vs 1 rank':>9} {'final loss':>11} {'bubble':>7} {'simulated':>9}")
base = None
for name in ["single", "dp2", "cp2", "pp2"]:
    rows = [json.loads(line) for line in open(f"{work}/{name}/metrics.jsonl")]
    tail = rows[1:] or rows
    tokens = sum(r["tokens"] for r in tail) / sum(r["seconds"] for r in tail)
    base = base or tokens
    bubble = [r["pipeline_bubble"] for r in tail if r.get("pipeline_bubble") is not None]
    simulated = [r["pipeline_bubble_simulated"] for r in tail if r.get("pipeline_bubble_simulated") is not None]
    show = lambda values: f"{sum(values) / len(values):.3f}" if values else "-"
    print(f"{name:8} {tokens:9.0f} {tokens / base:9.2f} {rows[-1]['loss']:11.6f} {show(bubble):>7} {show(simulated):>9}")
PY
