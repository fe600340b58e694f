# Sourced by the scripts: shared locations and the ccache set-up. Caches live outside the
# checkout so that fresh clones (CI) reuse them.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${CHUNKFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chunkflow}"
export CCACHE_DIR="${CCACHE_DIR:-$cache_root/ccache}"
# Relative paths in the cache key, so a clone in another folder hits the same entries.
export CCACHE_BASEDIR="$repo_root"
export CCACHE_NOHASHDIR=true
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-8G}"
# The precompiled torch header (cmake/ChunkFlowPch.cmake) is rebuilt in every fresh build folder:
# without these ccache would not cache the files that use it (it hashes the .gch by content, so
# an object is still reused only against an equal header).
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
build_dir="${CHUNKFLOW_BUILD_DIR:-$repo_root/build}"

# The one build configuration of $build_dir, shared by the demo and the tests so that each reuses
# the other's objects (compile flags that differ would miss ccache and rebuild everything):
# warnings are errors, as in CI.
# configure_and_build [--target NAME ...] [extra cmake args...]   (no --target: every target)
configure_and_build() {
  local launcher=() targets=() cmake_args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --target) targets+=(--target "$2"); shift 2 ;;
      *) cmake_args+=("$1"); shift ;;
    esac
  done
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  # CUDA kernels: on a machine without a GPU they cannot run, and compiling them for sm_90 alone
  # checks they build at about half the cost; with a GPU, every supported architecture (8.0 and
  # 9.0, as a plain cmake build does). CHUNKFLOW_CUDA_ARCH_LIST overrides both. LibTorch's CMake
  # config turns the list into nvcc's -gencode flags (it sets CMAKE_CUDA_ARCHITECTURES to OFF).
  local cuda_arch_list="${CHUNKFLOW_CUDA_ARCH_LIST:-}"
  if [ -z "$cuda_arch_list" ]; then
    cuda_arch_list="8.0;9.0"
    nvidia-smi -L >/dev/null 2>&1 || cuda_arch_list="9.0"
  fi
  cmake -S "$repo_root" -B "$build_dir" -G Ninja "${launcher[@]}" -DCHUNKFLOW_WERROR=ON \
    -DTORCH_CUDA_ARCH_LIST="$cuda_arch_list" "${cmake_args[@]}" \
    >"$build_dir.configure.log" 2>&1 || {
    cat "$build_dir.configure.log"; echo "configure failed (log: $build_dir.configure.log)" >&2; return 1; }
  cmake --build "$build_dir" -j "${CHUNKFLOW_JOBS:-$(nproc)}" "${targets[@]}"
}

# The benchmarks' long-tail dataset (the demo's until 2026-12-04; configs/small_llama.yaml trains
# on it): 4,000 sequences up to 4,096 tokens, vocabulary 2048, written once. Prints its prefix.
bench_longtail_dataset() {
  local prefix="$repo_root/runs/bench/data/longtail"
  [ -f "$prefix.idx" ] || "$build_dir/bin/chunkflow-data" synth --output "$prefix" --sequences 4000 --scale 0.25 \
    --max-length 4096 --vocab-size 2048 --seed 1 --quiet >&2
  echo "$prefix"
}
