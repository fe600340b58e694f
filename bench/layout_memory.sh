#!/usr/bin/env bash
# Peak resident memory per rank on several parallel layouts of this machine (replicated and
# sharded AdamW, tensor parallelism with and without sequence parallelism, a pipeline), next to
# the trainer's own memory estimate for rank 0 (the "memory estimate per rank" line it logs at
# start-up). The model is made large enough (117M parameters: vocabulary 32,000, hidden 1,024,
# 4 layers) that its state dominates, and trains 2 steps on short sequences. Peak RSS per rank
# comes from GNU time (%M); the table shows the mean over the ranks of a run. RSS also holds the
# runtime itself (LibTorch, MPI: a few hundred MiB), which the estimate leaves out.
#   bench/layout_memory.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
train="$build_dir/bin/chunkflow-train"
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; Debian package 'time')" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
"$build_dir/bin/chunkflow-data" synth --output "$work/data" --sequences 64 --scale 0.05 --max-length 256 \
  --vocab-size 32000 --seed 1 --quiet >/dev/null 2>&1
common=(--config "$repo_root/configs/small_llama.yaml" --set data.path="$work/data" --set run.steps=2
        --set run.output_dir="$work" --set logging.tensorboard=false --set checkpoint.interval=-1
        --set model.vocab_size=32000 --set model.hidden_size=1024 --set model.intermediate_size=2816
        --set model.num_hidden_layers=4 --set model.num_attention_heads=8 --set model.num_key_value_heads=8
        --set data.batch_tokens=512 --set chunking.chunk_size=128)
echo "| layout | ranks | peak RSS per rank | estimate: model state | estimate: total |"
echo "| --- | ---: | ---: | ---: | ---: |"
# name, ranks, then --set overrides
measure() {
  local name="$1" ranks="$2"; shift 2
  mpirun -np "$ranks" --bind-to none /usr/bin/time -f "peak_rss_kib %M" "$train" "${common[@]}" \
    --set run.name="run$RANDOM" "$@" >"$work/run.log" 2>&1 || { cat "$work/run.log" >&2; exit 1; }
  local rss state total
  rss=$(awk '/^peak_rss_kib/ { sum += $2; n++ } END { printf "%.0f", sum / n / 1024 }' "$work/run.log")
  state=$(sed -nE 's/.*memory estimate per rank: model state ([0-9.]+ [KMG]iB).*/\1/p' "$work/run.log" | head -1)
  total=$(sed -nE 's/.*memory estimate per rank: .* = ([0-9.]+ [KMG]iB).*/\1/p' "$work/run.log" | head -1)
  echo "| $name | $ranks | $rss MiB | $state | $total |"
}
measure "1 rank" 1
measure "dp 2" 2 --set parallel.dp=2
measure "dp 2, sharded AdamW" 2 --set parallel.dp=2 --set parallel.shard_optimizer=true
measure "dp 4" 4 --set parallel.dp=4
measure "dp 4, sharded AdamW" 4 --set parallel.dp=4 --set parallel.shard_optimizer=true
measure "pp 2" 2 --set parallel.pp=2
measure "tp 2 (sequence parallel)" 2 --set parallel.tp=2
measure "tp 2 without sequence parallelism" 2 --set parallel.tp=2 --set parallel.sequence_parallel=false
measure "tp 2 x dp 2, sharded AdamW" 4 --set parallel.tp=2 --set parallel.dp=2 --set parallel.shard_optimizer=true
