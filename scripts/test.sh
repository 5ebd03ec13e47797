#!/usr/bin/env bash
# Builds everything (the CUDA code too, when nvcc exists) and runs the whole CPU test suite, then
# builds the CPU code again with AddressSanitizer + UndefinedBehaviorSanitizer (build-sanitize/)
# and runs the same suite under it. MOEX_SKIP_SANITIZE=1 leaves the second pass out.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
ctest --test-dir build --output-on-failure --timeout 600 -j "$(nproc)"

if [ -z "${MOEX_SKIP_SANITIZE:-}" ]; then
  # -O0: the sanitizers see every access as written, and the build takes 40 % less time than at
  # -O1 (the tests run ~20 % longer); the optimised build above is the one users run.
  cmake -S . -B build-sanitize -G Ninja -DMOEX_CUDA=OFF -DMOEX_SANITIZE=address,undefined \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O0 -DNDEBUG" >/dev/null
  cmake --build build-sanitize -j "$(nproc)"
  # Leak checks on; the mpirun jobs turn them off themselves (Open MPI never frees its own
  # allocations: the dist tests' ENVIRONMENT in CMakeLists.txt).
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-sanitize --output-on-failure --timeout 900 -j "$(nproc)"
fi
