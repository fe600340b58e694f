#!/usr/bin/env bash
# chunkflow-data as a user runs it: synth -> stats (text + SVG), prepare JSONL (good and bad
# input), and the exit codes and messages of mistakes.
set -euo pipefail
tool="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_error() {  # expect_error "<message fragment>" args...
  local fragment="$1"; shift
  if "$tool" "$@" >"$work/out" 2>"$work/err"; then fail "'$*' succeeded"; fi
  grep -qF -- "$fragment" "$work/err" || { cat "$work/err" >&2; fail "'$*' did not say: $fragment"; }
}

"$tool" synth --output "$work/d/longtail" --sequences 2000 --scale 0.25 --max-length 16384 --quiet >"$work/out"
grep -q "2000 sequences" "$work/out" || fail "synth summary"
"$tool" stats --data "$work/d/longtail" --chunk-size 512 --batch-tokens 16384 --svg "$work/h.svg" \
  --show-plan 3 >"$work/stats"
for expected in "2000 sequences" "below 4096" "chunkflow" "pad-to-longest" "pack-to-max-length" "first global batch"; do
  grep -q "$expected" "$work/stats" || { cat "$work/stats"; fail "stats lacks '$expected'"; }
done
head -c 4 "$work/h.svg" | grep -q "<svg" || fail "no SVG written"

printf '%s\n' '{"input_ids": [5, 6, 7, 8]}' '' \
  '{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}' '{"input_ids": [9, 9], "loss_mask": [0, 1]}' >"$work/good.jsonl"
"$tool" prepare --input "$work/good.jsonl" --output "$work/p/sft" --vocab-size 16 --quiet >"$work/out"
[ -f "$work/p/sft.idx" ] && [ -f "$work/p/sft_loss_mask.idx" ] || fail "prepare outputs missing"
"$tool" stats --data "$work/p/sft" --chunk-size 4 --batch-sequences 2 >"$work/stats"
grep -q "loss mask" "$work/stats" || fail "stats ignored the loss mask"

printf '%s\n' '{"input_ids": [1, 2]}' '{"input_ids": [1, 99]}' >"$work/bad.jsonl"
expect_error "bad.jsonl:2" prepare --input "$work/bad.jsonl" --output "$work/p/bad" --vocab-size 16 --quiet
[ ! -e "$work/p/bad.idx" ] || fail "a failed prepare left an index behind"
printf 'not json\n' >>"$work/bad.jsonl"
"$tool" prepare --input "$work/bad.jsonl" --output "$work/p/bad" --vocab-size 16 --skip-bad-lines --quiet >"$work/out"
grep -q "bad.jsonl:3" "$work/out" || { cat "$work/out"; fail "skipped lines not reported"; }

expect_error "did you mean 'stats'" stat --data x
expect_error "did you mean '--chunk-size'" stats --data "$work/d/longtail" --chunk-sise 5
expect_error "missing required option '--data'" stats
expect_error "--chunk-size must be an integer, got 'big'" stats --data "$work/d/longtail" --chunk-size big
expect_error "longtail_missing.idx" stats --data "$work/d/longtail_missing"
truncate -s 100 "$work/d/longtail.idx"
expect_error "longtail.idx" stats --data "$work/d/longtail"
"$tool" --help | grep -q "prepare" || fail "--help"
echo "chunkflow-data end to end: all checks passed"
