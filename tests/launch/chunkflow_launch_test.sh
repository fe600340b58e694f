#!/usr/bin/env bash
# launch/chunkflow-launch: argument mistakes are refused with the option and value named; the
# mpirun command it prints and runs (binding, environment, overrides); the SLURM batch scripts'
# own argument checks; a real 2-rank training run.
#   chunkflow_launch_test.sh <source dir> <chunkflow-train> <chunkflow-data>
set -euo pipefail
source_dir="$1"
train="$2"
data_tool="$3"
launch="$source_dir/launch/chunkflow-launch"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
export CHUNKFLOW_TRAIN="$train"
printf 'run:\n  name: launch\n' >"$work/run.yaml"

# refused_by <expected message part> <command...>: exit status 2 and the message on stderr.
refused_by() {
  local expected="$1"
  shift
  local status=0
  "$@" >"$work/stdout" 2>"$work/stderr" || status=$?
  [ "$status" -eq 2 ] || { cat "$work/stderr" >&2; fail "$* exited with $status, not 2"; }
  grep -qF -- "$expected" "$work/stderr" || { cat "$work/stderr" >&2; fail "$*: no '$expected'"; }
}
# refused <expected message part> <chunkflow-launch arguments...>
refused() {
  local expected="$1"
  shift
  refused_by "$expected" "$launch" "$@"
}
refused "--ranks must be a positive integer, got 'two'" --ranks two --config "$work/run.yaml"
refused "--ranks must be a positive integer, got '0'" --ranks 0 --config "$work/run.yaml"
refused "--ranks is required" --config "$work/run.yaml"
refused "--config is required" --ranks 2
refused "--config '$work/missing.yaml' does not exist" --ranks 2 --config "$work/missing.yaml"
refused "--hostfile '$work/hosts' does not exist" --ranks 2 --hostfile "$work/hosts" --config "$work/run.yaml"
refused "--ranks-per-node must be a positive integer, got '1.5'" --ranks 2 --ranks-per-node 1.5 --config "$work/run.yaml"
refused "unknown option '--rank'" --rank 2 --config "$work/run.yaml"
refused "unexpected argument 'run.yaml'" --ranks 2 run.yaml
refused "--set needs a value" --ranks 2 --config "$work/run.yaml" --set
refused "--set wants section.key=value, got 'steps'" --ranks 2 --config "$work/run.yaml" --set steps
CHUNKFLOW_TRAIN="$work/no-train" refused "chunkflow-train not found at '$work/no-train'" --ranks 2 --config "$work/run.yaml"

"$launch" --help >"$work/help"
grep -q -- "--hostfile hosts --ranks-per-node 8" "$work/help" || fail "--help has no multi-node example"

# The command: printed on stderr, quoted so that it can be pasted back into a shell.
printf 'node1 slots=2\n' >"$work/hosts"
env -u OMP_NUM_THREADS "$launch" --ranks=4 --hostfile "$work/hosts" --ranks-per-node 2 --config "$work/run.yaml" \
  --set parallel.dp=4 --set "run.name=a b" --dry-run -- --mca btl self >"$work/stdout" 2>"$work/stderr"
[ ! -s "$work/stdout" ] || fail "--dry-run wrote to stdout"
expected="chunkflow-launch: mpirun -np 4 --hostfile $work/hosts --map-by ppr:2:node --bind-to none "
grep -qF -- "$expected" "$work/stderr" || { cat "$work/stderr" >&2; fail "command does not start with '$expected'"; }
for part in "-x OMP_NUM_THREADS" "-x CHUNKFLOW_TRAIN" "--mca btl self $train --config $work/run.yaml --set parallel.dp=4 --set run.name=a\\ b"; do
  grep -qF -- "$part" "$work/stderr" || { cat "$work/stderr" >&2; fail "command lacks '$part'"; }
done

# What each rank gets: a stand-in for chunkflow-train prints its rank, threads and arguments.
cat >"$work/fake-train" <<'EOF'
#!/usr/bin/env bash
echo "rank $OMPI_COMM_WORLD_RANK of $OMPI_COMM_WORLD_SIZE OMP_NUM_THREADS=$OMP_NUM_THREADS args: $*"
EOF
chmod +x "$work/fake-train"
CHUNKFLOW_TRAIN="$work/fake-train" env -u OMP_NUM_THREADS "$launch" --ranks 2 --config "$work/run.yaml" \
  --set run.steps=7 >"$work/fake.out" 2>&1 || { cat "$work/fake.out" >&2; fail "the stand-in job failed"; }
for rank in 0 1; do
  grep -qF "rank $rank of 2 OMP_NUM_THREADS=1 args: --config $work/run.yaml --set run.steps=7" "$work/fake.out" ||
    { cat "$work/fake.out" >&2; fail "rank $rank did not get OMP_NUM_THREADS=1 and the arguments"; }
done
CHUNKFLOW_TRAIN="$work/fake-train" OMP_NUM_THREADS=3 "$launch" --ranks 2 --config "$work/run.yaml" >"$work/fake.out" 2>&1
grep -q "rank 1 of 2 OMP_NUM_THREADS=3 " "$work/fake.out" || { cat "$work/fake.out" >&2; fail "OMP_NUM_THREADS=3 was not kept"; }

# The SLURM batch scripts check their arguments before srun/mpirun (no SLURM needed for that).
slurm="$source_dir/launch/slurm"
for script in chunkflow.sbatch chunkflow-mpirun.sbatch; do
  refused_by "$script: error: run me with sbatch" env -u SLURM_JOB_ID bash "$slurm/$script" "$work/run.yaml"
  refused_by "$script: error: no config" env -u CHUNKFLOW_CONFIG SLURM_JOB_ID=1 SLURM_SUBMIT_DIR="$source_dir" \
    bash "$slurm/$script" --set run.steps=1
done
refused_by "chunkflow.sbatch: error: config '$work/missing.yaml' does not exist" \
  env SLURM_JOB_ID=1 bash "$slurm/chunkflow.sbatch" "$work/missing.yaml"
refused_by "chunkflow-launch: error: --config '$work/missing.yaml' does not exist" \
  env SLURM_JOB_ID=1 SLURM_NTASKS=2 SLURM_SUBMIT_DIR="$source_dir" bash "$slurm/chunkflow-mpirun.sbatch" "$work/missing.yaml"

# A real run: 2 data-parallel ranks train 3 steps; mpirun's exit status comes back.
"$data_tool" synth --output "$work/data/synth" --sequences 200 --scale 0.05 --max-length 300 \
  --tail-fraction 0.05 --vocab-size 64 --quiet >/dev/null
tiny=(--set model.vocab_size=64 --set model.hidden_size=32 --set model.intermediate_size=48
      --set model.num_hidden_layers=1 --set model.num_attention_heads=4 --set model.num_key_value_heads=2
      --set data.batch_tokens=400 --set chunking.chunk_size=24 --set run.steps=3
      --set data.path="$work/data/synth" --set run.output_dir="$work/runs")
"$launch" --ranks 2 --config "$work/run.yaml" "${tiny[@]}" --set parallel.dp=2 >"$work/train.out" 2>&1 ||
  { cat "$work/train.out" >&2; fail "the 2-rank training run failed"; }
grep -q "r0\] done: 3 steps" "$work/train.out" || { cat "$work/train.out" >&2; fail "no 'done: 3 steps' from rank 0"; }
status=0
"$launch" --ranks 2 --config "$work/run.yaml" "${tiny[@]}" --set parallel.dp=3 >"$work/train.out" 2>&1 || status=$?
[ "$status" -ne 0 ] || fail "dp=3 on 2 ranks succeeded"
grep -q "dp (3) x cp (1) x pp (1) x tp (1) = 3 ranks, but the job has 2 ranks" "$work/train.out" ||
  { cat "$work/train.out" >&2; fail "no message about dp x cp x pp against the rank count"; }
echo "chunkflow-launch: mistakes refused, command and environment as documented, 2-rank run trained"
