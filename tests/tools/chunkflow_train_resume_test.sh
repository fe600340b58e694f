#!/usr/bin/env bash
# Exact resume after SIGKILL, under mpirun, and re-sharding to other layouts:
#  1. a dp = 2 run with the sharded optimizer (parallel.shard_optimizer) and checkpoints every 4
#     steps is killed with SIGKILL (mpirun and both ranks) once a few checkpoints exist, possibly
#     in the middle of writing one;
#  2. resumed from its newest checkpoint C (resume: auto) to step C + 4, every loss equals an
#     uninterrupted dp = 2 run's with replicated AdamW (relative 1e-6); so do runs resumed from C
#     with replicated AdamW on 1 rank, on pp = 2 and on tp = 2 (relative 1e-5: other layouts sum
#     in another order); the tp = 2 run's final checkpoint (whole tensors assembled from both
#     ranks' slices) holds the 1-rank run's weights and AdamW moments (relative 1e-5);
#  3. chunkflow-export of the pp = 2 run's checkpoint (two stage shards) loads in transformers and
#     holds exactly the checkpoint's weights.
# The learning rate is constant, so a run's steps do not depend on run.steps.
set -euo pipefail
train="$1"
data_tool="$2"
mpiexec="$3"
export_tool="$4"
python="$5"
work="$(mktemp -d)"
mpirun_pid=""
cleanup() {
  if [ -n "$mpirun_pid" ]; then
    for pid in $(pgrep -P "$mpirun_pid" 2>/dev/null) "$mpirun_pid"; do kill -9 "$pid" 2>/dev/null || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$data_tool" synth --output "$work/data/synth" --sequences 300 --scale 0.05 --max-length 300 \
  --tail-fraction 0.05 --vocab-size 64 --quiet >/dev/null
printf 'run:\n  name: resume\n' >"$work/run.yaml"
common=(--config "$work/run.yaml" --set data.path="$work/data/synth" --set model.vocab_size=64
        --set model.hidden_size=32 --set model.intermediate_size=48 --set model.num_hidden_layers=2
        --set model.num_attention_heads=4 --set model.num_key_value_heads=2 --set data.batch_tokens=400
        --set chunking.chunk_size=24 --set optim.schedule=constant --set optim.warmup_steps=0
        --set parallel.calibrate_costs=false --set logging.interval=1000)

# 1. Killed run.
"$mpiexec" -np 2 "$train" "${common[@]}" --set run.output_dir="$work/killed" --set parallel.dp=2 \
  --set parallel.shard_optimizer=true --set run.steps=100000 --set checkpoint.interval=4 >"$work/killed.out" 2>&1 &
mpirun_pid=$!
checkpoints="$work/killed/resume/checkpoints"
for _ in $(seq 600); do
  [ -f "$checkpoints/step-00000012/manifest.pb" ] && break
  kill -0 "$mpirun_pid" 2>/dev/null || { cat "$work/killed.out"; fail "the run ended before its third checkpoint"; }
  sleep 0.1
done
[ -f "$checkpoints/step-00000012/manifest.pb" ] || fail "no checkpoint at step 12 within 60 s"
for pid in $(pgrep -P "$mpirun_pid") "$mpirun_pid"; do kill -9 "$pid" 2>/dev/null || true; done
wait "$mpirun_pid" 2>/dev/null || true
mpirun_pid=""
last=$(ls "$checkpoints" | grep -E '^step-[0-9]+$' | while read -r name; do
  [ -f "$checkpoints/$name/manifest.pb" ] && echo "$name"; done | sort | tail -n 1)
resumed_at=$((10#${last#step-}))
target=$((resumed_at + 4))
echo "killed after checkpoint $last; resuming at step $resumed_at up to $target"

# 2. Uninterrupted reference and the resumed runs.
"$mpiexec" -np 2 "$train" "${common[@]}" --set run.output_dir="$work/reference" --set parallel.dp=2 \
  --set run.steps="$target" >"$work/reference.out" 2>&1 || { cat "$work/reference.out"; fail "reference run failed"; }
"$mpiexec" -np 2 "$train" "${common[@]}" --set run.output_dir="$work/killed" --set parallel.dp=2 \
  --set parallel.shard_optimizer=true --set run.steps="$target" --set checkpoint.resume=auto >"$work/resumed.out" 2>&1 ||
  { cat "$work/resumed.out"; fail "resumed run failed"; }
grep -q "resumed from .*$last at step $resumed_at" "$work/resumed.out" || { cat "$work/resumed.out"; fail "did not resume from $last"; }
"$mpiexec" -np 1 "$train" "${common[@]}" --set run.output_dir="$work/single" --set run.steps="$target" \
  --set checkpoint.resume="$checkpoints/$last" >"$work/single.out" 2>&1 || { cat "$work/single.out"; fail "1-rank resume failed"; }
"$mpiexec" -np 2 "$train" "${common[@]}" --set run.output_dir="$work/pipeline" --set parallel.pp=2 \
  --set run.steps="$target" --set checkpoint.resume="$checkpoints/$last" --set logging.trace=true >"$work/pipeline.out" 2>&1 ||
  { cat "$work/pipeline.out"; fail "pp = 2 resume failed"; }
"$mpiexec" -np 2 "$train" "${common[@]}" --set run.output_dir="$work/tensor" --set parallel.tp=2 \
  --set run.steps="$target" --set checkpoint.resume="$checkpoints/$last" >"$work/tensor.out" 2>&1 ||
  { cat "$work/tensor.out"; fail "tp = 2 resume failed"; }
grep -q "saved with dp 2 cp 1 pp 1 tp 1" "$work/tensor.out" || { cat "$work/tensor.out"; fail "tp = 2 run did not log the saved layout"; }

"$python" - "$work" "$resumed_at" "$target" <<'PY'
import json, sys
work, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def losses(path):
    values = {}
    for line in open(path):
        record = json.loads(line)
        values.setdefault(record["step"], []).append(record["loss"])
    return values
reference = losses(f"{work}/reference/resume/metrics.jsonl")
resumed = losses(f"{work}/killed/resume/metrics.jsonl")
for step in range(1, last + 1):
    assert len(resumed.get(step, [])) == 1, f"step {step} appears {len(resumed.get(step, []))} times in the resumed metrics"
for name, tolerance in (("killed", 1e-6), ("single", 1e-5), ("pipeline", 1e-5), ("tensor", 1e-5)):
    got = losses(f"{work}/{name}/resume/metrics.jsonl")
    for step in range(first + 1, last + 1):
        want, have = reference[step][0], got[step][0]
        assert abs(have - want) <= tolerance * abs(want), f"{name}: step {step} loss {have} vs uninterrupted {want}"
print(f"losses of steps {first + 1}..{last} equal the uninterrupted run (dp 2 resume 1e-6; 1 rank, pp 2 and tp 2 1e-5)")
# The tp = 2 run's last checkpoint holds whole tensors: the 1-rank run's, to fp32 summation order.
from safetensors.torch import load_file
def final_tensors(name):
    return load_file(f"{work}/{name}/resume/checkpoints/step-{last:08d}/stage-00.safetensors")
single, tensor = final_tensors("single"), final_tensors("tensor")
compared = [key for key in single if key.startswith(("model/", "optim/")) and not key.endswith("/step")]
assert compared and set(compared) <= set(tensor), sorted(set(compared) - set(tensor))
for key in compared:
    assert tensor[key].shape == single[key].shape, f"{key}: {tuple(tensor[key].shape)} vs {tuple(single[key].shape)}"
    error = float((tensor[key] - single[key]).norm() / single[key].norm().clamp_min(1e-30))
    assert error <= 1e-5, f"{key}: relative difference {error:.3g} between the tp = 2 and 1-rank checkpoints"
print(f"tp = 2 checkpoint: {len(compared)} whole tensors equal the 1-rank run's")
# The pp = 2 run's timelines: one per rank; the second stage waits for the first's activations.
for rank in (0, 1):
    events = json.load(open(f"{work}/pipeline/resume/trace/rank-{rank}.json"))["traceEvents"]
    names = [e["name"] for e in events if e["ph"] == "X"]
    assert any(n.startswith("F chunk") for n in names), f"rank {rank}: no forward spans"
    if rank == 1:
        assert "wait for activations" in names, "stage 1 never waited for activations"
print("pp = 2 trace files: forward spans on both ranks, activation waits on stage 1")
PY

# 3. Export of a two-stage checkpoint.
"$export_tool" --checkpoint "$work/pipeline/resume/checkpoints" --output "$work/hf" --max-shard-mb 1 >"$work/export.out" 2>&1 ||
  { cat "$work/export.out"; fail "chunkflow-export failed"; }
"$python" - "$work/hf" "$work/pipeline/resume/checkpoints/step-$(printf '%08d' "$target")" <<'PY'
import sys, glob, torch, transformers
from safetensors.torch import load_file
hf, checkpoint = sys.argv[1], sys.argv[2]
model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
state = model.state_dict()
saved = {}
for shard in sorted(glob.glob(f"{checkpoint}/stage-*.safetensors")):
    for name, tensor in load_file(shard).items():
        if name.startswith("model/"):
            saved[name[len("model/"):]] = tensor
assert len(glob.glob(f"{checkpoint}/stage-*.safetensors")) == 2
for name, tensor in saved.items():
    assert torch.equal(state[name], tensor), name
print(f"transformers loaded the export; {len(saved)} tensors equal the two-stage checkpoint's")
PY
