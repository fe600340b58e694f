#!/usr/bin/env bash
# GPU training benchmark (issue 15): the Qwen2-0.5B shape of configs/qwen2_0.5b_gpu.yaml (random
# init, bf16 mixed precision, one GPU), in one run:
#   single   one sequence per step of each length in --lengths: tokens/s, MFU, peak GPU memory
#            (caching allocator) and the K/V state, ChunkFlow with 8K chunks (resident_chunks 1,
#            and for sequences of 2-4 chunks also every chunk resident: no recomputation);
#   longtail a long-tail global batch (LMSys-Chat-1M shape, lengths scaled so the longest is about
#            128K): chunkflow vs pack_to_max (full layer recomputation) vs pad_to_longest, same
#            trainer, same token budget;
#   peer     Hugging Face transformers (bench/hf_peer.py: SDPA, autocast bf16; gradient
#            checkpointing only where needed: a run that runs out of memory without it is
#            repeated with it, both rows kept) on the single-sequence shapes (and, in longtail, on
#            the long-tail batch, one sequence per micro-batch).
# Prints Markdown tables and writes every number to <out>/gpu_training.json. Throughput counts real
# tokens over steps 2..N. A failed or out-of-memory run is recorded as such, never dropped.
#
#   bench/gpu_training.sh [--steps N] [--lengths "4096 32768 131072 262144"] [--out DIR]
#                         [--parts "single longtail peer"] [--profile] [--smoke]
#
# --profile runs each ChunkFlow run's last step under the Kineto profiler (logging.profile_step)
# and keeps its table as <out>/results/<name>.profile.txt (the heaviest GPU kernels and CPU
# operators, the GPU's busy share); that step is then left out of the timing.
# --smoke rehearses the whole script on a CPU in about a minute: the small benchmark model
# (configs/small_llama.yaml) on the CPU in float32, short lengths, 3 steps (ctest: bench.gpu_training_smoke, with --profile).
# Environment: CHUNKFLOW_BIN (binaries, default build/bin), PYTHON (for hf_peer.py and the
# tables; default the bootstrap virtualenv's, else python3), CHUNKFLOW_BENCH_TIMEOUT (seconds per
# run, default 600).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CHUNKFLOW_BIN:-$repo_root/build/bin}"
python="${PYTHON:-$HOME/.cache/chunkflow/venv/bin/python}"
[ -x "$python" ] || python=python3
steps=4
lengths="4096 32768 131072 262144"
parts="single longtail peer"
out="$repo_root/runs/bench-gpu-training"
smoke=0
profile=0
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --lengths) lengths="$2"; shift 2 ;;
    --parts) parts="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --profile) profile=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "bench/gpu_training.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$steps" -ge 2 ] || { echo "bench/gpu_training.sh: --steps must be >= 2 (timing uses steps 2..N), got $steps" >&2; exit 2; }
[ "$profile" = 0 ] || [ "$steps" -ge 3 ] ||
  { echo "bench/gpu_training.sh: --profile needs --steps >= 3 (the profiled last step is not timed), got $steps" >&2; exit 2; }
limit="${CHUNKFLOW_BENCH_TIMEOUT:-600}"
config="$repo_root/configs/qwen2_0.5b_gpu.yaml"
# Benchmark runs are disposable: a rerun with the same --out replaces them (run.overwrite).
common=(--set logging.progress=lines --set logging.tensorboard=false --set checkpoint.interval=-1 --set run.overwrite=true)
peer_device=cuda
longtail_scale=0.43  # the histogram's 300K tail bound x 0.43 = 129K
if [ "$smoke" = 1 ]; then
  config="$repo_root/configs/small_llama.yaml"
  lengths="300 1100"
  steps=3
  common+=(--set run.device=cpu --set chunking.chunk_size=256)
  peer_device=cpu
  longtail_scale=0.005
fi
vocab="$("$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["model"]["vocab_size"])' "$config")"
mkdir -p "$out/data" "$out/runs" "$out/results"
: >"$out/results/runs.jsonl"

log() { printf '[gpu_training] %s\n' "$*" >&2; }

# record NAME PART SHAPE STRATEGY STATUS METRICS_JSONL|PEER_JSON PROFILED_STEPS: one line of runs.jsonl.
record() {
  "$python" - "$@" >>"$out/results/runs.jsonl" <<'PY'
import json, statistics, sys
name, part, shape, strategy, status, source = sys.argv[1:7]  # argv[7]: profiled steps at the end
row = {"name": name, "part": part, "shape": shape, "strategy": strategy, "status": status}
if status == "ok" and source.endswith(".jsonl"):
    steps = [json.loads(line) for line in open(source) if line.strip()]
    # Step 1 warms up; a profiled last step (--profile) carries the profiler's cost.
    timed = steps[1:len(steps) - int(sys.argv[7])] or steps
    row["tokens_per_second"] = sum(s["tokens"] for s in timed) / sum(s["seconds"] for s in timed)
    mfu = [s["mfu"] for s in timed if s.get("mfu") is not None]
    row["mfu"] = statistics.mean(mfu) if mfu else None
    row["tflops"] = statistics.mean(s["tflops"] for s in timed)
    row["peak_gpu_gib"] = max(s.get("peak_device_memory_bytes", 0) for s in steps) / 2**30
    row["peak_kv_state_gib"] = max(s["peak_kv_state_bytes"] for s in steps) / 2**30
    row["peak_rss_gib"] = max(s["peak_rss_bytes"] for s in steps) / 2**30
    row["final_loss"] = steps[-1]["loss"]
elif status == "ok":
    peer = json.loads(open(source).read().strip().splitlines()[-1])
    row["tokens_per_second"] = peer.get("tokens_per_second")
    row["peak_gpu_gib"] = (peer.get("peak_gpu_bytes") or 0) / 2**30
    row["peak_rss_gib"] = (peer.get("peak_rss_bytes") or 0) / 2**30
print(json.dumps(row))
PY
}

# train NAME PART SHAPE STRATEGY DATA [--set ...]: one chunkflow-train run.
train() {
  local name="$1" part="$2" shape="$3" strategy="$4" data="$5"; shift 5
  local run_log="$out/results/$name.log" status=ok profiling=()
  [ "$profile" = 1 ] && profiling=(--set logging.profile_step="$steps")
  log "$name: chunkflow-train ($strategy, $shape)"
  if ! timeout "$limit" "$bin/chunkflow-train" --config "$config" --set data.path="$data" \
      --set run.name="$name" --set run.output_dir="$out/runs" --set run.steps="$steps" "${common[@]}" \
      "${profiling[@]}" "$@" >"$run_log" 2>&1; then
    status=failed
    grep -qi "out of memory" "$run_log" && status=oom
    log "$name: $status (log: $run_log)"; tail -n 5 "$run_log" >&2
  fi
  [ "$profile" = 1 ] && cp "$out/runs/$name/profile/step-$steps-rank-0.txt" "$out/results/$name.profile.txt" 2>/dev/null
  record "$name" "$part" "$shape" "$strategy" "$status" "$out/runs/$name/metrics.jsonl" "$profile"
}

# one_sequence_dataset LENGTH: a dataset of one random sequence of LENGTH tokens.
one_sequence_dataset() {
  local length="$1" prefix="$out/data/one_$1"
  if [ ! -f "$prefix.idx" ]; then
    "$python" -c 'import json, random, sys
random.seed(int(sys.argv[1]))
print(json.dumps({"input_ids": [random.randrange(2, int(sys.argv[2])) for _ in range(int(sys.argv[1]))]}))' \
      "$length" "$vocab" >"$prefix.jsonl"
    "$bin/chunkflow-data" prepare --input "$prefix.jsonl" --output "$prefix" --vocab-size "$vocab" --quiet >/dev/null
  fi
  echo "$prefix"
}

run_single() {
  local chunk_size
  chunk_size="$("$python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["chunking"]["chunk_size"])' "$config")"
  if [ "$smoke" = 1 ]; then chunk_size=256; fi
  for length in $lengths; do
    local data chunks=$(((length + chunk_size - 1) / chunk_size))
    data="$(one_sequence_dataset "$length")"
    train "single_$length" single "$length tokens" chunkflow "$data" \
      --set data.batch_sequences=1 --set data.batch_tokens=0
    # Up to 4 chunks: also with every chunk resident (no recomputation), memory permitting.
    if [ "$chunks" -gt 1 ] && [ "$chunks" -le 4 ]; then
      train "single_${length}_resident$chunks" single "$length tokens" "chunkflow, resident_chunks $chunks" "$data" \
        --set data.batch_sequences=1 --set data.batch_tokens=0 --set chunking.resident_chunks="$chunks"
    fi
  done
}

run_longtail() {
  local prefix="$out/data/longtail"
  [ -f "$prefix.idx" ] || "$bin/chunkflow-data" synth --output "$prefix" --sequences 4000 --scale "$longtail_scale" \
    --vocab-size "$vocab" --length-histogram "$repo_root/data/distributions/lmsys_chat_1m.txt" --seed 1 --quiet >/dev/null
  local longest
  longest="$("$python" -c 'import numpy as np, sys
count = int(np.fromfile(sys.argv[1] + ".idx", dtype=np.uint64, count=1, offset=18)[0])
print(int(np.fromfile(sys.argv[1] + ".idx", dtype=np.int32, count=count, offset=34).max()))' "$prefix")"
  local shape="LMSys-shaped, longest $longest"
  train longtail_chunkflow longtail "$shape" chunkflow "$prefix"
  train longtail_pack_to_max longtail "$shape" "pack_to_max + recompute" "$prefix" \
    --set chunking.strategy=pack_to_max --set chunking.chunk_size="$longest" --set chunking.recompute_layers=true
  train longtail_pad_to_longest longtail "$shape" pad_to_longest "$prefix" \
    --set chunking.strategy=pad_to_longest --set chunking.micro_batch_sequences=4
  peer peer_longtail "$shape" "$prefix"
}

# peer_once NAME SHAPE STRATEGY DATA [hf_peer.py arguments]: one transformers run, one sequence per
# micro-batch; sets peer_status (ok, oom, failed).
peer_once() {
  local name="$1" shape="$2" strategy="$3" data="$4"; shift 4
  local peer_out="$out/results/$name.json" code=0
  peer_status=ok
  log "$name: transformers (padded, one sequence per micro-batch${*:+; $*})"
  timeout "$limit" "$python" "$repo_root/bench/hf_peer.py" --config "$config" --data "$data" \
    --mode padded --micro-batch-sequences 1 --steps "$steps" --device "$peer_device" "$@" \
    >"$peer_out" 2>"$out/results/$name.log" || code=$?
  if [ "$code" = 3 ]; then peer_status=oom; elif [ "$code" != 0 ]; then peer_status=failed; fi
  [ "$peer_status" = ok ] || log "$name: $peer_status (log: $out/results/$name.log)"
  record "$name" peer "$shape" "$strategy" "$peer_status" "$peer_out" 0
}

# peer NAME SHAPE DATA [hf_peer.py arguments]: transformers as its users run it, gradient
# checkpointing only where needed: without it first, and with it when that runs out of memory.
peer() {
  local name="$1" shape="$2" data="$3"; shift 3
  peer_once "$name" "$shape" transformers "$data" "$@"
  if [ "$peer_status" = oom ]; then
    peer_once "${name}_checkpointing" "$shape" "transformers, gradient checkpointing" "$data" "$@" --gradient-checkpointing
  fi
}

run_peer() {
  for length in $lengths; do
    peer "peer_$length" "$length tokens" "$(one_sequence_dataset "$length")" \
      --set data.batch_sequences=1 --set data.batch_tokens=0
  done
}

for part in $parts; do
  case "$part" in
    single) run_single ;;
    longtail) run_longtail ;;
    peer) run_peer ;;
    *) echo "bench/gpu_training.sh: unknown part '$part' (single, longtail, peer)" >&2; exit 2 ;;
  esac
done

"$python" - "$out/results/runs.jsonl" "$out/gpu_training.json" "$config" <<'PY'
import json, subprocess, sys, time
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
except (OSError, subprocess.SubprocessError):
    gpu = ""
json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": gpu, "config": sys.argv[3], "runs": rows},
          open(sys.argv[2], "w"), indent=1)
def cell(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"
print("| part | shape | strategy | status | tokens/s | MFU % | peak GPU GiB | K/V state GiB |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    mfu = r.get("mfu")
    print(f"| {r['part']} | {r['shape']} | {r['strategy']} | {r['status']} | {cell(r.get('tokens_per_second'), 0)} | "
          f"{cell(None if mfu is None else 100 * mfu)} | {cell(r.get('peak_gpu_gib'), 2)} | {cell(r.get('peak_kv_state_gib'), 2)} |")
PY
log "results: $out/gpu_training.json"
# The rehearsal must not pass with a broken run (on a GPU, an out-of-memory peer is a result).
if [ "$smoke" = 1 ] && grep -qv '"status": "ok"' "$out/results/runs.jsonl"; then
  log "smoke: a run failed (see $out/results/*.log)"; exit 1
fi
if [ "$smoke" = 1 ] && [ "$profile" = 1 ]; then
  runs="$(grep -vc '"part": "peer"' "$out/results/runs.jsonl")"
  tables="$(grep -l "CPU operators" "$out"/results/*.profile.txt 2>/dev/null | wc -l)"
  [ "$runs" = "$tables" ] || { log "smoke: $runs ChunkFlow runs but $tables profile tables"; exit 1; }
fi
