#!/usr/bin/env bash
# bench/hf_peer.py on a tiny dataset: its packed (padding-free) mode computes the padded mode's loss
# and logits on the same global batch (and the check notices the cross-sequence leak that
# use_cache=True causes), and both training modes run 2 steps and print their JSON line. The same
# for model.family qwen2; gradient checkpointing changes no loss; bf16 autocast (on the CPU) trains
# to finite losses near float32's; a qwen2 config without attention biases is refused; and a CUDA
# out-of-memory error (raised here by a stand-in optimizer step) becomes one JSON line and status 3.
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
peer_args=(--config "$repo_root/configs/small_llama.yaml" --data "$work/tiny" --set data.batch_tokens=1024)
peer=("$python" "$repo_root/bench/hf_peer.py" "${peer_args[@]}")
qwen2=(--set model.family=qwen2 --set model.attention_bias=true)
"${peer[@]}" --mode check >"$work/check.json" || { cat "$work/check.json" >&2; fail "padded and packed losses differ"; }
"${peer[@]}" --mode packed --steps 2 >"$work/packed.json"
"${peer[@]}" --mode padded --steps 2 --micro-batch-sequences 4 >"$work/padded.json"
"${peer[@]}" --mode packed --steps 2 --gradient-checkpointing >"$work/checkpointed.json"
"${peer[@]}" --mode packed --steps 2 --device cpu --set model.dtype=bfloat16 >"$work/bf16.json"
"${peer[@]}" "${qwen2[@]}" --mode check >"$work/qwen2_check.json" \
  || { cat "$work/qwen2_check.json" >&2; fail "qwen2: padded and packed losses differ"; }
"${peer[@]}" "${qwen2[@]}" --mode packed --steps 2 >"$work/qwen2.json"

# Qwen2 in transformers always has q/k/v biases: attention_bias false would train another model
if "${peer[@]}" --set model.family=qwen2 --set model.attention_bias=false --mode packed --steps 1 \
    >/dev/null 2>"$work/refused.err"; then
  fail "qwen2 with model.attention_bias=false was accepted"
fi
grep -q "model.attention_bias" "$work/refused.err" || { cat "$work/refused.err" >&2; fail "refusal does not name the key"; }

# the out-of-memory report, without a GPU: the optimizer step raises what the CUDA allocator raises
status=0
"$python" - "$repo_root/bench/hf_peer.py" "${peer_args[@]}" --mode packed --steps 2 >"$work/oom.json" <<'PY' || status=$?
import runpy, sys, torch
def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nsecond line of the message")
torch.optim.AdamW.step = out_of_memory
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
PY
[[ $status -eq 3 ]] || { cat "$work/oom.json" >&2; fail "out of memory exits with $status, not 3"; }

"$python" - "$work" <<'PY'
import json, math, sys
work = sys.argv[1]
def load(name):
    with open(f"{work}/{name}.json") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1, (name, lines)  # exactly one JSON line on stdout
    return json.loads(lines[0])
for name in ("check", "qwen2_check"):
    check = load(name)
    assert check["agree"] and check["sequences"] > 1, check
    # the check can fail: attending across sequences (use_cache=True) moves the logits far beyond it
    assert check["max_logit_difference_with_use_cache"] > 100 * check["logit_tolerance"], check
check, qwen2_check = load("check"), load("qwen2_check")
assert (check["family"], qwen2_check["family"]) == ("llama", "qwen2"), (check, qwen2_check)
packed, padded, checkpointed, bf16, qwen2 = (load(name) for name in ("packed", "padded", "checkpointed", "bf16", "qwen2"))
for result in (packed, padded, checkpointed, bf16, qwen2):
    assert result["steps"] == 2 and result["tokens_per_second"] > 0 and result["peak_rss_bytes"] > 0, result
    assert math.isfinite(result["first_loss"]) and math.isfinite(result["final_loss"]), result
    assert result["device"] == "cpu" and result["peak_gpu_bytes"] is None, result
# same weights, same first global batch: the first step's loss is the same in both modes
assert abs(packed["first_loss"] - padded["first_loss"]) <= 1e-5 * abs(padded["first_loss"]), (packed, padded)
assert packed["padding_share"] == 0 and padded["padding_share"] > 0, (packed, padded)
# recomputing the layers in backward gives the same gradients, so the same second step
assert checkpointed["gradient_checkpointing"] and not packed["gradient_checkpointing"], checkpointed
for key in ("first_loss", "final_loss"):
    assert abs(checkpointed[key] - packed[key]) <= 1e-6 * abs(packed[key]), (key, checkpointed, packed)
# bf16 matmuls on the same float32 weights: the loss moves by bf16 rounding, not more
assert (bf16["dtype"], packed["dtype"]) == ("bfloat16", "float32"), (bf16, packed)
assert 0 < abs(bf16["first_loss"] - packed["first_loss"]) <= 1e-2 * abs(packed["first_loss"]), (bf16, packed)
assert qwen2["family"] == "qwen2" and qwen2["first_loss"] != packed["first_loss"], (qwen2, packed)
oom = load("oom")
assert oom["oom"] is True and oom["error"] == "CUDA out of memory. Tried to allocate 2.00 GiB.", oom
assert oom["step"] == 1 and oom["mode"] == "packed" and "tokens_per_second" not in oom, oom
print(f"ok: padded/packed loss {check['padded_loss']:.6f}/{check['packed_loss']:.6f}, "
      f"leak with use_cache {check['max_logit_difference_with_use_cache']:.3f}; "
      f"qwen2 {qwen2_check['padded_loss']:.6f}/{qwen2_check['packed_loss']:.6f}; "
      f"bf16 first loss {bf16['first_loss']:.6f} (float32 {packed['first_loss']:.6f})")
PY
