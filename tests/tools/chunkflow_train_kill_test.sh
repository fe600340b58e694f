#!/usr/bin/env bash
# A rank killed with SIGKILL (no chance to abort MPI itself) ends the whole job: a 2-rank
# chunkflow-train run under mpirun, rank 1 killed once steps are logged. mpirun must exit non-zero
# within 30 seconds, leave no rank of the job running, and name the lost rank and the signal.
set -euo pipefail
train="$1"
data_tool="$2"
mpiexec="$3"
work="$(mktemp -d)"
mpirun_pid=""
rank_pids=()
cleanup() {
  # Only what this test started, by PID: mpirun and the ranks it forked.
  for pid in $mpirun_pid "${rank_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ ! -f "$work/out" ] || { echo "--- job output:" >&2; tail -n 40 "$work/out" >&2; }; exit 1; }

"$data_tool" synth --output "$work/data/synth" --sequences 200 --scale 0.05 --max-length 300 \
  --tail-fraction 0.05 --vocab-size 64 --quiet >/dev/null
printf 'run:\n  name: kill\n' >"$work/run.yaml"
# About 100 steps a second here: 20000 steps would run for minutes.
"$mpiexec" -np 2 "$train" --config "$work/run.yaml" --set run.output_dir="$work/runs" --set data.path="$work/data/synth" \
  --set model.vocab_size=64 --set model.hidden_size=32 --set model.intermediate_size=48 \
  --set model.num_hidden_layers=1 --set model.num_attention_heads=4 --set model.num_key_value_heads=2 \
  --set data.batch_tokens=400 --set chunking.chunk_size=24 --set parallel.dp=2 --set run.steps=20000 \
  --set logging.interval=1000 >"$work/out" 2>&1 &
mpirun_pid=$!

for _ in $(seq 600); do
  grep -q "r0\] step 1/20000" "$work/out" && break
  kill -0 "$mpirun_pid" 2>/dev/null || fail "mpirun ended before training started"
  sleep 0.1
done
grep -q "r0\] step 1/20000" "$work/out" || fail "no training step logged within 60 s"

# mpirun forks the ranks on this machine itself; each carries its rank in its environment.
rank1_pid=""
for pid in $(pgrep -P "$mpirun_pid"); do
  rank_pids+=("$pid")
  if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1; then rank1_pid="$pid"; fi
done
[ "${#rank_pids[@]}" -eq 2 ] || fail "expected 2 ranks under mpirun (pid $mpirun_pid), found: ${rank_pids[*]:-none}"
[ -n "$rank1_pid" ] || fail "no child of mpirun has OMPI_COMM_WORLD_RANK=1 (children: ${rank_pids[*]})"

kill -9 "$rank1_pid"
killed_at=$(date +%s%N)
for _ in $(seq 300); do
  kill -0 "$mpirun_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$mpirun_pid" 2>/dev/null && fail "mpirun still runs 30 s after rank 1 (pid $rank1_pid) was killed"
elapsed_ms=$(( ($(date +%s%N) - killed_at) / 1000000 ))
status=0
wait "$mpirun_pid" || status=$?
mpirun_pid=""
[ "$status" -ne 0 ] || fail "mpirun exited with status 0 after rank 1 was killed"

for pid in "${rank_pids[@]}"; do
  # A zombie is not running; anything else with that PID still running is a leftover rank.
  if [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
    fail "rank process $pid is still running after mpirun exited"
  fi
done
rank_pids=()
# OpenMPI 4.1 prints "mpirun noticed that process rank 1 with PID 0 on node <host> exited on signal
# 9 (Killed)." (the PID it prints is 0, so it is not checked).
grep -q "process rank 1 .*exited on signal 9" "$work/out" || fail "mpirun's output does not name rank 1 and signal 9"
echo "killing rank 1 ended mpirun in ${elapsed_ms} ms with status $status; no rank left; output names rank 1 and signal 9"
