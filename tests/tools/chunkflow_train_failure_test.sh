#!/usr/bin/env bash
# A failing rank ends the whole job: rank 1 gets a data path that does not exist while rank 0 is
# fine (mpirun's MPMD form gives each rank its own command line). Every rank must exit non-zero
# within 30 seconds, and the output must carry rank 1's message.
set -euo pipefail
train="$1"
data_tool="$2"
mpiexec="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$data_tool" synth --output "$work/data/synth" --sequences 200 --scale 0.05 --max-length 300 \
  --tail-fraction 0.05 --vocab-size 64 --quiet >/dev/null
common=(--set run.output_dir="$work/runs" --set model.vocab_size=64 --set model.hidden_size=32
        --set model.intermediate_size=48 --set model.num_hidden_layers=1 --set model.num_attention_heads=4
        --set model.num_key_value_heads=2 --set data.batch_tokens=400 --set chunking.chunk_size=24
        --set parallel.dp=2 --set run.steps=50)
printf 'run:\n  name: failure\n' >"$work/run.yaml"

start=$(date +%s)
if timeout 60 "$mpiexec" -np 1 "$train" --config "$work/run.yaml" "${common[@]}" --set data.path="$work/data/synth" \
    : -np 1 "$train" --config "$work/run.yaml" "${common[@]}" --set data.path="$work/data/missing" \
    >"$work/out" 2>&1; then
  fail "the job succeeded although rank 1 had no data"
fi
elapsed=$(( $(date +%s) - start ))
[ "$elapsed" -le 30 ] || fail "the job took ${elapsed}s to end (limit 30s)"
grep -q "r1\].*data/missing" "$work/out" || { cat "$work/out"; fail "rank 1's message is missing"; }
echo "failing rank ended the job in ${elapsed}s with its message"
