#!/usr/bin/env bash
# Runs every test: bootstrap if needed, configure, build (warnings are errors), ctest.
#   scripts/test.sh [ctest args...]      e.g. scripts/test.sh -L cpu -R ChunkPlan
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$repo_root/scripts/bootstrap.sh"
mkdir -p "$build_dir"
configure_and_build -DCHUNKFLOW_WERROR=ON
# Multi-rank tests start more ranks than these 2-core machines have, as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# ctest runs two tests at once on these 2-core machines; one OpenMP/BLAS thread per test avoids
# the oversubscription that slows spinning OpenMP workers down many times over.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cd "$build_dir"
ctest --output-on-failure -j "${CHUNKFLOW_TEST_JOBS:-2}" "$@"
