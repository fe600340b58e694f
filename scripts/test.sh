#!/usr/bin/env bash
# Runs every test: bootstrap if needed, configure, build (warnings are errors), ctest.
#   scripts/test.sh [ctest args...]      e.g. scripts/test.sh -L cpu -R ChunkPlan
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$repo_root/scripts/bootstrap.sh"
mkdir -p "$build_dir"
# CHUNKFLOW_REQUIRE_CUDA=1 (CI sets it: its machines have nvcc): a build without the CUDA kernels
# is an error, not a quiet CPU-only build.
cuda_args=()
[ "${CHUNKFLOW_REQUIRE_CUDA:-0}" = 1 ] && cuda_args=(-DCHUNKFLOW_REQUIRE_CUDA=ON)
configure_and_build "${cuda_args[@]}"
grep -m1 "^-- ChunkFlow: CUDA=" "$build_dir.configure.log" | sed 's/^-- /test.sh: built /' || true
# Multi-rank tests start more ranks than these 2-core machines have, as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# ctest runs two tests at once on these 2-core machines; one OpenMP/BLAS thread per test avoids
# the oversubscription that slows spinning OpenMP workers down many times over.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cd "$build_dir"
ctest --output-on-failure -j "${CHUNKFLOW_TEST_JOBS:-2}" "$@"
