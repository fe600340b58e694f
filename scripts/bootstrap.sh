#!/usr/bin/env bash
# Installs everything ChunkFlow needs on a fresh Debian 12 machine; idempotent and quiet when all
# is present. Debian packages via apt, LibTorch (PyPI torch==2.11.0) in a virtualenv kept outside
# the checkout so that fresh clones (CI) reuse it.
#
#   CHUNKFLOW_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/chunkflow)
#   CHUNKFLOW_VENV    virtualenv  (default: $CHUNKFLOW_CACHE/venv)
#
# Prints the virtualenv path as its last line when asked with --print-venv.
set -euo pipefail

cache_root="${CHUNKFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chunkflow}"
venv="${CHUNKFLOW_VENV:-$cache_root/venv}"

# Pinned Python packages: torch provides LibTorch for the C++ build; the rest serve the
# Hugging Face interop tests and tools.
python_pins=(torch==2.11.0 numpy==2.3.5 safetensors==0.7.0 transformers==4.57.6 pyyaml==6.0.3
             tensorboard==2.21.0)

debian_packages=(
  build-essential cmake ninja-build ccache pkg-config git
  openmpi-bin libopenmpi-dev
  libyaml-cpp-dev libprotobuf-dev protobuf-compiler nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # scripts/fuzz.sh: clang with libFuzzer and the sanitizer runtimes, and clang's OpenMP runtime.
  clang libclang-rt-14-dev libomp-dev
  python3 python3-venv python3-pip
  # bench/layout_memory.sh: peak RSS per rank (GNU time's %M).
  time
  # SLURM on one machine for the launch test (daemons are started by the test, not by apt);
  # srun --mpi=pmix loads libpmix.so from libpmix-dev.
  slurm-wlm munge libpmix-dev
)

log() { printf '[bootstrap] %s\n' "$*" >&2; }

missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o=Dpkg::Use-Pty=0 \
    "${missing[@]}" >/dev/null
fi

# Debian's interpreter is stable across machines of this kind; any python3 with venv works.
base_python=/usr/bin/python3
[ -x "$base_python" ] || base_python="$(command -v python3)"

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtualenv $venv"
  mkdir -p "$(dirname "$venv")"
  "$base_python" -m venv "$venv"
fi

pins_ok() {
  "$venv/bin/python" - "$@" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name).split("+")[0] != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}

if ! pins_ok "${python_pins[@]}"; then
  log "installing Python packages into $venv: ${python_pins[*]} (torch is several GB; first time only)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${python_pins[@]}"
  pins_ok "${python_pins[@]}" || { log "error: pinned Python packages did not install"; exit 1; }
fi

if [ "${1:-}" = "--print-venv" ]; then
  echo "$venv"
fi
