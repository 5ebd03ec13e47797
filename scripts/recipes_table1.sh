#!/usr/bin/env bash
# docs/recipes.md table 1: trains the four tiny models of configs/recipes/ (standard MoE, PR-MoE,
# dense of the same active size, standard MoE balanced by the bias rule) on the default corpus on
# the CPU, evaluates each on the valid split (per-source perplexity, BLEU/chrF of greedy en<->es),
# and prints one summary line per model (bench/recipes_summary.py).
#   ./scripts/recipes_table1.sh            (needs data/default: moex data prepare --out data/default)
set -euo pipefail
cd "$(dirname "$0")/.."
MOEX=${MOEX:-build/moex}
unset OPENBLAS_CORETYPE
for name in standard-moe pr-moe dense standard-moe-bias; do
  out=runs/recipes/$name
  rm -rf "$out"; mkdir -p runs/recipes
  /usr/bin/time -f "%e" -o "runs/recipes/$name.seconds" "$MOEX" train --config "configs/recipes/$name.json" \
    > "runs/recipes/$name.train.log" 2>&1
  "$MOEX" eval --model "$out/final" --data data/default --split valid --max-translations 20 \
    --max-new-tokens 48 > "runs/recipes/$name.eval.json"
done
python3 bench/recipes_summary.py runs/recipes standard-moe pr-moe dense standard-moe-bias
