#!/usr/bin/env bash
# How far chunkflow-plan's predictions are from measured runs: plans the small benchmark config
# (configs/small_llama.yaml) once per layout (one shared calibration, one OpenMP thread like the
# runs), then trains each setting for a few steps and prints predicted vs measured step time
# (median of steps 2..N), peak memory (rank 0's peak RSS) and pipeline bubble, with relative errors.
#   bench/planner_accuracy.sh [steps]     (default 15; writes the benchmarks' dataset when it is missing)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
steps="${1:-15}"
data="$(bench_longtail_dataset)"
train="$build_dir/bin/chunkflow-train"
plan="$build_dir/bin/chunkflow-plan"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
config=(--config "$repo_root/configs/small_llama.yaml" --set data.path="$data")

# settings: name ranks chunk_size resident_chunks extra --set arguments
settings=(
  "c128_k1 1 128 1"
  "c256_k1 1 256 1"
  "c1024_k1 1 1024 1"
  "c1024_k4 1 1024 4"
  "pp2_c256_k1 2 256 1 --set parallel.pp=2"
  "dp2_c256_k1 2 256 1 --set parallel.dp=2"
)
start=$SECONDS
for setting in "${settings[@]}"; do
  read -r name ranks chunk resident extra <<<"$setting"
  extra_args=()
  read -r -a extra_args <<<"${extra:-}"
  "$plan" "${config[@]}" "${extra_args[@]}" --steps "$steps" --chunk-sizes "$chunk" --resident-chunks "$resident" \
    --calibration "$work/calibration.json" --json "$work/$name.plan.json" >"$work/$name.plan.txt" 2>&1 ||
    { cat "$work/$name.plan.txt"; exit 1; }
  run=("$train" "${config[@]}" "${extra_args[@]}" --set chunking.chunk_size="$chunk"
       --set chunking.resident_chunks="$resident" --set run.steps="$steps" --set run.output_dir="$work"
       --set run.name="$name" --set logging.progress=lines --set logging.tensorboard=false
       --set checkpoint.interval=-1)
  if [ "$ranks" = 1 ]; then
    "${run[@]}" >"$work/$name.log" 2>&1 || { tail -20 "$work/$name.log"; exit 1; }
  else
    mpirun -np "$ranks" --bind-to none "${run[@]}" >"$work/$name.log" 2>&1 || { tail -20 "$work/$name.log"; exit 1; }
  fi
done
sed -n '/^calibration/,/^  optimizer/p' "$work/c128_k1.plan.txt"
python3 - "$work" "${settings[@]}" <<'PY'
import json, statistics, sys
work, settings = sys.argv[1], sys.argv[2:]
def rel(predicted, measured):
    return f"{100 * (predicted - measured) / measured:+6.1f}%"
print(f"{'setting':12} {'step s pred':>11} {'measured':>9} {'error':>7} {'peak MiB pred':>13} {'measured':>9}"
      f" {'error':>7} {'bubble pred':>11} {'measured':>9}")
step_errors, memory_errors = [], []
for setting in settings:
    name = setting.split()[0]
    plan = json.load(open(f"{work}/{name}.plan.json"))["candidates"][0]
    rows = [json.loads(line) for line in open(f"{work}/{name}/metrics.jsonl")]
    measured_step = statistics.median(r["seconds"] for r in rows[1:])
    predicted_step = statistics.median(plan["seconds_of_step"][1:])
    measured_peak = rows[-1]["peak_rss_bytes"] / 2**20
    predicted_peak = plan["peak_memory_bytes"] / 2**20
    bubbles = [r["pipeline_bubble"] for r in rows[1:] if r.get("pipeline_bubble") is not None]
    bubble = f"{plan['bubble_ratio']:11.3f} {statistics.mean(bubbles):9.3f}" if bubbles else f"{'-':>11} {'-':>9}"
    step_errors.append(abs(predicted_step - measured_step) / measured_step)
    memory_errors.append(abs(predicted_peak - measured_peak) / measured_peak)
    print(f"{name:12} {predicted_step:11.3f} {measured_step:9.3f} {rel(predicted_step, measured_step)} "
          f"{predicted_peak:13.1f} {measured_peak:9.1f} {rel(predicted_peak, measured_peak)} {bubble}")
print(f"mean |error|: step time {100 * statistics.mean(step_errors):.1f}%, peak memory "
      f"{100 * statistics.mean(memory_errors):.1f}%")
PY
echo "($((SECONDS - start)) s)"
