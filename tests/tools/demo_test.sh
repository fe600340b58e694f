#!/usr/bin/env bash
# The README's main job, as a test: scripts/demo_run.sh (the demo without bootstrap and build) on
# the built programs. It fails when the far-token loss falls by less than half (the demo would no
# longer show what it is for) or when the chart and summary are missing.
set -euo pipefail
bin="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
bash "$(dirname "${BASH_SOURCE[0]}")/../../scripts/demo_run.sh" "$bin" "$work/demo" --set logging.progress=lines \
  >"$work/log" 2>&1 || { tail -40 "$work/log"; fail "the demo failed"; }
grep -q "lower); the near tokens'" "$work/log" || { tail -20 "$work/log"; fail "no verdict"; }
grep -q "<polyline" "$work/demo/loss.svg" || fail "no loss chart"
tail -12 "$work/log"
echo "demo: far-token loss fell by at least half"
