#!/usr/bin/env bash
# chunkflow-train as a user runs it: a tiny run from a YAML file with --set overrides (outputs in
# the run directory), and the messages of config mistakes.
set -euo pipefail
train="$1"
data_tool="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$data_tool" synth --output "$work/data/synth" --sequences 200 --scale 0.05 --max-length 300 \
  --tail-fraction 0.05 --vocab-size 64 --quiet >/dev/null
cat >"$work/run.yaml" <<YAML
run:
  name: tiny
  output_dir: $work/runs
  steps: 3
model:
  vocab_size: 64
  hidden_size: 32
  intermediate_size: 48
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
data:
  path: $work/data/synth
  batch_tokens: 400
chunking:
  chunk_size: 24
logging:
  progress: lines
YAML

"$train" --config "$work/run.yaml" --set run.steps=4 --set chunking.resident_chunks=2 2>"$work/log"
grep -q "step 4/4" "$work/log" || { cat "$work/log"; fail "no step 4/4 line"; }
grep -q "far-token loss" "$work/log" || fail "no summary line"
[ "$(wc -l <"$work/runs/tiny/metrics.jsonl")" -eq 4 ] || fail "metrics.jsonl should have 4 lines"
grep -q "resident_chunks: 2" "$work/runs/tiny/config.yaml" || fail "resolved config lacks the override"
ls "$work/runs/tiny/tensorboard/" | grep -q "tfevents" || fail "no TensorBoard events"
# The loss chart (near and far lines, drawn from metrics.jsonl) and the run summary.
grep -q "<polyline" "$work/runs/tiny/loss.svg" || fail "loss.svg has no curve"
grep -q '"far_loss_end"' "$work/runs/tiny/summary.json" || fail "summary.json lacks far_loss_end"
# A chart that cannot be drawn is a warning, not a failed run: resume after spoiling a kept line.
sed -i '1s/.*/{"step":1,"loss":oops}/' "$work/runs/tiny/metrics.jsonl"
"$train" --config "$work/run.yaml" --set run.steps=5 --set checkpoint.resume=auto 2>"$work/log" ||
  { cat "$work/log"; fail "a spoiled metrics line failed the resumed run"; }
grep -q "loss chart not written: .*metrics.jsonl:1: not a step record" "$work/log" || { cat "$work/log"; fail "no chart warning"; }
grep -q "step 5/5" "$work/log" || fail "the resumed run did not reach step 5"

expect_error() {  # expect_error "<fragment>" args...
  local fragment="$1"; shift
  if "$train" "$@" >"$work/out" 2>"$work/err"; then fail "'$*' succeeded"; fi
  grep -qF -- "$fragment" "$work/err" || { cat "$work/err" >&2; fail "'$*' did not say: $fragment"; }
}
expect_error "did you mean 'chunk_size'" --config "$work/run.yaml" --set chunking.chunk_sze=5
expect_error "chunking.chunk_size must be" --config "$work/run.yaml" --set chunking.chunk_size=0
sed 's/  chunk_size: 24/  chunk_size: 24\n  chunk_sise: 3/' "$work/run.yaml" >"$work/typo.yaml"
expect_error "typo.yaml:17" --config "$work/typo.yaml"
expect_error "missing required option '--config'"
expect_error "nope.yaml" --config "$work/nope.yaml"
expect_error "data/missing" --config "$work/run.yaml" --set data.path="$work/data/missing"
echo "chunkflow-train end to end: all checks passed"
