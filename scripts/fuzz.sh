#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, clang 14) of every parser of outside input: builds the
# targets of tests/fuzz/ with AddressSanitizer + UndefinedBehaviorSanitizer in build-fuzz, runs
# them one at a time (one process each) on a copy of their seed corpus, prints a table and fails
# on any crash, hang, out-of-memory or sanitizer report.
#
#   scripts/fuzz.sh [--smoke] [--runs N] [--time SECONDS] [--targets a,b,...] [--update-corpus]
#                   [--no-build]
#
#   (default)        each target until 1,000,000 executions or 600 s, whichever comes first
#   --smoke          a short check: 20,000 executions or 30 s per target
#   --runs N         executions per target
#   --time SECONDS   wall-clock limit per target
#   --targets LIST   comma-separated subset, e.g. --targets config_fuzz,safetensors_fuzz
#   --update-corpus  merge the inputs that found new coverage into tests/fuzz/corpus/ (the repo's
#                    seeds are never written otherwise)
#   --no-build       run the targets already built in build-fuzz (no bootstrap, configure, build)
#
# Environment: CHUNKFLOW_FUZZ_TIMEOUT (seconds one input may take before it counts as a hang,
# default 10), CHUNKFLOW_FUZZ_RSS_MB (memory limit, default 4096), CHUNKFLOW_JOBS (build jobs,
# default 2). Results: build-fuzz/fuzz-results/<time>/ (logs, crash inputs, summary.txt).
# A crash input goes to tests/fuzz/regressions/<target>/ once the bug is fixed; the CTest entry
# fuzz.<target> (ctest -L cpu in build-fuzz) replays seeds and regressions.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CHUNKFLOW_BUILD_DIR="${CHUNKFLOW_BUILD_DIR:-$repo_root/build-fuzz}"
source "$repo_root/scripts/env.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

all_targets=(indexed_dataset_fuzz jsonl_prepare_fuzz safetensors_fuzz config_fuzz
             checkpoint_manifest_fuzz checkpoint_manifest_payload_fuzz hf_model_fuzz)
runs=1000000
max_time=600
targets=("${all_targets[@]}")
update_corpus=0
build=1
while (($#)); do
  case "$1" in
    --smoke) runs=20000; max_time=30 ;;
    --runs) runs="$2"; shift ;;
    --time) max_time="$2"; shift ;;
    --targets) IFS=, read -r -a targets <<<"$2"; shift ;;
    --update-corpus) update_corpus=1 ;;
    --no-build) build=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fuzz.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for target in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $target "* ]] || {
    echo "fuzz.sh: unknown target '$target'; targets: ${all_targets[*]}" >&2; exit 2; }
done

if ((build)); then
  "$repo_root/scripts/bootstrap.sh"
  # Every library the targets link gets coverage + ASan + UBSan (fuzzer-no-link); the targets add
  # libFuzzer's main. Only the targets and what they link are built. The precompiled torch header
  # (cmake/ChunkFlowPch.cmake) is measured and tested with GCC only: off in this clang build.
  mkdir -p "$build_dir"
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  CC=clang CXX=clang++ cmake -S "$repo_root" -B "$build_dir" -G Ninja "${launcher[@]}" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHUNKFLOW_FUZZ=ON -DCHUNKFLOW_PCH=OFF \
    -DCHUNKFLOW_SANITIZE=fuzzer-no-link,address,undefined -DCHUNKFLOW_WITH_CUDA=OFF \
    -DCHUNKFLOW_BUILD_TESTS=OFF -DCHUNKFLOW_BUILD_BENCH=OFF -DCHUNKFLOW_WERROR=OFF \
    >"$build_dir.configure.log" 2>&1 || {
    cat "$build_dir.configure.log"; echo "configure failed (log: $build_dir.configure.log)" >&2; exit 1; }
  cmake --build "$build_dir" -j "${CHUNKFLOW_JOBS:-2}" --target "${targets[@]}"
fi

results="$build_dir/fuzz-results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results"
# The targets write their inputs to files in a scratch folder under here; a crashed process
# cannot clean up after itself, so the whole folder goes at exit.
export CHUNKFLOW_FUZZ_SCRATCH
CHUNKFLOW_FUZZ_SCRATCH="$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/chunkflow-fuzz-run.XXXXXX")"
trap 'rm -rf "$CHUNKFLOW_FUZZ_SCRATCH"' EXIT
# LibTorch, protobuf and MPI are not instrumented; their one-time allocations are reachable, so
# leak checking stays on. ODR reports come from libraries linked into both torch and us.
export ASAN_OPTIONS="detect_odr_violation=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
export OMP_NUM_THREADS=1

# last_match <log> <regex with one group>: the group of the last matching line.
last_match() { sed -n -E "s/$2/\1/p" "$1" | tail -n 1; }

failed=0
table="$results/summary.txt"
printf '%-34s %10s %8s %6s %15s %17s %s\n' target executions exec/s time 'cov (edges)' 'features (+new)' \
  result | tee "$table"
for target in "${targets[@]}"; do
  work="$results/$target"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp "$repo_root/tests/fuzz/corpus/$target/"* "$work/corpus/"
  log="$work/fuzz.log"
  limits=(-timeout="${CHUNKFLOW_FUZZ_TIMEOUT:-10}" -rss_limit_mb="${CHUNKFLOW_FUZZ_RSS_MB:-4096}"
          -artifact_prefix="$work/artifacts/")
  status=0
  # The crash inputs of fixed bugs first (once each), then fuzzing from the seeds alone, so that a
  # large reproducer does not raise the input size limit of the whole session.
  if [ -d "$repo_root/tests/fuzz/regressions/$target" ]; then
    "$build_dir/bin/$target" -runs=0 "${limits[@]}" "$repo_root/tests/fuzz/regressions/$target" \
      >"$work/regressions.log" 2>&1 || { status=$?; cp "$work/regressions.log" "$log"; }
  fi
  started=$(date +%s)
  if ((status == 0)); then
    "$build_dir/bin/$target" -runs="$runs" -max_total_time="$max_time" "${limits[@]}" \
      -print_final_stats=1 "$work/corpus" >"$log" 2>&1 || status=$?
  fi
  seconds=$(( $(date +%s) - started ))

  executions=$(last_match "$log" '^stat::number_of_executed_units: *([0-9]+).*')
  [ -n "$executions" ] || executions=$(last_match "$log" '^#([0-9]+)[[:space:]].*')
  exec_per_s=$(last_match "$log" '^stat::average_exec_per_sec: *([0-9]+).*')
  [ -n "$exec_per_s" ] || exec_per_s=$(( ${executions:-0} / (seconds > 0 ? seconds : 1) ))
  cov=$(last_match "$log" '^#[0-9]+[[:space:]]+[A-Z]+ +cov: ([0-9]+) .*')
  features=$(last_match "$log" '^#[0-9]+[[:space:]]+[A-Z]+ +.* ft: ([0-9]+) .*')
  initial_features=$(sed -n -E 's/^#[0-9]+[[:space:]]+INITED .* ft: ([0-9]+) .*/\1/p' "$log" | head -n 1)
  crashes=$(find "$work/artifacts" -type f | wc -l)
  result=ok
  if ((status != 0 || crashes > 0)); then
    failed=1
    result="FAILED (exit $status): $(grep -m1 -oE 'ERROR: [A-Za-z]+: [a-z-]+|runtime error: .*|fuzz: contract broken: .*|deadly signal' "$log" || echo 'see log')"
    result+=" — $(find "$work/artifacts" -type f | head -n 1); log $log"
  fi
  printf '%-34s %10s %8s %5ss %15s %17s %s\n' "$target" "${executions:-?}" "${exec_per_s:-?}" "$seconds" \
    "${cov:-?}" "${features:-?} (+$(( ${features:-0} - ${initial_features:-0} )))" "$result" | tee -a "$table"

  if ((update_corpus && status == 0)); then
    # Keep only the inputs that add coverage to what the repo already has.
    "$build_dir/bin/$target" -merge=1 "$repo_root/tests/fuzz/corpus/$target" "$work/corpus" \
      >"$work/merge.log" 2>&1 || { echo "merge failed: $work/merge.log" >&2; failed=1; }
  fi
done
echo "logs, corpora and crash inputs: $results"
if ((failed)); then
  echo "fuzz.sh: FAILED; reproduce with: $build_dir/bin/<target> <crash input>" >&2
  exit 1
fi
