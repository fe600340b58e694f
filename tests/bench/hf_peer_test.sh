#!/usr/bin/env bash
# bench/hf_peer.py on a tiny dataset: its packed (padding-free) mode computes the padded mode's loss
# and logits on the same global batch (and the check notices the cross-sequence leak that
# use_cache=True causes), and both training modes run 2 steps and print their JSON line.
#   hf_peer_test.sh <chunkflow-data> <python>
set -euo pipefail
data_tool="$1"
python="$2"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$data_tool" synth --output "$work/tiny" --sequences 60 --scale 0.1 --max-length 600 --tail-fraction 0.05 \
  --vocab-size 2048 --seed 3 --quiet >/dev/null
peer=("$python" "$repo_root/bench/hf_peer.py" --config "$repo_root/configs/demo.yaml" --data "$work/tiny"
      --set data.batch_tokens=1024)
"${peer[@]}" --mode check >"$work/check.json" || { cat "$work/check.json" >&2; fail "padded and packed losses differ"; }
"${peer[@]}" --mode packed --steps 2 >"$work/packed.json"
"${peer[@]}" --mode padded --steps 2 --micro-batch-sequences 4 >"$work/padded.json"
"$python" - "$work" <<'PY'
import json, sys
work = sys.argv[1]
check = json.load(open(f"{work}/check.json"))
assert check["agree"] and check["sequences"] > 1, check
# the check can fail: attending across sequences (use_cache=True) moves the logits far beyond it
assert check["max_logit_difference_with_use_cache"] > 100 * check["logit_tolerance"], check
packed, padded = (json.load(open(f"{work}/{mode}.json")) for mode in ("packed", "padded"))
for result in (packed, padded):
    assert result["steps"] == 2 and result["tokens_per_second"] > 0 and result["peak_rss_bytes"] > 0, result
# same weights, same first global batch: the first step's loss is the same in both modes
assert abs(packed["first_loss"] - padded["first_loss"]) <= 1e-5 * abs(padded["first_loss"]), (packed, padded)
assert packed["padding_share"] == 0 and padded["padding_share"] > 0, (packed, padded)
print(f"ok: padded/packed loss {check['padded_loss']:.6f}/{check['packed_loss']:.6f}, "
      f"leak with use_cache {check['max_logit_difference_with_use_cache']:.3f}")
PY
