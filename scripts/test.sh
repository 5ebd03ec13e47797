#!/usr/bin/env bash
# Builds everything (the CUDA code too, when nvcc exists) and runs the whole CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
ctest --test-dir build --output-on-failure --timeout 600 -j "$(nproc)"
