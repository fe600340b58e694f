#!/usr/bin/env bash
# Fine-tuning a Hugging Face model under tensor parallelism: a tiny random Qwen2 from transformers
# (q/k/v biases, GQA, untied head) trained 4 steps from model.init_from on 1 rank and on tp = 2
# (each rank loads its slice of every split tensor, with and without sequence parallelism) gives
# the same losses (relative 1e-5), and the tp = 2 run's final checkpoint holds the 1-rank run's
# whole weights (relative 1e-5; k_proj.bias 1e-3, see below).
set -euo pipefail
train="$1"
data_tool="$2"
mpiexec="$3"
python="$4"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$python" - "$work/base" <<'PY'
import sys, torch, transformers
config = transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                  tie_word_embeddings=False)
torch.manual_seed(0)
transformers.AutoModelForCausalLM.from_config(config).save_pretrained(sys.argv[1], safe_serialization=True)
PY
"$data_tool" synth --output "$work/data/synth" --sequences 200 --scale 0.05 --max-length 600 --vocab-size 256 --quiet \
  >/dev/null
printf 'run:\n  name: tp\n' >"$work/run.yaml"
common=(--config "$work/run.yaml" --set model.init_from="$work/base" --set data.path="$work/data/synth"
        --set data.batch_tokens=1200 --set chunking.chunk_size=64 --set run.steps=4 --set optim.warmup_steps=0
        --set logging.tensorboard=false --set parallel.calibrate_costs=false)
"$train" "${common[@]}" --set run.output_dir="$work/single" >"$work/single.out" 2>&1 ||
  { cat "$work/single.out"; fail "1-rank run failed"; }
for sequence_parallel in true false; do
  "$mpiexec" -np 2 "$train" "${common[@]}" --set run.output_dir="$work/tp_$sequence_parallel" --set parallel.tp=2 \
    --set parallel.sequence_parallel="$sequence_parallel" >"$work/tp.out" 2>&1 ||
    { cat "$work/tp.out"; fail "tp = 2 run (sequence_parallel $sequence_parallel) failed"; }
done
"$python" - "$work" <<'PY'
import glob, json, sys, torch
from safetensors.torch import load_file
work = sys.argv[1]
def losses(run):
    return [json.loads(line)["loss"] for line in open(f"{work}/{run}/tp/metrics.jsonl")]
want = losses("single")
assert len(want) == 4, want
for run in ("tp_true", "tp_false"):
    got = losses(run)
    assert len(got) == len(want) and all(abs(g - w) <= 1e-5 * abs(w) for g, w in zip(got, want)), (run, got, want)
def weights(run):
    [shard] = glob.glob(f"{work}/{run}/tp/checkpoints/step-00000004/stage-00.safetensors")
    return {k: v for k, v in load_file(shard).items() if k.startswith("model/")}
single, split = weights("single"), weights("tp_true")
assert single.keys() == split.keys()
# k_proj.bias's gradient nearly cancels (softmax ignores a shift common to all keys), so its fp32
# summation-order noise is large relative to it, and AdamW, which divides by the gradient's own
# size, turns that noise into parameter steps: from its zero start it moved ~1e-4 (relative) apart
# when this test was written, while every other tensor stayed below 1e-6.
errors = {key: float((split[key] - single[key]).norm() / single[key].norm()) for key in single}
for key, error in errors.items():
    assert error <= (1e-3 if key.endswith("k_proj.bias") else 1e-5), (key, error)
print(f"Qwen2 from init_from: tp = 2 (with and without sequence parallelism) follows the 1-rank losses {want}; "
      f"its checkpoint's {len(single)} weights equal the 1-rank run's")
PY
