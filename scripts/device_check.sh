#!/usr/bin/env bash
# One prepared check for a lent GPU machine (one H200; CUDA 13 + PyTorch 2.11 in python3, cmake,
# ninja; no internet, apt, MPI, yaml-cpp, protobuf, nlohmann-json, Google Benchmark or GoogleTest).
# It builds the WHOLE project (every library, chunkflow-train, tests, benchmarks) against that
# machine's own LibTorch, with the Debian 12 packages the image lacks carried in .device/prefix;
# runs the GPU tests, times our attention against torch's FlashAttention backend, runs
# the GPU training benchmark, then the CPU + MPI tests; prints short tables and writes under $OUT
# (or runs/device_check when unset) six files, as the device tool brings back at most 8:
# summary.json (mode, steps, test counts, gpu_tests_ran), attention_gpu.json, gpu_training.json,
# gpu_tests.xml, cpu_tests.xml (JUnit) and logs.tar.gz (one log per step).
#
#   scripts/device_check.sh --prepare   # here (Debian 12, root, apt reachable), before borrowing
#                                       # the machine: apt-get downloads OpenMPI, yaml-cpp,
#                                       # protobuf, nlohmann-json, Google Benchmark and the
#                                       # libraries they need, unpacks them into .device/prefix
#                                       # (nothing is installed into /), copies GoogleTest's
#                                       # sources into .device/googletest, writes .device/env.sh.
#                                       # .device is ignored by git: pass `.device` in `carry`.
#   scripts/device_check.sh             # on the GPU machine (also runs here: GPU tests skip)
#
# Modes (summary.json "mode"): "full" when .device/env.sh is there, the image's glibc and
# libstdc++ are at least as new as the carried packages need and their programs start; else, or
# when the full configure fails, "kernels_only" (-DCHUNKFLOW_KERNELS_ONLY=ON: core + kernels, their
# tests and the GPU benchmark, which need nothing beyond the image), so the GPU time is never wasted.
# A failed full build keeps going (ninja -k 0): the kernel tests and the benchmark still get built.
#
# Environment:
#   OUT                              results folder (default runs/device_check)
#   PYTHON                           python with torch (default python3)
#   CHUNKFLOW_DEVICE_MODE            auto (default), full or kernels_only
#   CHUNKFLOW_DEVICE_ARCH            CUDA architecture (default 90: H200)
#   CHUNKFLOW_DEVICE_BUILD_DIR       build folder (default build-device; the kernels-only fallback
#                                    uses <it>-kernels)
#   CHUNKFLOW_DEVICE_CMAKE_ARGS      extra cmake arguments
#   CHUNKFLOW_DEVICE_CONFIGURE_ONLY  1: stop after the configure (rehearsals on a build machine)
#   CHUNKFLOW_DEVICE_CONFIGURE_TIMEOUT / _BUILD_TIMEOUT / _GPU_TESTS_TIMEOUT / _CPU_TESTS_TIMEOUT /
#   _BENCH_TIMEOUT / _TRAINING_TIMEOUT  per-step limits in seconds (300 / 420 per build step /
#                                    180 / 240 / 240 / 300; a 2-core build machine needs far longer
#                                    than 420 s to build)
#   CHUNKFLOW_DEVICE_TRAINING_PARTS / _LENGTHS / _STEPS / _PROFILE  bench/gpu_training.sh's
#                                    --parts (default "single peer"; "off" skips it), --lengths
#                                    ("4096 32768"), --steps (3), --profile (1: on, the default)
#   CHUNKFLOW_DEVICE_ATTENTION_BENCH 0 skips the attention benchmark (default 1)
#   CHUNKFLOW_DEVICE_DEADLINE        seconds from the start after which no step runs on (default
#                                    560: under the device tool's 600 s per command, so that
#                                    summary.json is always written). Steps run in priority order,
#                                    so the deadline cuts the least important: build of the GPU
#                                    targets, GPU tests, attention benchmark, training benchmark,
#                                    build of the rest, CPU + MPI tests.
#   GTEST_SOURCE                     --prepare: GoogleTest sources (default /usr/src/googletest)
#
# Budget: the whole run is meant to stay under about 8 minutes on 16 cores (configure <1, build
# ~4-5, tests ~1, benchmark ~2); each step has its own timeout so a hang cannot eat the device time.
# Exit status: 0 when every step passed and at least one GPU test ran (not skipped); 3 when every
# step passed but no GPU test ran; 4 when they passed in a kernels-only fallback; else 1 (a failed
# full configure counts as a failed step).
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
device_dir="$repo_root/.device"
gtest_copy="$device_dir/googletest"
prefix="$device_dir/prefix"
arch_triplet=x86_64-linux-gnu
max_carry_mib=48

# ================================ --prepare (build machine) ====================================

# Debian 12 packages carried to the GPU machine. OpenMPI's own library dependencies are listed,
# except those every glibc image has (libc6, libgcc-s1, libstdc++6, zlib1g) and the fabric
# providers (libfabric1, libucx0, libibverbs1, libpsm*, libnl-3-200, libhwloc-plugins): one
# machine needs shared memory only, and the plugins that want them are dropped. libpmix2 links
# libmunge directly. libudev1 (for libhwloc) goes to a fallback folder: most images have it.
carried_packages=(
  openmpi-bin libopenmpi-dev libopenmpi3 openmpi-common
  libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 libpmix2 libmunge2 libudev1
  libyaml-cpp-dev libyaml-cpp0.7
  libprotobuf-dev libprotobuf32 libprotobuf-lite32 protobuf-compiler libprotoc32
  nlohmann-json3-dev
  libbenchmark-dev libbenchmark1debian
)
fallback_libs=(libudev.so.1)
# Libraries any glibc-based image has; a carried ELF may need these without carrying them.
base_sonames=" libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libutil.so.1 libresolv.so.2
  ld-linux-x86-64.so.2 libgcc_s.so.1 libstdc++.so.6 libz.so.1 "

die() { echo "device_check --prepare: $*" >&2; exit 1; }

prepare_gtest() {
  local source_dir="${GTEST_SOURCE:-/usr/src/googletest}"
  [[ -f "$source_dir/CMakeLists.txt" ]] ||
    die "no GoogleTest sources at $source_dir (apt install googletest, or set GTEST_SOURCE)"
  rm -rf "$gtest_copy" && mkdir -p "$device_dir" && cp -r "$source_dir" "$gtest_copy"
}

# download_debs DIR: the .deb files of carried_packages, fetched (not installed) into DIR.
download_debs() {
  local dir="$1"
  if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    die "apt-get and dpkg-deb are needed (a Debian 12 machine)"
  fi
  # _apt cannot write into root's scratch folder; the download then runs as root, which is fine.
  (cd "$dir" && apt-get download -q "${carried_packages[@]}") >"$dir/download.log" 2>&1 || {
    cat "$dir/download.log" >&2
    die "apt-get download failed (run apt-get update? the package names are Debian 12's)"; }
}

unpack_debs() {
  local deb
  rm -rf "$prefix" && mkdir -p "$prefix"
  for deb in "$1"/*.deb; do
    dpkg-deb -x "$deb" "$prefix" || die "dpkg-deb -x $deb failed"
  done
}

# Docs, man pages, locales, Fortran/Java/OpenSHMEM parts of OpenMPI and static libraries that have
# a shared twin: none is used by the build or the tests, and the carried tree must stay small.
strip_unneeded() {
  local lib="$prefix/usr/lib/$arch_triplet" a
  rm -rf "$prefix"/usr/share/{doc,doc-base,man,info,lintian,locale,bug,javascript,java}
  rm -rf "$lib/fortran"
  rm -f "$lib"/libmpi_mpifh* "$lib"/libmpi_usempi* "$lib"/libmpi_java* "$lib"/liboshmem* \
        "$lib"/openmpi/lib/libmpi_mpifh* "$lib"/openmpi/lib/libmpi_usempi* \
        "$lib"/openmpi/lib/libmpi_java* "$lib"/openmpi/lib/liboshmem* \
        "$lib"/openmpi/lib/pkgconfig/ompi-fort.pc "$lib"/pkgconfig/ompi-fort.pc
  rm -f "$prefix"/usr/bin/{mpif77,mpif90,mpifort}.openmpi "$prefix"/usr/bin/mpijavac* \
        "$prefix"/usr/bin/osh* "$prefix"/usr/bin/shmem* "$prefix"/usr/bin/oshmem_info
  while IFS= read -r a; do
    [[ -e "${a%.a}.so" ]] && rm -f "$a"
  done < <(find "$prefix" -name '*.a')
}

# Debian's postinst scripts make these names with update-alternatives, which does not run here.
link_alternatives() {
  local name
  for name in mpirun mpiexec mpicc mpicxx mpic++ mpiCC; do
    ln -sfn "$name.openmpi" "$prefix/usr/bin/$name"
  done
  # Keep the carried tree self-contained: absolute links are made relative inside the prefix.
  local link target
  while IFS= read -r link; do
    target="$(readlink "$link")"
    if [[ -e "$prefix$target" ]]; then ln -sfnr "$prefix$target" "$link"; else rm -f "$link"; fi
  done < <(find "$prefix" -type l -lname '/*')
}

move_fallback_libs() {
  local lib name
  mkdir -p "$prefix/fallback"
  for name in "${fallback_libs[@]}"; do
    for lib in "$prefix"/usr/lib/"$arch_triplet"/"$name"* "$prefix"/lib/"$arch_triplet"/"$name"*; do
      [[ -e "$lib" || -L "$lib" ]] && mv "$lib" "$prefix/fallback/"
    done
  done
  rm -rf "${prefix:?}/lib" "${prefix:?}/usr/lib/udev" "${prefix:?}/usr/lib/systemd"
}

is_elf() { [[ "$(head -c 4 "$1" 2>/dev/null | tr -d '\0')" == $'\x7fELF' ]]; }
needed_sonames() { readelf -d "$1" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'; }
# Plugins are dlopen()ed by OpenMPI / PMIx only when present; one with a missing library is dropped.
is_plugin() { [[ "$1" == */openmpi3/* || "$1" == */pmix2/lib/pmix/* || "${1##*/}" == libmca_common_* ]]; }

# Every library name the carried tree provides, space-separated (files and links).
provided_sonames() {
  # shellcheck disable=SC2086  # one word per name
  printf ' %s ' $base_sonames
  find "$prefix/usr/lib" "$prefix/fallback" \( -type f -o -type l \) -name '*.so*' \
    -not -path '*/openmpi3/*' -not -path '*/pmix2/lib/pmix/*' -printf ' %f '
}

# Drops plugins whose libraries are not carried (repeatedly: a dropped libmca_common_* strands
# more), then fails naming any other file that still needs a library nothing provides.
check_needed() {
  local changed=1 file soname have missing unmet=()
  while ((changed)); do
    changed=0 unmet=()
    have="$(provided_sonames)"
    while IFS= read -r file; do
      is_elf "$file" || continue
      missing=""
      for soname in $(needed_sonames "$file"); do
        [[ "$have" == *" $soname "* ]] || missing+=" $soname"
      done
      [[ -z "$missing" ]] && continue
      if is_plugin "$file"; then
        rm -f "$file"; changed=1
      else
        unmet+=("${file#"$prefix"/}:$missing")
      fi
    done < <(find "$prefix" -type f)
    find "$prefix" -xtype l -delete   # links to the plugins just dropped
  done
  ((${#unmet[@]} == 0)) || die "carried files need libraries nothing provides (add their package \
to carried_packages): ${unmet[*]}"
}

# The newest glibc / libstdc++ symbol versions any carried ELF needs; the run mode compares them
# with the image's before it trusts the carried tree.
write_requirements() {
  local versions glibc glibcxx
  versions="$(find "$prefix" -type f -print0 | xargs -0 readelf -V --wide 2>/dev/null |
              grep -o 'Name: GLIBC\(XX\)\?_[0-9.]*' | sort -u)"
  glibc="$(grep -o 'GLIBC_[0-9.]*' <<<"$versions" | sed 's/GLIBC_//' | sort -V | tail -n1)"
  glibcxx="$(grep -o 'GLIBCXX_[0-9.]*' <<<"$versions" | sed 's/GLIBCXX_//' | sort -V | tail -n1)"
  [[ -n "$glibc" && -n "$glibcxx" ]] || die "could not read the glibc versions the packages need"
  printf 'glibc %s\nglibcxx %s\n' "$glibc" "$glibcxx" >"$device_dir/requires"
  echo "device_check: the carried packages need glibc >= $glibc and libstdc++ GLIBCXX >= $glibcxx"
}

write_env_sh() {
  {
    echo "# Generated by scripts/device_check.sh --prepare; sourced by its run mode (bash). Puts the Debian"
    echo "# 12 packages carried in .device/prefix on the search paths, wherever the checkout lies."
    echo "_cf_fallback_sonames=\"${fallback_libs[*]}\""
    cat <<'ENV'
_cf_device="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_cf_usr="$_cf_device/prefix/usr"
_cf_lib="$_cf_usr/lib/x86_64-linux-gnu"
export PATH="$_cf_usr/bin${PATH:+:$PATH}"
# openmpi/lib and pmix2/lib are where Debian's RUNPATHs point (/usr/lib/...), absent on the image.
_cf_ld="$_cf_lib:$_cf_lib/openmpi/lib:$_cf_lib/pmix2/lib"
# fallback/ holds libraries most images have (libudev): used only where this image lacks one, so
# that the image's own (newer) copy is not shadowed for every program.
for _cf_so in $_cf_fallback_sonames; do
  if ! /sbin/ldconfig -p 2>/dev/null | grep -q "^[[:space:]]$_cf_so "; then
    _cf_ld="$_cf_ld:$_cf_device/prefix/fallback"; break
  fi
done
export LD_LIBRARY_PATH="$_cf_ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CMAKE_PREFIX_PATH="$_cf_usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# Open MPI from a moved prefix: OPAL_PREFIX moves its libdir, MCA components (openmpi/lib/openmpi3),
# help files and wrapper data (share/openmpi), and the include dir mpicxx reports. Debian built it
# with an absolute sysconfdir (/etc/openmpi: the MCA defaults that turn off ofi/ucx/openib).
export OPAL_PREFIX="$_cf_usr"
export OPAL_SYSCONFDIR="$_cf_device/prefix/etc/openmpi"
# PMIx (Open MPI's runtime) likewise, under pmix2/; Debian set its libdir and datadir absolute,
# so they are named too (else its zlib plugin and help files are looked for under /usr).
export PMIX_PREFIX="$_cf_lib/pmix2" PMIX_LIBDIR="$_cf_lib/pmix2/lib" PMIX_DATADIR="$_cf_lib/pmix2/share"
# A bare image has no ssh: Open MPI's rsh launcher then refuses to start even ranks on this host.
# Any program that exists satisfies its check; it is never run for local ranks.
# (`type -P` with -x: bash reports a non-executable file too, Open MPI wants an executable one.)
if [[ ! -x "$(type -P ssh)" && ! -x "$(type -P rsh)" ]]; then
  export OMPI_MCA_plm_rsh_agent=false
fi
unset _cf_device _cf_usr _cf_lib _cf_ld _cf_so _cf_fallback_sonames
ENV
  } >"$device_dir/env.sh"
}

# Carried size in MiB (links count as links).
carried_mib() { du -sm "$device_dir" | cut -f1; }

prepare() {
  local scratch
  scratch="$(mktemp -d /tmp/device_check_prepare.XXXXXX)" || die "mktemp failed"
  # shellcheck disable=SC2064  # expanded now on purpose: `scratch` is local
  trap "rm -rf '$scratch'" EXIT
  prepare_gtest
  download_debs "$scratch"
  unpack_debs "$scratch"
  strip_unneeded
  link_alternatives
  move_fallback_libs
  check_needed
  write_requirements
  write_env_sh
  local size; size="$(carried_mib)"
  echo "device_check: .device is ${size} MiB ($(du -sm "$prefix" | cut -f1) MiB prefix, \
$(du -sm "$gtest_copy" | cut -f1) MiB GoogleTest); carry '.device' to the GPU machine"
  ((size <= max_carry_mib)) ||
    die ".device is ${size} MiB, over the ${max_carry_mib} MiB that may travel; strip more in strip_unneeded"
}

if [[ "${1:-}" == "--prepare" ]]; then
  prepare
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "device_check: unknown argument '$1' (use --prepare, or no argument to run the check)" >&2
  exit 2
fi

# ================================ run (GPU machine) ============================================

out_dir="${OUT:-$repo_root/runs/device_check}"
# The device tool brings back at most 8 files from $OUT: the logs travel packed (logs.tar.gz).
log_dir="$out_dir/logs"
rm -rf "$log_dir" && mkdir -p "$log_dir"
rm -f "$out_dir"/{summary.json,attention_gpu.json,gpu_training.json,gpu_tests.xml,cpu_tests.xml,logs.tar.gz}
build_dir="${CHUNKFLOW_DEVICE_BUILD_DIR:-$repo_root/build-device}"
python="${PYTHON:-python3}"
started=$(date +%s)
deadline=$((started + ${CHUNKFLOW_DEVICE_DEADLINE:-560}))
mode="" mode_reason="" fallback=0
configure_only="${CHUNKFLOW_DEVICE_CONFIGURE_ONLY:-0}"
declare -A step_status step_seconds
step_order=()
preflight=()

log() { printf '[device_check %4ds] %s\n' "$(($(date +%s) - started))" "$*"; }

# step_limit WANT [RESERVE]: WANT seconds, cut to what is left before the deadline less RESERVE.
step_limit() {
  local want="$1" left=$((deadline - $(date +%s) - ${2:-0}))
  ((left < want)) && want=$left
  echo "$want"
}

# run_step NAME TIMEOUT_S COMMAND...: output to logs/NAME.log (tail shown on failure). A step
# with under 10 s left before the deadline is not started (status "skipped").
run_step() {
  local name="$1" limit="$2"; shift 2
  step_order+=("$name")
  if ((limit < 10)); then
    step_status[$name]=skipped step_seconds[$name]=0
    log "$name SKIPPED (the ${CHUNKFLOW_DEVICE_DEADLINE:-560} s deadline is near)"
    return 1
  fi
  log "$name (limit ${limit}s) ..."
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$log_dir/$name.log" 2>&1
  local status=$?
  step_status[$name]=$status step_seconds[$name]=$(($(date +%s) - t0))
  if [[ $status -ne 0 ]]; then
    log "$name FAILED (exit $status; $([[ $status -eq 124 ]] && echo "timed out after ${limit}s; ")log: logs/$name.log)"
    tail -n 40 "$log_dir/$name.log"
  else
    log "$name ok (${step_seconds[$name]}s)"
  fi
  return $status
}

# summary.json (json module: the house rule for JSON). Test counts come from ctest's per-test lines
# ("1/9 Test #1: Name ....   Passed"), which a run cut short by its timeout still has.
write_summary() {
  local steps=() name
  for name in "${step_order[@]}"; do steps+=("$name=${step_status[$name]}=${step_seconds[$name]}"); done
  local py="$python"; command -v "$py" >/dev/null || py=python3
  SUMMARY_MODE="$mode" SUMMARY_MODE_REASON="$mode_reason" SUMMARY_FALLBACK="$fallback" \
  SUMMARY_STARTED="$started" \
  SUMMARY_COMMIT="$(git -C "$repo_root" rev-parse HEAD 2>/dev/null || echo unknown)" \
  SUMMARY_GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)" \
  SUMMARY_PREFLIGHT="$(printf '%s\n' "${preflight[@]}")" \
  "$py" - "$out_dir" "$log_dir" "${steps[@]}" <<'PY' || echo "device_check: could not write summary.json" >&2
import json, os, re, socket, sys, time
from datetime import datetime, timezone

out_dir, log_dir, step_args = sys.argv[1], sys.argv[2], sys.argv[3:]
steps, step_seconds = {}, {}
for arg in step_args:
    name, status, seconds = arg.split("=")
    steps[name] = int(status) if status.lstrip("-").isdigit() else status
    step_seconds[name] = int(seconds or 0)

# "3/9 Test #6: Name ....***Not Run   0.00 sec": status is what stands between the dots and the time.
line = re.compile(r"^\s*\d+/\d+\s+Test\s+#\d+:\s+(\S+?)\s*\.*\s*(?:\*\*\*)?"
                  r"(Passed|Skipped|Failed|Not Run.*?|Timeout|Exception.*?|[A-Za-z_ ]+?)\s+[\d.]+\s+sec\s*$")

def counts(log_name):
    path = os.path.join(log_dir, log_name)
    if not os.path.exists(path):
        return None
    result = {"total": 0, "passed": 0, "failed": 0, "skipped": 0, "failed_names": []}
    with open(path, errors="replace") as log:
        for text in log:
            match = line.match(text)
            if not match:
                continue
            name, status = match.groups()
            result["total"] += 1
            if status == "Passed":
                result["passed"] += 1
            elif status == "Skipped" or "(Disabled)" in status:
                result["skipped"] += 1
            else:
                result["failed"] += 1
                result["failed_names"].append(name)
    # ctest's closing line, when the run got that far: "N% tests passed, F tests failed out of T".
    with open(path, errors="replace") as log:
        closing = re.findall(r"tests passed, (\d+) tests? failed out of (\d+)", log.read())
    result["planned"] = int(closing[-1][1]) if closing else None
    result["failed_names"] = result["failed_names"][:50]
    return result

tests = {"gpu": counts("gpu_tests.log"), "cpu": counts("cpu_tests.log")}
gpu = tests["gpu"]
gpu_tests_ran = bool(gpu and gpu["passed"] + gpu["failed"] > 0)
all_ok = bool(steps) and all(status == 0 for status in steps.values())
preflight = dict(item.split("=", 1) for item in os.environ["SUMMARY_PREFLIGHT"].splitlines() if "=" in item)
summary = {
    "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "host": socket.gethostname(),
    "commit": os.environ["SUMMARY_COMMIT"],
    "seconds": int(time.time()) - int(os.environ["SUMMARY_STARTED"]),
    "gpu": os.environ["SUMMARY_GPU"],
    "mode": os.environ["SUMMARY_MODE"] or None,
    "mode_reason": os.environ["SUMMARY_MODE_REASON"],
    "fell_back": os.environ["SUMMARY_FALLBACK"] == "1",
    "preflight": preflight,
    "steps": steps,
    "step_seconds": step_seconds,
    "tests": tests,
    "gpu_tests_ran": gpu_tests_ran,
    "ok": all_ok and gpu_tests_ran and os.environ["SUMMARY_FALLBACK"] != "1",
}
with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
for kind, c in tests.items():
    if c:
        print(f"device_check: {kind} tests: {c['passed']} passed, {c['failed']} failed, "
              f"{c['skipped']} skipped (of {c['total']} run{'' if c['planned'] is None else ', %d planned' % c['planned']})")
if not gpu_tests_ran:
    print("device_check: NO GPU TEST RAN (none built, or every one skipped): the GPU was not checked")
print(f"device_check: mode {summary['mode']}; summary in {os.path.join(out_dir, 'summary.json')}")
PY
}

# ---- mode choice -------------------------------------------------------------------------------

# version_ge A B: A >= B, as dotted versions.
version_ge() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$2" ]]; }

image_glibc() { getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}'; }
image_glibcxx() {
  local lib
  lib="$(/sbin/ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/ {print $NF; exit}')"
  [[ -f "$lib" ]] || lib="$(g++ -print-file-name=libstdc++.so.6 2>/dev/null)"
  [[ -f "$lib" ]] || return 0
  grep -ao 'GLIBCXX_3\.4\.[0-9]*' "$lib" | sed 's/GLIBCXX_//' | sort -uV | tail -n1
}

# check_carried: sets `problem` to why the carried packages cannot be used here (empty when they can).
check_carried() {
  problem=""
  [[ -f "$device_dir/env.sh" && -f "$device_dir/requires" ]] || {
    problem="no .device/env.sh (run scripts/device_check.sh --prepare and carry .device)"; return; }
  local need_glibc need_glibcxx have_glibc have_glibcxx
  need_glibc="$(awk '$1 == "glibc" {print $2}' "$device_dir/requires")"
  need_glibcxx="$(awk '$1 == "glibcxx" {print $2}' "$device_dir/requires")"
  have_glibc="$(image_glibc)" have_glibcxx="$(image_glibcxx)"
  preflight+=("glibc_image=$have_glibc" "glibc_needed=$need_glibc"
              "glibcxx_image=$have_glibcxx" "glibcxx_needed=$need_glibcxx")
  log "glibc: image ${have_glibc:-?}, carried packages need $need_glibc; GLIBCXX: image ${have_glibcxx:-?}, need $need_glibcxx"
  if [[ -n "$have_glibc" ]] && ! version_ge "$have_glibc" "$need_glibc"; then
    problem="image glibc $have_glibc is older than the $need_glibc the carried Debian 12 packages need"
    return
  fi
  if [[ -n "$have_glibcxx" ]] && ! version_ge "$have_glibcxx" "$need_glibcxx"; then
    problem="image libstdc++ (GLIBCXX $have_glibcxx) is older than the $need_glibcxx the carried packages need"
    return
  fi
  # The loader has the last word: the carried programs must start (a missing library or symbol
  # version shows here in a second rather than after minutes of build).
  local probe
  # shellcheck source=/dev/null
  probe="$(source "$device_dir/env.sh" && protoc --version 2>&1 && ompi_info --version 2>&1 | sed -n 1p)" || {
    problem="carried programs do not start: $(tr '\n' ' ' <<<"$probe")"; return; }
  preflight+=("carried_tools=$(tr '\n' ';' <<<"$probe")")
}

choose_mode() {
  local wanted="${CHUNKFLOW_DEVICE_MODE:-auto}" problem
  case "$wanted" in
    kernels_only) mode=kernels_only mode_reason="CHUNKFLOW_DEVICE_MODE=kernels_only"; return ;;
    full|auto) ;;
    *) log "CHUNKFLOW_DEVICE_MODE must be auto, full or kernels_only (got '$wanted')"; exit 2 ;;
  esac
  check_carried
  if [[ -n "$problem" && "$wanted" == auto ]]; then
    mode=kernels_only mode_reason="$problem" fallback=1
    log "FALLING BACK to the kernels-only build: $problem"
    return
  fi
  if [[ -n "$problem" ]]; then
    [[ -f "$device_dir/env.sh" ]] || { log "CHUNKFLOW_DEVICE_MODE=full: $problem"; exit 2; }
    log "CHUNKFLOW_DEVICE_MODE=full despite: $problem"
  fi
  mode=full
  # shellcheck source=/dev/null
  source "$device_dir/env.sh"
  # Multi-rank tests run as root on that machine, more ranks than some hosts have cores.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
}

# ---- configure / build / run -------------------------------------------------------------------

common_cmake_args() {
  local arch="${CHUNKFLOW_DEVICE_ARCH:-90}" args=()
  command -v ninja >/dev/null && args+=(-G Ninja)
  command -v ccache >/dev/null && args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  [[ -f "$gtest_copy/CMakeLists.txt" ]] && args+=(-DCHUNKFLOW_GTEST_SOURCE_DIR="$gtest_copy")
  # The GPU machines are H200s (sm_90); one architecture halves the CUDA compile time.
  args+=(-DCMAKE_BUILD_TYPE=Release -DCHUNKFLOW_BUILD_BENCH=ON -DCHUNKFLOW_WERROR=OFF
         -DCHUNKFLOW_PYTHON="$(command -v "$python")"
         -DCMAKE_CUDA_ARCHITECTURES="$arch" -DTORCH_CUDA_ARCH_LIST="${arch:0:1}.${arch:1}")
  printf '%s\n' "${args[@]}"
}

configure() {
  local name="$1" dir="$2"; shift 2
  local args; mapfile -t args < <(common_cmake_args)
  # shellcheck disable=SC2086  # CHUNKFLOW_DEVICE_CMAKE_ARGS is a word list by design
  run_step "$name" "$(step_limit "${CHUNKFLOW_DEVICE_CONFIGURE_TIMEOUT:-300}")" \
    cmake -S "$repo_root" -B "$dir" "${args[@]}" "$@" ${CHUNKFLOW_DEVICE_CMAKE_ARGS:-}
}

# Full project with the carried prefix first (then the machine's torch); kernels-only if that fails.
configure_any() {
  if [[ "$mode" == full ]]; then
    configure configure_full "$build_dir" -DCHUNKFLOW_KERNELS_ONLY=OFF \
      -DCMAKE_PREFIX_PATH="$prefix/usr;$torch_prefix" && return 0
    mode=kernels_only mode_reason="full configure failed (logs/configure_full.log)" fallback=1
    log "FALLING BACK to the kernels-only build: the full configure failed (see logs/configure_full.log)"
    grep -E "CMake Error|Could NOT find|not found" "$log_dir/configure_full.log" | head -n 10
  fi
  build_dir="$build_dir-kernels"
  configure configure_kernels_only "$build_dir" -DCHUNKFLOW_KERNELS_ONLY=ON \
    -DCMAKE_PREFIX_PATH="$torch_prefix"
}

build() {
  local name="$1" limit="$2"; shift 2
  # Keep going past a failed target: the kernel tests and the GPU benchmark need none of the rest.
  local keep_going=(-- -k 0)
  grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja' "$build_dir/CMakeCache.txt" || keep_going=(-- -k)
  run_step "$name" "$(step_limit "$limit")" cmake --build "$build_dir" -j "$(nproc)" "$@" "${keep_going[@]}"
}

run_gpu_tests() {
  # One at a time: they share the one GPU. CHUNKFLOW_REQUIRE_GPU=1: a GPU test that finds no CUDA
  # kernels or no GPU here fails instead of skipping.
  CHUNKFLOW_REQUIRE_GPU=1 \
  run_step gpu_tests "$(step_limit "${CHUNKFLOW_DEVICE_GPU_TESTS_TIMEOUT:-180}")" \
    ctest --test-dir "$build_dir" -L gpu --output-on-failure --timeout 120 \
      --output-junit "$out_dir/gpu_tests.xml"
}

run_cpu_tests() {
  # In parallel; one OpenMP thread per test as scripts/test.sh does.
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
  run_step cpu_tests "$(step_limit "${CHUNKFLOW_DEVICE_CPU_TESTS_TIMEOUT:-240}")" \
    ctest --test-dir "$build_dir" -LE gpu -j "$(nproc)" --output-on-failure --timeout 120 \
      --output-junit "$out_dir/cpu_tests.xml"
}

run_bench() {
  export CUDA_MODULE_LOADING=LAZY
  [[ "${CHUNKFLOW_DEVICE_ATTENTION_BENCH:-1}" == 1 ]] || return 0
  run_step bench "$(step_limit "${CHUNKFLOW_DEVICE_BENCH_TIMEOUT:-240}")" \
    "$build_dir/bin/attention_gpu_bench" --json "$out_dir/attention_gpu.json"
  cat "$log_dir/bench.log"
}

# bench/gpu_training.sh (full mode only; CHUNKFLOW_DEVICE_TRAINING_PARTS=off skips it). Its run
# folders stay in the build folder (no checkpoints: the script turns them off); the table and
# gpu_training.json come back, the per-run logs travel in logs.tar.gz.
run_training_bench() {
  local parts="${CHUNKFLOW_DEVICE_TRAINING_PARTS:-single peer}"
  [[ "$mode" == full && "$parts" != off ]] || return 0
  local work="$build_dir/gpu_training"
  local profile=()
  [[ "${CHUNKFLOW_DEVICE_TRAINING_PROFILE:-1}" == 1 ]] && profile=(--profile)
  CHUNKFLOW_BIN="$build_dir/bin" PYTHON="$python" \
  run_step training_bench "$(step_limit "${CHUNKFLOW_DEVICE_TRAINING_TIMEOUT:-300}")" \
    bash "$repo_root/bench/gpu_training.sh" --parts "$parts" --out "$work" "${profile[@]}" \
      --steps "${CHUNKFLOW_DEVICE_TRAINING_STEPS:-3}" --lengths "${CHUNKFLOW_DEVICE_TRAINING_LENGTHS:-4096 32768}"
  cat "$log_dir/training_bench.log"
  [[ -f "$work/gpu_training.json" ]] && cp "$work/gpu_training.json" "$out_dir/"
  mkdir -p "$log_dir/gpu_training" && cp "$work"/results/*.{log,txt} "$work"/results/*.json "$log_dir/gpu_training/" 2>/dev/null
  return 0
}

pack_logs() {
  tar -czf "$out_dir/logs.tar.gz" -C "$out_dir" logs && rm -rf "$log_dir"
}

finish() {
  write_summary
  pack_logs
  local name
  for name in "${step_order[@]}"; do [[ "${step_status[$name]}" == 0 ]] || return 1; done
  [[ -n "$mode" ]] || return 1
  [[ "$configure_only" == 1 ]] && return "$((fallback ? 4 : 0))"
  grep -q '"gpu_tests_ran": true' "$out_dir/summary.json" 2>/dev/null || return 3
  return "$((fallback ? 4 : 0))"
}
trap 'finish; exit $?' EXIT

nvidia-smi >"$log_dir/nvidia-smi.txt" 2>&1 || log "nvidia-smi not available (no GPU here: GPU tests will skip)"
torch_prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')" || {
  log "$python cannot import torch"; exit 1; }
log "$("$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "devices", torch.cuda.device_count())' 2>&1)"

choose_mode
log "mode: $mode"
if [[ "$mode" == full ]]; then
  # A two-rank start of the carried Open MPI: a clear diagnosis when the MPI tests fail later.
  run_step mpi_smoke "$(step_limit 30)" mpirun -np 2 hostname
fi
# The step's own status, not the one of a fallback taken after it, decides the exit status: a
# failed full configure followed by a good kernels-only one still ends in 1, so it gets noticed.
configure_any || exit 1
if [[ "$configure_only" == 1 ]]; then
  log "CHUNKFLOW_DEVICE_CONFIGURE_ONLY=1: stopping after the configure ($build_dir)"
  exit 0
fi
# Priority order, as the deadline may cut the tail: GPU tests, attention benchmark, training
# benchmark, then the rest of the project and the CPU + MPI tests.
# chunkflow_gpu_targets (CMakeLists.txt): every gpu-labelled test and the benchmarks' programs, built
# first so that a slow or broken rest of the build cannot cost the GPU steps.
build build_gpu_targets "${CHUNKFLOW_DEVICE_BUILD_TIMEOUT:-420}" --target chunkflow_gpu_targets
run_gpu_tests
run_bench
run_training_bench
build build "${CHUNKFLOW_DEVICE_BUILD_TIMEOUT:-420}"
run_cpu_tests
log "done; results in $out_dir"
