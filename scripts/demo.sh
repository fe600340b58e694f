#!/usr/bin/env bash
# The main job on a fresh machine: bootstrap, build, write the synthetic long-tail demo dataset
# and print its statistics (length histogram, chunks vs padding vs packing), with an SVG chart.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$repo_root/scripts/bootstrap.sh"
mkdir -p "$build_dir"
configure_and_build
out="$repo_root/runs/demo"
data="$out/data/longtail"
bin="$build_dir/bin"
echo "== synthetic long-tail dataset: $data"
"$bin/chunkflow-data" synth --output "$data" --sequences 4000 --scale 0.25 --max-length 16384 \
  --vocab-size 512 --seed 1
echo "== statistics (chunk_size 512, global batches of 16384 tokens)"
"$bin/chunkflow-data" stats --data "$data" --chunk-size 512 --batch-tokens 16384 \
  --svg "$out/length_histogram.svg" --show-plan 6
