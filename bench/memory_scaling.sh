#!/usr/bin/env bash
# Peak memory of one training step on one sequence vs its length, for ChunkFlow (fixed chunk_size,
# resident_chunks 1) and for no chunking (chunk_size = the length: the whole sequence's
# activations are kept, as pack-to-max-length keeps them for a packed max-length row). One
# process per measurement (bench/memory_bench.cpp); prints a Markdown table.
#   bench/memory_scaling.sh [lengths...]   (default 8192 16384 32768 65536)
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="${CHUNKFLOW_BIN:-$repo_root/build/bin}/memory_bench"
chunk_size="${CHUNK_SIZE:-2048}"
lengths=("$@")
[ ${#lengths[@]} -gt 0 ] || lengths=(8192 16384 32768 65536)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mib() { awk -v bytes="$1" 'BEGIN { printf "%.1f", bytes / 1048576 }'; }
field() { sed -E "s/.*\"$1\": ?([0-9.e+]+).*/\1/" <<<"$2"; }
echo "| Length | ChunkFlow step peak (chunk $chunk_size) | of which K/V state | No chunking step peak | Ratio |"
echo "| ---: | ---: | ---: | ---: | ---: |"
for length in "${lengths[@]}"; do
  chunked=$("$bench" --length "$length" --chunk-size "$chunk_size" --resident-chunks 1)
  whole=$("$bench" --length "$length" --chunk-size "$length" --resident-chunks 1)
  peak_chunked=$(field step_peak_above_baseline_bytes "$chunked")
  state=$(field kv_state_bytes "$chunked")
  peak_whole=$(field step_peak_above_baseline_bytes "$whole")
  ratio=$(awk -v a="$peak_whole" -v b="$peak_chunked" 'BEGIN { printf "%.2f", a / b }')
  echo "| $length | $(mib "$peak_chunked") MiB | $(mib "$state") MiB | $(mib "$peak_whole") MiB | ${ratio}x |"
done
