# Sourced by the scripts: shared locations and the ccache set-up. Caches live outside the
# checkout so that fresh clones (CI) reuse them.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${CHUNKFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chunkflow}"
export CCACHE_DIR="${CCACHE_DIR:-$cache_root/ccache}"
# Relative paths in the cache key, so a clone in another folder hits the same entries.
export CCACHE_BASEDIR="$repo_root"
export CCACHE_NOHASHDIR=true
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-8G}"
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
  cmake -S "$repo_root" -B "$build_dir" -G Ninja "${launcher[@]}" -DCHUNKFLOW_WERROR=ON "${cmake_args[@]}" \
    >"$build_dir.configure.log" 2>&1 || {
    cat "$build_dir.configure.log"; echo "configure failed (log: $build_dir.configure.log)" >&2; return 1; }
  cmake --build "$build_dir" -j "${CHUNKFLOW_JOBS:-$(nproc)}" "${targets[@]}"
}
