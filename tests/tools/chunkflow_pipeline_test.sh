#!/usr/bin/env bash
# chunkflow-pipeline as a user runs it: a table with one row per batch and a mean bubble, an SVG
# timeline, and clear errors for a pipeline deeper than the model and for bad options.
set -euo pipefail
pipeline="$1"
data_tool="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$data_tool" synth --output "$work/data/synth" --sequences 300 --scale 0.05 --max-length 400 \
  --tail-fraction 0.05 --vocab-size 64 --quiet >/dev/null
printf 'run:\n  name: pipeline\n' >"$work/run.yaml"
common=(--config "$work/run.yaml" --set data.path="$work/data/synth" --set model.vocab_size=64
        --set model.hidden_size=32 --set model.intermediate_size=48 --set model.num_attention_heads=4
        --set model.num_key_value_heads=2 --set data.batch_tokens=600 --set chunking.chunk_size=24)

"$pipeline" "${common[@]}" --set model.num_hidden_layers=4 --set parallel.pp=4 --set parallel.dp=2 \
  --batches 3 --svg "$work/out/timeline.svg" >"$work/out.txt"
grep -q "dp 2 x pp 4" "$work/out.txt" || { cat "$work/out.txt"; fail "header missing"; }
[ "$(grep -cE '^ +[123] ' "$work/out.txt")" = 3 ] || { cat "$work/out.txt"; fail "expected 3 batch rows"; }
grep -qE "mean bubble 0\.[0-9]+ over 3 batches" "$work/out.txt" || { cat "$work/out.txt"; fail "no mean bubble"; }
head -c 4 "$work/out/timeline.svg" | grep -q "<svg" || fail "timeline is not an SVG"
tail -n 1 "$work/out/timeline.svg" | grep -q "</svg>" || fail "timeline SVG is truncated"
[ "$(grep -c '<rect' "$work/out/timeline.svg")" -gt 20 ] || fail "timeline has too few bars"

# One stage: a single stage never idles.
"$pipeline" "${common[@]}" --set model.num_hidden_layers=2 --batches 2 >"$work/one.txt"
grep -q "mean bubble 0.000" "$work/one.txt" || { cat "$work/one.txt"; fail "one stage must have no bubble"; }

# More stages than layers: the message names both keys and values.
if "$pipeline" "${common[@]}" --set model.num_hidden_layers=2 --set parallel.pp=4 >"$work/err.txt" 2>&1; then
  fail "pp 4 on 2 layers was accepted"
fi
grep -q "parallel.pp must be <= model.num_hidden_layers (2), got 4" "$work/err.txt" ||
  { cat "$work/err.txt"; fail "error does not name parallel.pp and model.num_hidden_layers"; }
if "$pipeline" "${common[@]}" --batches 0 >"$work/err.txt" 2>&1; then fail "--batches 0 was accepted"; fi
grep -q -- "--batches must be >= 1, got 0" "$work/err.txt" || { cat "$work/err.txt"; fail "bad --batches message"; }
echo "chunkflow-pipeline: table, SVG timeline and errors as expected"
