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

# configure_and_build [extra cmake args...]
configure_and_build() {
  local launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  cmake -S "$repo_root" -B "$build_dir" -G Ninja "${launcher[@]}" "$@" >"$build_dir.configure.log" 2>&1 || {
    cat "$build_dir.configure.log"; echo "configure failed (log: $build_dir.configure.log)" >&2; return 1; }
  cmake --build "$build_dir" -j "${CHUNKFLOW_JOBS:-$(nproc)}"
}
