#!/usr/bin/env bash
# The main job on CPU: build the default corpus (Debian handbook + Bibles, 6 languages), train the
# tiny MoE config for a few minutes, then generate from the final checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE  # this workplace's Haswell override halves OpenBLAS speed on AVX-512 CPUs
MOEX=${MOEX:-./build/moex}

if [ ! -f data/default/corpus.json ]; then
  $MOEX data prepare --out data/default
fi
$MOEX train --config configs/tiny-moe.json --overwrite  # a re-run of the demo starts over
echo
for prompt in "The Debian system" "In the beginning God"; do
  $MOEX generate --model runs/tiny/final --prompt "$prompt" --max-new-tokens 40 --temperature 0.7 --top-k 40 --seed 1
done
