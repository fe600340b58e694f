#!/usr/bin/env bash
# The SLURM batch scripts on a real single-machine SLURM: starts its own munged, slurmctld and
# slurmd with every path (config, key, sockets, state, logs) in a temporary folder and ports that
# were free, then submits 2-rank training jobs: launch/slurm/chunkflow.sbatch (srun --mpi=pmix),
# launch/slurm/chunkflow-mpirun.sbatch (mpirun inside the allocation), and one whose ranks fail
# (the job must fail with their message). Every daemon it started is stopped, by PID, on exit.
#   slurm_test.sh <source dir> <chunkflow-train> <chunkflow-data>
set -euo pipefail
source_dir="$1"
train="$2"
data_tool="$3"

# The daemons live in sbin, which a user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
# A test run inside a SLURM job must not submit into that job's cluster.
for name in $(compgen -e | grep '^SLURM_' || true); do unset "$name"; done

work="$(mktemp -d /tmp/chunkflow-slurm-test.XXXXXX)"
# munged wants every folder above its socket searchable by all.
chmod 755 "$work"
daemon_pids=()
cleanup() {
  local status=$?
  # Clean up as far as possible whatever fails here.
  set +e
  if [ -f "$work/slurm.conf" ] && ((${#daemon_pids[@]} > 1)); then
    # Jobs first (a failed check can leave one running), then the daemons, newest first.
    # Client commands get a time limit: they retry for minutes when the daemons are broken.
    timeout 5 scancel --quiet --user="$(id -un)" 2>/dev/null
    local deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  # One at a time, newest first: slurmctld still talks to munged while it shuts down.
  local index pid state
  for ((index = ${#daemon_pids[@]} - 1; index >= 0; index--)); do
    pid="${daemon_pids[index]}"
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do
      # An exited child stays visible to kill -0 until it is reaped; ps shows it as Z.
      state="$(ps -o stat= -p "$pid")"
      [[ -z "$state" || "$state" == Z* ]] && break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for log in "$work"/*.log "$work"/job-*.out; do
    [ -f "$log" ] && { echo "--- $log (last lines):" >&2; tail -n 25 "$log" >&2; }
  done
  exit 1
}

for tool in munged mungekey slurmctld slurmd sbatch sinfo squeue scancel; do
  command -v "$tool" >/dev/null || fail "$tool not found (scripts/bootstrap.sh installs slurm-wlm and munge)"
done

# munge: its own key, socket, pid, seed and log, so a system munged (if any) is not touched.
mungekey --create --keyfile="$work/munge.key"
munged --foreground --key-file="$work/munge.key" --socket="$work/munge.socket" --pid-file="$work/munged.pid" \
  --seed-file="$work/munged.seed" --log-file="$work/munged.log" >"$work/munged.log" 2>&1 &
daemon_pids+=($!)

# Two ports the kernel just handed out, so they were free a moment ago.
read -r ctld_port slurmd_port < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')

mkdir -p "$work/state" "$work/spool"
export SLURM_CONF="$work/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=chunkflowtest
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge.socket
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ReturnToService=2
# sbatch --wait polls after 2 s, then 4x longer each time while that wait is below MinJobAge/2:
# with the default (300) a 3-second job is seen to end after 10 s. With 5 it polls every 2 s and
# a finished job stays known for at least 5 s; if it were forgotten before the poll, sbatch would
# say "no longer found and exit code not found" and exit 0.
MinJobAge=5
NodeName=localhost CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

for _ in $(seq 50); do [ -S "$work/munge.socket" ] && break; sleep 0.1; done
[ -S "$work/munge.socket" ] || fail "munged did not create its socket"
# -D: stay in the foreground, so $! is the daemon; -i: no state files yet is fine.
slurmctld -D -i >/dev/null 2>&1 &
daemon_pids+=($!)
# -N localhost: this machine's hostname is not the node name in slurm.conf.
slurmd -D -N localhost >/dev/null 2>&1 &
daemon_pids+=($!)

node_state=""
deadline=$((SECONDS + 30))
while ((SECONDS < deadline)); do
  # sinfo retries for minutes when it cannot reach slurmctld: each call gets 5 s.
  node_state="$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null || true)"
  [ "$node_state" = idle ] && break
  for pid in "${daemon_pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a daemon (pid $pid) exited while starting"; done
  sleep 0.1
done
[ "$node_state" = idle ] || fail "node localhost is '${node_state:-unknown}', not idle, 30 s after start"

"$data_tool" synth --output "$work/data/synth" --sequences 200 --scale 0.05 --max-length 300 \
  --tail-fraction 0.05 --vocab-size 64 --quiet >/dev/null
printf 'run:\n  name: slurm\n' >"$work/run.yaml"
tiny=(--set model.vocab_size=64 --set model.hidden_size=32 --set model.intermediate_size=48
      --set model.num_hidden_layers=1 --set model.num_attention_heads=4 --set model.num_key_value_heads=2
      --set data.batch_tokens=400 --set chunking.chunk_size=24 --set parallel.dp=2 --set run.steps=3)

# submit <name> <batch script> [script args...]: a 2-task job on the one node; its exit status.
submit() {
  local name="$1" script="$2"
  shift 2
  (cd "$source_dir" && CHUNKFLOW_TRAIN="$train" timeout 60 sbatch --quiet -N1 -n 2 --overcommit --wait \
     --job-name="$name" --output="$work/job-$name.out" "$script" "$@")
}
# check_trained <name> <launcher line pattern>: both ranks' world trained 3 steps.
check_trained() {
  local out="$work/job-$1.out"
  grep -q "job [0-9]* on 1 node(s) (localhost), 2 tasks" "$out" || fail "$1: no job line with 2 tasks"
  grep -q "$2" "$out" || fail "$1: the launch command '$2' is not printed"
  grep -Eq '^  dp: 2 ' "$out" || fail "$1: the resolved config does not have parallel.dp 2"
  # r0 is the rank tag (only jobs of more than one rank have it); dp imbalance is reported only
  # when the data-parallel group has more than one rank.
  grep -q "r0\] step 3/3 .*dp imbalance" "$out" || fail "$1: step 3/3 of the 2-rank run is not logged"
  grep -q "r0\] done: 3 steps" "$out" || fail "$1: no 'done: 3 steps' line"
  [ -f "$work/runs/$1/metrics.jsonl" ] || fail "$1: no $work/runs/$1/metrics.jsonl"
}

start=$(date +%s%N)
submit srun launch/slurm/chunkflow.sbatch "$work/run.yaml" "${tiny[@]}" --set data.path="$work/data/synth" \
  --set run.output_dir="$work/runs" --set run.name=srun || fail "the srun job failed"
check_trained srun "srun --mpi=pmix"
srun_ms=$(( ($(date +%s%N) - start) / 1000000 ))

start=$(date +%s%N)
CHUNKFLOW_SET="data.path=$work/data/synth run.output_dir=$work/runs run.name=mpirun" \
  submit mpirun launch/slurm/chunkflow-mpirun.sbatch "$work/run.yaml" "${tiny[@]}" || fail "the mpirun job failed"
check_trained mpirun "chunkflow-launch: mpirun -np 2 --bind-to none"
mpirun_ms=$(( ($(date +%s%N) - start) / 1000000 ))

start=$(date +%s%N)
if submit failing launch/slurm/chunkflow.sbatch "$work/run.yaml" "${tiny[@]}" --set data.path="$work/data/missing" \
    --set run.output_dir="$work/runs"; then
  fail "the job with a missing dataset succeeded"
fi
grep -q "r[01]\] .*data/missing.idx' does not exist" "$work/job-failing.out" || fail "failing: the ranks' message is missing"
failing_ms=$(( ($(date +%s%N) - start) / 1000000 ))

echo "SLURM jobs: srun --mpi=pmix ${srun_ms} ms, mpirun in the allocation ${mpirun_ms} ms, failing job ${failing_ms} ms"
