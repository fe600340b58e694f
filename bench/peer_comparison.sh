#!/usr/bin/env bash
# ChunkFlow next to an outside peer, Hugging Face transformers, on this machine: the same model
# config (configs/small_llama.yaml), the same dataset (the benchmarks' long-tail one), the same global-batch token budget
# (data.batch_tokens) and the same number of optimizer steps, one process at a time, OMP_NUM_THREADS
# threads each (default 2). Runs chunkflow-train (1 rank), then bench/hf_peer.py padded and packed,
# after hf_peer.py's check that its packed mode computes the padded mode's loss. Prints a Markdown
# table: tokens/s (real tokens, steps 2..N), mean step time, tokens per CPU-second of the process
# (steady where other jobs share the cores), peak RSS, ratios to ChunkFlow.
#   bench/peer_comparison.sh [steps]     (default 20; needs the build; writes the benchmarks'
#                                         dataset when it is missing)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
steps="${1:-20}"
python="${CHUNKFLOW_VENV:-$cache_root/venv}/bin/python"
config="$repo_root/configs/small_llama.yaml"
data="$(bench_longtail_dataset)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

echo "== transformers padding-free check (padded vs packed loss on the first global batch)" >&2
"$python" "$repo_root/bench/hf_peer.py" --config "$config" --data "$data" --mode check | tee "$work/check.json" >&2

# The 1-minute load average before each run, printed with the table: these machines are shared.
load() { cut -d' ' -f1 /proc/loadavg >"$work/$1.load"; }
echo "== chunkflow-train, $steps steps" >&2
load chunkflow
# Process CPU time (user + sys, /usr/bin/time) of an N-step and a 1-step run: their difference is the
# CPU time of steps 2..N (the sampler's order is seeded, so both runs start with the same batch).
train() {  # <name> <steps>
  /usr/bin/time -f "%M %U %S" -o "$work/$1.time" "$build_dir/bin/chunkflow-train" --config "$config" \
    --set data.path="$data" --set run.steps="$2" --set run.output_dir="$work" --set run.name="$1" \
    --set logging.progress=lines --set logging.tensorboard=false >"$work/$1.log" 2>&1 ||
    { cat "$work/$1.log" >&2; exit 1; }
}
train chunkflow "$steps"
train chunkflow_one_step 1
for mode in padded packed; do
  echo "== transformers $mode, $steps steps" >&2
  load "$mode"
  "$python" "$repo_root/bench/hf_peer.py" --config "$config" --data "$data" --mode "$mode" --steps "$steps" \
    >"$work/$mode.json"
  cat "$work/$mode.json" >&2
done

"$python" - "$work" "$steps" <<'PY'
import json, sys
work, steps = sys.argv[1], int(sys.argv[2])
rows = [json.loads(line) for line in open(f"{work}/chunkflow/metrics.jsonl")]
timed = rows[1:] or rows
def usage(name):  # peak RSS (bytes), CPU seconds
    fields = open(f"{work}/{name}.time").read().split()[-3:]
    return int(fields[0]) * 1024, float(fields[1]) + float(fields[2])
time_peak, cpu_all = usage("chunkflow")
cpu_steps = cpu_all - usage("chunkflow_one_step")[1] if steps > 1 else cpu_all
tokens = sum(r["tokens"] for r in timed)
# chunkflow-train resets the kernel's peak counter at each step, so its per-step peaks and the
# exit-time ru_maxrss are combined.
results = [dict(name="ChunkFlow, 256-token chunks, 1 rank",
                tokens_per_second=tokens / sum(r["seconds"] for r in timed),
                step_seconds=sum(r["seconds"] for r in timed) / len(timed),
                tokens_per_cpu_second=tokens / cpu_steps, step_cpu_seconds=cpu_steps / len(timed),
                peak_rss_bytes=max(max(r["peak_rss_bytes"] for r in rows), time_peak), final_loss=rows[-1]["loss"])]
for mode, label in (("padded", "transformers, padded micro-batches of 8"),
                    ("packed", "transformers, packed (padding-free)")):
    result = json.load(open(f"{work}/{mode}.json"))
    result["name"] = label
    results.append(result)
check = json.load(open(f"{work}/check.json"))
base, cpu_base = results[0]["tokens_per_second"], results[0]["tokens_per_cpu_second"]
print("| System / mode | tokens/s | step time | tokens per CPU-s | CPU-s per step | peak RSS | "
      "vs ChunkFlow (tokens/s) | vs ChunkFlow (per CPU-s) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in results:
    print(f"| {r['name']} | {r['tokens_per_second']:,.0f} | {r['step_seconds']:,.2f} s | "
          f"{r['tokens_per_cpu_second']:,.0f} | {r['step_cpu_seconds']:,.2f} | {r['peak_rss_bytes'] / 2**20:,.0f} MiB | "
          f"{r['tokens_per_second'] / base:.3f}x | {r['tokens_per_cpu_second'] / cpu_base:.3f}x |")
print()
print(f"{steps} steps each, timing over steps 2..{steps}; final losses: "
      + "; ".join(f"{r['name']} {r['final_loss']:.4f}" for r in results))
print(f"padding in the padded mode: {results[1]['padding_share']:.1%} of its tokens; transformers RSS before "
      f"the first step: {results[1]['rss_before_training_bytes'] / 2**20:,.0f} MiB (padded), "
      f"{results[2]['rss_before_training_bytes'] / 2**20:,.0f} MiB (packed)")
print("1-minute load average before each run: " + ", ".join(
    f"{name} {open(f'{work}/{name}.load').read().strip()}" for name in ("chunkflow", "padded", "packed"))
    + f" (OMP threads per run: {results[1]['threads']})")
print(f"padding-free check: padded loss {check['padded_loss']:.7f}, packed {check['packed_loss']:.7f} "
      f"(relative difference {check['relative_difference']:.1e}, largest logit difference "
      f"{check['max_logit_difference']:.1e}); with use_cache=True the packed logits differ by up to "
      f"{check['max_logit_difference_with_use_cache']:.2f}")
PY
