#!/usr/bin/env bash
# The main job on a fresh machine: bootstrap, build the two programs the demo runs, then
# scripts/demo_run.sh: write the synthetic long-tail demo dataset, print its statistics, train the
# demo model on chunks (configs/demo.yaml; about 3 minutes on 2 cores) and say what it showed.
# Extra arguments go to chunkflow-train, e.g. --set run.steps=50.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$repo_root/scripts/bootstrap.sh"
mkdir -p "$build_dir"
# Only what the demo runs; scripts/test.sh later builds the rest with the same configuration.
configure_and_build --target chunkflow-data --target chunkflow-train
cd "$repo_root"
"$repo_root/scripts/demo_run.sh" "$build_dir/bin" runs/demo "$@"
echo "== done: metrics in runs/demo/metrics.jsonl; curves: runs/demo/loss.svg, or ${CHUNKFLOW_VENV:-$cache_root/venv}/bin/tensorboard --logdir runs/demo/tensorboard"
