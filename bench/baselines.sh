#!/usr/bin/env bash
# ChunkFlow against the baselines it replaces, all run by the same trainer on the same model, data,
# token budget and parallel layout (issue 7):
#   pad_to_longest   micro-batches of 4 consecutive sequences padded to their longest (a plain
#                    Hugging Face training loop);
#   pack_to_max      whole sequences packed into chunks of the maximum length, never split,
#                    with full layer recomputation (Megatron-style packing + --recompute full);
#   chunkflow        a few (chunk_size, resident_chunks) settings.
# Every run trains the same loss (the strategies are exact; tests/trainer/scheduler_exactness_test).
# For each dataset and layout it prints a Markdown table: tokens/s (real tokens, steps 2..N),
# median step time, peak RSS of rank 0, pipeline bubble (measured), DP imbalance, and the ratio
# of tokens/s to pad_to_longest. Also writes every number to <out>/baselines.json.
#
#   bench/baselines.sh [--steps N] [--layouts "dp2 pp4"] [--datasets "longtail lmsys"] [--out DIR]
#
# Datasets: longtail = the benchmarks' long-tail dataset (bench_longtail_dataset in scripts/env.sh; at most 4096 tokens); lmsys =
# lengths drawn from the published LMSys-Chat-1M shape (data/distributions/lmsys_chat_1m.txt: 99%
# below 4K, the rest up to 300K) scaled by 0.05 so that the longest (~15K) trains on a 2-core CPU,
# written here once with `chunkflow-data synth --length-histogram`. Model: configs/small_llama.yaml with 4 layers (so pp=4 has a
# layer per stage). One OpenMP thread per rank; one run at a time.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
steps=6
layouts="dp2 pp4"
datasets="longtail lmsys"
out="$repo_root/runs/bench-baselines"
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --layouts) layouts="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench/baselines.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
bin="$build_dir/bin"
python="${CHUNKFLOW_VENV:-$cache_root/venv}/bin/python"
mkdir -p "$out/data"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

dataset_path() {
  case "$1" in
    longtail)
      bench_longtail_dataset ;;
    lmsys)
      local path="$out/data/lmsys"
      [ -f "$path.idx" ] || "$bin/chunkflow-data" synth --output "$path" --sequences 4000 --scale 0.05 \
        --vocab-size 2048 --length-histogram "$repo_root/data/distributions/lmsys_chat_1m.txt" --seed 1 \
        --quiet >/dev/null
      echo "$path" ;;
    *) echo "bench/baselines.sh: unknown dataset '$1' (longtail, lmsys)" >&2; exit 2 ;;
  esac
}

# The longest sequence of a dataset (Megatron .idx: 9-byte magic, u64 version, u8 dtype, u64
# sequence count, u64 document count, then int32 lengths): pack_to_max's chunk, the maximum
# context length.
max_length() {
  "$python" - "$(dataset_path "$1").idx" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
count = struct.unpack_from("<Q", data, 18)[0]
print(max(struct.unpack_from(f"<{count}i", data, 34)))
PY
}

# Global batch in tokens: at least the longest sequence, so that a batch holds more than one group
# for the DP ranks to share.
batch_tokens() { case "$1" in longtail) echo 8192 ;; lmsys) echo 16384 ;; esac; }

# name|overrides: the strategies compared; MAXLEN becomes the dataset's max_length.
strategies=(
  "pad_to_longest|--set chunking.strategy=pad_to_longest --set chunking.micro_batch_sequences=4"
  "pack_to_max|--set chunking.strategy=pack_to_max --set chunking.chunk_size=MAXLEN --set chunking.recompute_layers=true"
  "chunkflow C=1024 K=1|--set chunking.chunk_size=1024 --set chunking.resident_chunks=1"
  "chunkflow C=512 K=1|--set chunking.chunk_size=512 --set chunking.resident_chunks=1"
  "chunkflow C=512 K=2|--set chunking.chunk_size=512 --set chunking.resident_chunks=2"
)

run_one() {  # dataset layout strategy-index
  local data="$1" layout="$2" index="$3"
  local name="${strategies[$index]%%|*}" overrides="${strategies[$index]#*|}"
  overrides="${overrides//MAXLEN/$(max_length "$data")}"
  local run_name="${data}-${layout}-${index}" ranks parallel
  case "$layout" in
    dp2) ranks=2; parallel=(--set parallel.dp=2) ;;
    pp4) ranks=4; parallel=(--set parallel.pp=4) ;;
    single) ranks=1; parallel=() ;;
    *) echo "bench/baselines.sh: unknown layout '$layout' (single, dp2, pp4)" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2086
  local command=("$bin/chunkflow-train" --config "$repo_root/configs/small_llama.yaml"
    --set data.path="$(dataset_path "$data")" --set data.batch_tokens="$(batch_tokens "$data")"
    --set model.num_hidden_layers=4 --set run.steps="$steps"
    --set run.output_dir="$out/runs" --set run.name="$run_name" --set logging.interval=1
    --set logging.progress=lines --set logging.tensorboard=false --set checkpoint.interval=-1
    --set optim.warmup_steps=2 "${parallel[@]}" $overrides)
  rm -rf "$out/runs/$run_name"
  local started=$SECONDS
  if [ "$ranks" = 1 ]; then
    "${command[@]}" >"$out/$run_name.log" 2>&1
  else
    mpirun -np "$ranks" --bind-to none "${command[@]}" >"$out/$run_name.log" 2>&1
  fi || { echo "run $run_name ($name) failed; log: $out/$run_name.log" >&2; tail -5 "$out/$run_name.log" >&2; exit 1; }
  echo "  $data $layout $name: $((SECONDS - started)) s" >&2
  echo "$data|$layout|$name|$out/runs/$run_name/metrics.jsonl" >>"$out/index.txt"
}

: >"$out/index.txt"
echo "bench/baselines.sh: $steps steps per run, datasets: $datasets, layouts: $layouts" >&2
for data in $datasets; do
  for layout in $layouts; do
    for index in "${!strategies[@]}"; do run_one "$data" "$layout" "$index"; done
  done
done

"$python" - "$out" <<'PY'
import json, math, statistics, sys
out = sys.argv[1]
rows = [line.rstrip("\n").split("|") for line in open(f"{out}/index.txt")]
results = []
for data, layout, name, path in rows:
    steps = [json.loads(line) for line in open(path)]
    tail = steps[1:] or steps
    finite = lambda values: [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    bubble = finite([s.get("pipeline_bubble") for s in tail])
    results.append({
        "dataset": data, "layout": layout, "strategy": name,
        "tokens_per_second": sum(s["tokens"] for s in tail) / sum(s["seconds"] for s in tail),
        "median_step_seconds": statistics.median(s["seconds"] for s in tail),
        "peak_rss_mib": max(s["peak_rss_bytes"] for s in steps) / 2**20,
        "pipeline_bubble": statistics.mean(bubble) if bubble else None,
        "dp_imbalance": statistics.mean(s["dp_imbalance"] for s in tail),
        "chunks_per_step": statistics.mean(s["chunks"] for s in tail),
        "recomputed_chunks_per_step": statistics.mean(s["recomputed_chunks"] for s in tail),
        "final_loss": steps[-1]["loss"], "steps": len(steps),
    })
json.dump(results, open(f"{out}/baselines.json", "w"), indent=1)
for data in dict.fromkeys(r["dataset"] for r in results):
    for layout in dict.fromkeys(r["layout"] for r in results):
        group = [r for r in results if r["dataset"] == data and r["layout"] == layout]
        if not group:
            continue
        base = next((r["tokens_per_second"] for r in group if r["strategy"] == "pad_to_longest"), None)
        print(f"\n{data}, {layout}:\n")
        print("| Strategy | tokens/s | vs pad_to_longest | median step | peak RSS (rank 0) | bubble | DP imbalance | final loss |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in group:
            ratio = f"{r['tokens_per_second'] / base:.2f}x" if base else "-"
            bubble = f"{r['pipeline_bubble']:.3f}" if r["pipeline_bubble"] is not None else "-"
            print(f"| {r['strategy']} | {r['tokens_per_second']:.0f} | {ratio} | {r['median_step_seconds']:.2f} s | "
                  f"{r['peak_rss_mib']:.0f} MiB | {bubble} | {r['dp_imbalance']:.3f} | {r['final_loss']:.4f} |")
PY
