#!/usr/bin/env bash
# Peak memory of one training step on one sequence vs its length, for ChunkFlow (fixed chunk_size,
# resident_chunks 1), for no chunking (chunk_size = the length: the whole sequence's activations
# are kept, as pack-to-max-length keeps them for a packed max-length row) and for pack-to-max-length
# with full activation recomputation (chunk_size = the length, --recompute-layers: each layer's
# input kept, the layer run again in backward). One process per measurement
# (bench/memory_bench.cpp); prints a Markdown table.
#   bench/memory_scaling.sh [lengths...]   (default 8192 16384 32768 65536)
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="${CHUNKFLOW_BIN:-$repo_root/build/bin}/memory_bench"
chunk_size="${CHUNK_SIZE:-2048}"
lengths=("$@")
[ ${#lengths[@]} -gt 0 ] || lengths=(8192 16384 32768 65536)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# Every memory_bench line also goes to this JSON-lines file (bench/plot_charts.py draws it).
raw="${MEMORY_SCALING_JSON:-$repo_root/runs/bench-memory/memory_scaling.jsonl}"
mkdir -p "$(dirname "$raw")"
: >"$raw"
mib() { awk -v bytes="$1" 'BEGIN { printf "%.1f", bytes / 1048576 }'; }
field() { sed -E "s/.*\"$1\": ?([0-9.e+]+).*/\1/" <<<"$2"; }
echo "| Length | ChunkFlow step peak (chunk $chunk_size) | of which K/V state | No chunking step peak | Ratio | Pack-to-max + full recompute | Ratio |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for length in "${lengths[@]}"; do
  chunked=$("$bench" --length "$length" --chunk-size "$chunk_size" --resident-chunks 1)
  whole=$("$bench" --length "$length" --chunk-size "$length" --resident-chunks 1)
  recomputed=$("$bench" --length "$length" --chunk-size "$length" --resident-chunks 1 --recompute-layers)
  peak_chunked=$(field step_peak_above_baseline_bytes "$chunked")
  state=$(field kv_state_bytes "$chunked")
  peak_whole=$(field step_peak_above_baseline_bytes "$whole")
  printf '%s\n%s\n%s\n' "$chunked" "$whole" "$recomputed" >>"$raw"
  peak_recomputed=$(field step_peak_above_baseline_bytes "$recomputed")
  ratio=$(awk -v a="$peak_whole" -v b="$peak_chunked" 'BEGIN { printf "%.2f", a / b }')
  ratio_recomputed=$(awk -v a="$peak_recomputed" -v b="$peak_chunked" 'BEGIN { printf "%.2f", a / b }')
  echo "| $length | $(mib "$peak_chunked") MiB | $(mib "$state") MiB | $(mib "$peak_whole") MiB | ${ratio}x |" \
       "$(mib "$peak_recomputed") MiB | ${ratio_recomputed}x |"
done
