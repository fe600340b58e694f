#!/usr/bin/env bash
# One prepared check for a lent GPU machine (CUDA 13 + PyTorch 2.11 in python3, cmake, ninja; no
# internet, apt, MPI, yaml-cpp or protobuf). It builds core + kernels, their tests and the GPU
# attention benchmark against that machine's own LibTorch (CHUNKFLOW_KERNELS_ONLY), runs the
# kernel tests (GPU ones included), times our attention against torch's FlashAttention backend,
# prints a short table and writes JSON + logs under $OUT (or runs/device_check when unset).
#
#   scripts/device_check.sh --prepare   # here, before borrowing the machine: copies this
#                                       # machine's GoogleTest sources into .device/ (ignored by
#                                       # git; pass `.device` as a carried path)
#   scripts/device_check.sh             # on the GPU machine (also runs here: GPU tests skip)
#
# Environment: OUT (results folder), PYTHON (default python3), CHUNKFLOW_DEVICE_ARCH (default 90),
# CHUNKFLOW_DEVICE_BUILD_DIR, CHUNKFLOW_DEVICE_BUILD_TIMEOUT (seconds, default 360: a 2-core
# build machine needs ~20 minutes from cold), CHUNKFLOW_DEVICE_CMAKE_ARGS (extra cmake arguments; a rehearsal on a
# build machine passes -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON to use the copied sources as the GPU
# machine will).
#
# Budget: the whole run is meant to stay under 8 minutes on 16 cores (build ~3, tests ~1,
# benchmark ~2); each step has its own timeout so a hang cannot eat the device time.
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gtest_copy="$repo_root/.device/googletest"

if [[ "${1:-}" == "--prepare" ]]; then
  source_dir="${GTEST_SOURCE:-/usr/src/googletest}"
  [[ -f "$source_dir/CMakeLists.txt" ]] || {
    echo "device_check --prepare: no GoogleTest sources at $source_dir (apt install googletest, or set GTEST_SOURCE)" >&2
    exit 1
  }
  rm -rf "$gtest_copy" && mkdir -p "$(dirname "$gtest_copy")" && cp -r "$source_dir" "$gtest_copy"
  echo "device_check: GoogleTest copied to ${gtest_copy#"$repo_root"/}; carry '.device' to the GPU machine"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "device_check: unknown argument '$1' (use --prepare, or no argument to run the check)" >&2
  exit 2
fi

out_dir="${OUT:-$repo_root/runs/device_check}"
mkdir -p "$out_dir"
build_dir="${CHUNKFLOW_DEVICE_BUILD_DIR:-$repo_root/build-device}"
python="${PYTHON:-python3}"
started=$(date +%s)
declare -A step_status

log() { printf '[device_check %4ds] %s\n' "$(( $(date +%s) - started ))" "$*"; }

# run_step NAME TIMEOUT_S COMMAND...: output to $out_dir/NAME.log (tail shown on failure).
run_step() {
  local name="$1" limit="$2"; shift 2
  log "$name ..."
  timeout --kill-after=10 "$limit" "$@" >"$out_dir/$name.log" 2>&1
  local status=$?
  step_status[$name]=$status
  if [[ $status -ne 0 ]]; then
    log "$name FAILED (exit $status; $([[ $status -eq 124 ]] && echo "timed out after ${limit}s; ")log: $name.log)"
    tail -n 40 "$out_dir/$name.log"
  else
    log "$name ok"
  fi
  return $status
}

write_summary() {
  {
    echo "{"
    echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
    echo "  \"host\": \"$(hostname)\","
    echo "  \"commit\": \"$(git -C "$repo_root" rev-parse HEAD 2>/dev/null || echo unknown)\","
    echo "  \"seconds\": $(( $(date +%s) - started )),"
    echo "  \"gpu\": \"$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1 | tr -d '"')\","
    echo "  \"steps\": {"
    local first=1
    for name in configure build tests bench; do
      [[ -n "${step_status[$name]+set}" ]] || continue
      [[ $first -eq 1 ]] || echo ","
      printf '    "%s": %s' "$name" "${step_status[$name]}"
      first=0
    done
    echo ""
    echo "  }"
    echo "}"
  } >"$out_dir/summary.json"
}
trap write_summary EXIT

nvidia-smi >"$out_dir/nvidia-smi.txt" 2>&1 || log "nvidia-smi not available (no GPU here: GPU tests will skip)"
torch_prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')" || {
  log "$python cannot import torch"; exit 1; }
log "$("$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "devices", torch.cuda.device_count())' 2>&1)"

gtest_args=()
if [[ -f "$gtest_copy/CMakeLists.txt" ]]; then
  gtest_args=(-DCHUNKFLOW_GTEST_SOURCE_DIR="$gtest_copy")
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
# The GPU machines are H200s (sm_90); one architecture halves the CUDA compile time. Override
# with CHUNKFLOW_DEVICE_ARCH for another device.
arch="${CHUNKFLOW_DEVICE_ARCH:-90}"

run_step configure 300 cmake -S "$repo_root" -B "$build_dir" "${generator[@]}" "${launcher[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DCHUNKFLOW_KERNELS_ONLY=ON -DCHUNKFLOW_BUILD_BENCH=ON \
  -DCHUNKFLOW_PYTHON="$(command -v "$python")" -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DTORCH_CUDA_ARCH_LIST="${arch:0:1}.${arch:1}" \
  "${gtest_args[@]}" ${CHUNKFLOW_DEVICE_CMAKE_ARGS:-} || exit 1
run_step build "${CHUNKFLOW_DEVICE_BUILD_TIMEOUT:-360}" cmake --build "$build_dir" -j "$(nproc)" || exit 1

# Kernel tests: GPU ones first (they are why we are here), then the CPU ones of kernels/.
run_step tests 240 bash -c "cd '$build_dir' && ctest -L gpu --output-on-failure --timeout 120 \
  --output-junit '$out_dir/gpu_tests.xml' && ctest -LE gpu -j \$(nproc) --output-on-failure --timeout 120"
grep -E "tests passed|tests failed|Skipped|Failed|Passed" "$out_dir/tests.log" | tail -n 12

export CUDA_MODULE_LOADING=LAZY
run_step bench 240 "$build_dir/bin/attention_gpu_bench" --json "$out_dir/attention_gpu.json"
cat "$out_dir/bench.log"
log "done; results in $out_dir"
[[ ${step_status[tests]} -eq 0 && ${step_status[bench]} -eq 0 ]]
