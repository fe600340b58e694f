#!/usr/bin/env bash
# Peak resident memory per rank with replicated AdamW and with the sharded optimizer
# (parallel.shard_optimizer, ZeRO-1) on dp = 2 and dp = 4 ranks of this machine, next to what the
# trainer's memory estimate predicts for the model state. The model is made large enough (about
# 120M parameters: vocabulary 32,000, hidden 1,024, 4 layers) that its state dominates, and trains
# 2 steps on short sequences. Peak RSS per rank comes from GNU time (%M); the table shows the mean
# over the ranks of a run. Prints a Markdown table.
#   bench/sharded_optimizer_memory.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
train="$build_dir/bin/chunkflow-train"
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; Debian package 'time')" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
"$build_dir/bin/chunkflow-data" synth --output "$work/data" --sequences 64 --scale 0.05 --max-length 256 \
  --vocab-size 32000 --seed 1 --quiet
common=(--config "$repo_root/configs/small_llama.yaml" --set data.path="$work/data" --set run.steps=2
        --set run.output_dir="$work" --set logging.tensorboard=false --set checkpoint.interval=-1
        --set model.vocab_size=32000 --set model.hidden_size=1024 --set model.intermediate_size=2816
        --set model.num_hidden_layers=4 --set model.num_attention_heads=8 --set model.num_key_value_heads=8
        --set data.batch_tokens=512 --set chunking.chunk_size=128)
# mean peak RSS (MiB) over the ranks, and the model state the trainer's estimate line predicts (MiB)
measure() {
  local name="$1" ranks="$2"; shift 2
  mpirun -np "$ranks" --bind-to none /usr/bin/time -f "peak_rss_kib %M" "$train" "${common[@]}" --set run.name="$name" \
    --set parallel.dp="$ranks" "$@" >"$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; exit 1; }
  local rss state
  rss=$(awk '/^peak_rss_kib/ { sum += $2; n++ } END { printf "%.0f", sum / n / 1024 }' "$work/$name.log")
  state=$(sed -nE 's/.*memory estimate per rank: model state ([0-9.]+ [KMG]iB).*/\1/p' "$work/$name.log" | head -1)
  echo "$rss|$state"
}
echo "| dp | AdamW | peak RSS per rank | model state (estimate) | RSS saved |"
echo "| ---: | --- | ---: | ---: | ---: |"
for ranks in 2 4; do
  IFS='|' read -r replicated_rss replicated_state <<<"$(measure "replicated$ranks" "$ranks")"
  IFS='|' read -r sharded_rss sharded_state <<<"$(measure "sharded$ranks" "$ranks" --set parallel.shard_optimizer=true)"
  echo "| $ranks | replicated | $replicated_rss MiB | $replicated_state | |"
  echo "| $ranks | sharded | $sharded_rss MiB | $sharded_state | $((replicated_rss - sharded_rss)) MiB |"
done
