#!/usr/bin/env bash
# The README's main job, as a test: scripts/demo_run.sh (the demo without bootstrap and build) on
# the built programs. It fails when the far-token loss falls by less than half (the demo would no
# longer show what it is for) or when the chart and summary are missing.
set -euo pipefail
bin="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
verdict="$(dirname "${BASH_SOURCE[0]}")/../../scripts/demo_verdict.py"

# The verdict itself: a fall of less than half, no far tokens, or no summary are failures.
summary() {  # summary <folder> <far start> <far end>
  mkdir -p "$1"
  printf '{"far_loss_start": %s, "far_loss_end": %s, "near_loss_start": 6.2, "near_loss_end": 5.0}\n' "$2" "$3" \
    >"$1/summary.json"
}
summary "$work/halved" 6.0 2.9
python3 "$verdict" "$work/halved" >/dev/null || fail "a fall from 6.0 to 2.9 was not accepted"
summary "$work/short" 6.0 3.1
if python3 "$verdict" "$work/short" >/dev/null 2>"$work/err"; then fail "a fall from 6.0 to 3.1 was accepted"; fi
grep -q "fell by 48%" "$work/err" || { cat "$work/err"; fail "no reason given for a short fall"; }
summary "$work/none" null null
if python3 "$verdict" "$work/none" >/dev/null 2>&1; then fail "a run without far tokens was accepted"; fi
if python3 "$verdict" "$work/missing" >/dev/null 2>&1; then fail "a missing summary was accepted"; fi

bash "$(dirname "${BASH_SOURCE[0]}")/../../scripts/demo_run.sh" "$bin" "$work/demo" --set logging.progress=lines \
  >"$work/log" 2>&1 || { tail -40 "$work/log"; fail "the demo failed"; }
grep -q "lower); the near tokens'" "$work/log" || { tail -20 "$work/log"; fail "no verdict"; }
grep -q "<polyline" "$work/demo/loss.svg" || fail "no loss chart"
tail -12 "$work/log"
echo "demo: far-token loss fell by at least half"
