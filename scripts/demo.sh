#!/usr/bin/env bash
# The main job. Until training lands it benchmarks the MoE layer on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE
./build/moex bench moe-layer --device cpu --json
