#!/usr/bin/env bash
# The demo itself, on built programs: write the synthetic long-tail dataset, print its statistics,
# train the demo model on chunks (configs/demo.yaml), then say in plain words what the run showed
# (scripts/demo_verdict.py; exit 1 if the far-token loss did not fall by half).
#   scripts/demo_run.sh <bin folder> <run folder> [chunkflow-train args...]
# scripts/demo.sh runs it after building; tests/tools/demo_test.sh runs it as a test.
set -euo pipefail
bin="$1"
out="$2"
shift 2
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="$out/data/longtail"
chunk_size=64
echo "== synthetic long-tail dataset: $data"
# Sequences longer than 162 tokens repeat an 80-token span to their end, shorter ones their first
# half (docs/data.md): once the model has learned to copy, tokens beyond the first chunk are
# predictable only from earlier chunks. 40,000 sequences (1.7M tokens): the run sees each about
# once and a half, so what it learns is copying, not the data by heart.
"$bin/chunkflow-data" synth --output "$data" --sequences 40000 --scale 0.1 --max-length 1024 --tail-fraction 0.01 \
  --copy-period 80 --vocab-size 512 --seed 1 --quiet
echo "== statistics (chunk_size $chunk_size, global batches of 8192 tokens)"
"$bin/chunkflow-data" stats --data "$data" --chunk-size "$chunk_size" --batch-tokens 8192 \
  --svg "$out/length_histogram.svg" --show-plan 4
echo "== training (configs/demo.yaml): watch 'far', the loss on tokens beyond the first chunk"
# run.overwrite: a second demo replaces the first one's outputs (the dataset beside them stays).
"$bin/chunkflow-train" --config "$repo_root/configs/demo.yaml" --set data.path="$data" \
  --set run.output_dir="$(dirname "$out")" --set run.name="$(basename "$out")" --set run.overwrite=true "$@"
echo "== what the run showed"
python3 "$repo_root/scripts/demo_verdict.py" "$out" --chunk-size "$chunk_size" --vocab-size 512
