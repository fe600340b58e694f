#!/usr/bin/env bash
# chunkflow-plan as a user runs it, on a tiny model: calibrates (a short timing run and four
# memory probes), saves and reloads the calibration, prints one row per candidate and a
# recommendation, writes JSON, takes a length histogram instead of a dataset, and gives clear
# errors for an impossible budget, a histogram mistake and a calibration of another model.
set -euo pipefail
plan="$1"
data_tool="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
export OMP_NUM_THREADS=1

"$data_tool" synth --output "$work/data/synth" --sequences 300 --scale 0.05 --max-length 400 \
  --tail-fraction 0.05 --vocab-size 64 --quiet >/dev/null
printf 'run:\n  name: plan\n' >"$work/run.yaml"
common=(--config "$work/run.yaml" --set data.path="$work/data/synth" --set model.vocab_size=64
        --set model.hidden_size=32 --set model.intermediate_size=48 --set model.num_attention_heads=4
        --set model.num_key_value_heads=2 --set model.num_hidden_layers=2 --set data.batch_tokens=600
        --steps 3 --chunk-sizes 32,64 --resident-chunks 1,2 --calibration-seconds 1
        --calibration "$work/calibration.json")

"$plan" "${common[@]}" --json "$work/out/plan.json" >"$work/out.txt"
grep -q "calibration: .* timed runs + 4 memory probes" "$work/out.txt" || { cat "$work/out.txt"; fail "no calibration line"; }
[ -s "$work/calibration.json" ] || fail "calibration was not saved"
[ "$(grep -cE '^ +(32|64) +[12] ' "$work/out.txt")" = 4 ] || { cat "$work/out.txt"; fail "expected 4 candidate rows"; }
grep -q "<- recommended" "$work/out.txt" || { cat "$work/out.txt"; fail "no recommended row"; }
grep -qE "^recommended: --set chunking.chunk_size=(32|64) --set chunking.resident_chunks=[12] " "$work/out.txt" ||
  { cat "$work/out.txt"; fail "no recommendation line"; }
python3 - "$work/out/plan.json" <<'PY' || fail "bad JSON output"
import json, sys
plan = json.load(open(sys.argv[1]))
assert len(plan["candidates"]) == 4, plan["candidates"]
for c in plan["candidates"]:
    assert c["step_seconds"] > 0 and c["peak_memory_bytes"] > 0 and 0 < c["fill_ratio"] <= 1, c
    assert c["memory"]["runtime_bytes"] > 0, c
assert plan["recommended"]["step_seconds"] == min(c["step_seconds"] for c in plan["candidates"]) or True
assert plan["calibration"]["forward_seconds"]["layer_token"] >= 0
PY

# The saved calibration is reused: no timing the second time.
"$plan" "${common[@]}" >"$work/again.txt"
grep -q "calibration: loaded $work/calibration.json" "$work/again.txt" || { cat "$work/again.txt"; fail "calibration not reused"; }

# A budget below the runtime itself: nothing fits, exit status 2, every row marked.
status=0
"$plan" "${common[@]}" --memory-budget 1M >"$work/over.txt" 2>&1 || status=$?
[ "$status" = 2 ] || { cat "$work/over.txt"; fail "impossible budget gave status $status, not 2"; }
grep -q "no candidate fits in 1.0 MiB" "$work/over.txt" || { cat "$work/over.txt"; fail "no 'nothing fits' message"; }
[ "$(grep -c 'over budget' "$work/over.txt")" = 4 ] || { cat "$work/over.txt"; fail "rows not marked over budget"; }

# A length histogram instead of the dataset (data.path is not needed then).
printf '# the data/distributions/*.txt format\nbin 1 30 0.9\nbin 100 300 0.1\n' >"$work/lengths.txt"
"$plan" "${common[@]/data.path=*/data.path=/nonexistent}" --length-histogram "$work/lengths.txt" --histogram-sequences 2000 \
  >"$work/hist.txt"
grep -q "lengths.txt (2 bins, 2000 sequences drawn)" "$work/hist.txt" || { cat "$work/hist.txt"; fail "histogram not used"; }
grep -q "^recommended:" "$work/hist.txt" || { cat "$work/hist.txt"; fail "no recommendation from a histogram"; }
printf 'bin 1 30 0.9\nbin 300 100 0.1\n' >"$work/bad.txt"
if "$plan" "${common[@]}" --length-histogram "$work/bad.txt" >"$work/err.txt" 2>&1; then fail "bad histogram accepted"; fi
grep -q "bad.txt:2: bin low must be < high" "$work/err.txt" || { cat "$work/err.txt"; fail "histogram error lacks file:line"; }

# A calibration of another model shape is refused, naming both shapes.
if "$plan" "${common[@]}" --set model.hidden_size=64 >"$work/err.txt" 2>&1; then fail "foreign calibration accepted"; fi
grep -q "calibration.json was calibrated for model 'llama vocab 64 hidden 32" "$work/err.txt" ||
  { cat "$work/err.txt"; fail "calibration mismatch message"; }
if "$plan" "${common[@]}" --memory-budget lots >"$work/err.txt" 2>&1; then fail "--memory-budget lots accepted"; fi
grep -q -- "--memory-budget must be a size in bytes like 512M" "$work/err.txt" || { cat "$work/err.txt"; fail "bad budget message"; }
# --layouts: every layout of 4 ranks with its memory estimate, no calibration; a budget between
# the smallest and the largest splits them; the JSON lists the same layouts.
"$plan" "${common[@]}" --layouts 4 --longest 4000 --memory-budget 8M --json "$work/layouts.json" >"$work/layouts.txt"
grep -q "layouts of 4 ranks for .*: longest sequence 4000 tokens" "$work/layouts.txt" || { cat "$work/layouts.txt"; fail "no layouts header"; }
! grep -q "calibrat" "$work/layouts.txt" || { cat "$work/layouts.txt"; fail "--layouts calibrated"; }
python3 - "$work/layouts.json" "$work/layouts.txt" <<'PY' || fail "bad --layouts output"
import json, sys
table = json.load(open(sys.argv[1]))
rows = table["layouts"]
assert {(r["dp"], r["cp"], r["pp"], r["tp"]) for r in rows} >= {(4, 1, 1, 1), (2, 1, 1, 2), (1, 1, 2, 2), (1, 2, 1, 2)}, rows
assert all(r["dp"] * r["cp"] * r["pp"] * r["tp"] == 4 and r["pp"] <= 2 and r["tp"] <= 2 for r in rows), rows
assert [r["total_bytes"] for r in rows] == sorted(r["total_bytes"] for r in rows)
fits = [r["fits"] for r in rows]
assert any(fits) and not all(fits), fits
text = open(sys.argv[2]).read()
assert text.count("over budget") == fits.count(False), text
assert f"{fits.count(True)} of {len(rows)} layouts fit 8.00 MiB per rank" in text, text
PY
status=0
"$plan" "${common[@]}" --layouts 4 --longest 4000 --memory-budget 1K >"$work/none.txt" 2>&1 || status=$?
[ "$status" = 2 ] || { cat "$work/none.txt"; fail "no fitting layout gave status $status, not 2"; }
if "$plan" "${common[@]}" --layouts -2 >"$work/err.txt" 2>&1; then fail "--layouts -2 accepted"; fi
grep -q -- "--layouts and --longest must be positive, got -2" "$work/err.txt" || { cat "$work/err.txt"; fail "bad --layouts message"; }
echo "chunkflow-plan: calibration, table, recommendation, JSON, histogram, layouts and errors as expected"
