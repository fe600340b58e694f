#!/usr/bin/env bash
# The main job on a fresh machine: bootstrap, build, write the synthetic long-tail demo dataset,
# print its statistics, then train the demo model on chunks (configs/demo.yaml; about 4 minutes
# of training on 2 cores). Extra arguments go to chunkflow-train, e.g. --set run.steps=50.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$repo_root/scripts/bootstrap.sh"
mkdir -p "$build_dir"
# Only what the demo runs; scripts/test.sh later builds the rest with the same configuration.
configure_and_build --target chunkflow-data --target chunkflow-train
cd "$repo_root"
out="runs/demo"
data="$out/data/longtail"
bin="$build_dir/bin"
echo "== synthetic long-tail dataset: $data"
"$bin/chunkflow-data" synth --output "$data" --sequences 4000 --scale 0.25 --max-length 4096 \
  --vocab-size 2048 --seed 1 --quiet
echo "== statistics (chunk_size 256, global batches of 8192 tokens)"
"$bin/chunkflow-data" stats --data "$data" --chunk-size 256 --batch-tokens 8192 \
  --svg "$out/length_histogram.svg" --show-plan 4
echo "== training (configs/demo.yaml): watch 'far' — the loss on tokens beyond the first chunk"
# run.overwrite: a second demo replaces the first one's outputs (the dataset beside them stays).
"$bin/chunkflow-train" --config configs/demo.yaml --set data.path="$data" --set run.overwrite=true "$@"
echo "== done: metrics in $out/metrics.jsonl; curves: ${CHUNKFLOW_VENV:-$cache_root/venv}/bin/tensorboard --logdir $out/tensorboard"
