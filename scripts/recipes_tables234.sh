#!/usr/bin/env bash
# docs/recipes.md tables 2-4, on the CPU, at table 1's tiny scale (1500 steps of 8 x 128 tokens):
#   2. Mixture-of-Students: 3-block students of table 1's standard MoE (4 blocks) without KD,
#      with full KD and with staged KD, each from a random init and from the teacher's blocks
#      0, 1, 3 (init_from_teacher_layers), plus those blocks alone untrained (moex prune
#      --keep-layers 0,1,3); the three from scratch again with seed 2;
#   3. expert pruning of the multitask MoE to E/2 and E/4 experts per MoE layer (E/4 also
#      calibrated on translation alone), the E/4 model fine-tuned 300 steps, and as controls
#      the unpruned MoE and the dense model trained the same 300 steps;
#   4. the multitask MoE against the dense multitask model of the same active size, two seeds.
# Every model is evaluated on its corpus's valid split (per-source perplexity, BLEU/chrF of 20
# greedy en<->es translations) and timed by moex bench decode (CPU, batch 1 and 8, 200 new
# tokens; five rounds over all of a table's models, the summary takes the median);
# bench/recipes_summary.py prints the tables' rows.
#   ./scripts/recipes_tables234.sh [2|3|4 ...]    (default: all three)
# Needs table 1's teacher (runs/recipes/standard-moe/final: ./scripts/recipes_table1.sh) and
# data/default; makes data/multitask (moex data prepare --out data/multitask --denoise) when
# missing. OMP_NUM_THREADS defaults to 1 here (the tables were measured so, on a shared machine).
set -euo pipefail
cd "$(dirname "$0")/.."
MOEX=${MOEX:-build/moex}
unset OPENBLAS_CORETYPE
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
R=runs/recipes
TEACHER=$R/standard-moe/final
tables=${*:-2 3 4}
mkdir -p $R

log_load() { echo "$(date -Is) $1 $(cut -d' ' -f1-3 /proc/loadavg)" >> $R/load.log; }

# train NAME CMD...: a fresh run of CMD, its wall seconds in R/NAME.seconds and its log beside.
train() {
  local name=$1; shift
  rm -rf "${R:?}/$name"
  log_load "start $name"
  /usr/bin/time -f "%e" -o "$R/$name.seconds" "$@" > "$R/$name.train.log" 2>&1
  log_load "end $name"
}

# evaluate NAME CORPUS: valid perplexity per source, BLEU/chrF of 20 greedy translations.
evaluate() {
  "$MOEX" eval --model "$R/$1/final" --data "$2" --split valid --max-translations 20 \
    --max-new-tokens 48 > "$R/$1.eval.json"
}

# decode CORPUS NAME...: moex bench decode on each model's shape (its config.json's moex_model;
# random weights: on the CPU the time per token does not depend on which experts are chosen),
# five rounds over all the models so that a change of machine load hits them alike.
decode() {
  local corpus=$1; shift
  for name in "$@"; do
    python3 -c 'import json, sys
m = json.load(open(sys.argv[1]))["moex_model"]
print(json.dumps({"model": m, "data": {"path": sys.argv[2], "seq_len": 128}}))' \
      "$R/$name/final/config.json" "$corpus" > "$R/$name.bench.json"
    rm -f "$R/$name.decode.jsonl"
  done
  log_load "decode $*"
  for _ in 1 2 3 4 5; do
    for name in "$@"; do
      "$MOEX" bench decode --config "$R/$name.bench.json" --batch 1,8 --tokens 200 --json \
        >> "$R/$name.decode.jsonl"
    done
  done
}

# prune NAME SRC ARGS...: moex prune of R/SRC/final into R/NAME/final.
prune() {
  local name=$1 src=$2; shift 2
  rm -rf "${R:?}/$name"; mkdir -p "$R/$name"
  "$MOEX" prune --model "$R/$src/final" --out "$R/$name/final" "$@" > "$R/$name.prune.json"
}

if [[ " $tables " == *" 2 "* ]]; then
  [[ -d $TEACHER ]] || { echo "no $TEACHER: run ./scripts/recipes_table1.sh first" >&2; exit 1; }
  students="mos-nokd mos-kd mos-staged mos-nokd-init mos-kd-init mos-staged-init"
  for name in $students; do
    train $name "$MOEX" distill --teacher $TEACHER --config configs/recipes/$name.json
    evaluate $name data/default
  done
  prune mos-dropped standard-moe --keep-layers 0,1,3
  evaluate mos-dropped data/default
  decode data/default standard-moe mos-dropped $students
  # The three students from scratch again with seed 2 (the same teacher).
  for name in mos-nokd-seed2 mos-kd-seed2 mos-staged-seed2; do
    train $name "$MOEX" distill --teacher $TEACHER --config configs/recipes/$name.json
    evaluate $name data/default
  done
  python3 bench/recipes_summary.py --markdown $R standard-moe mos-dropped $students \
    mos-nokd-seed2 mos-kd-seed2 mos-staged-seed2
fi

if [[ " $tables " == *" 3 "* || " $tables " == *" 4 "* ]]; then
  if [[ ! -f data/multitask/corpus.json ]]; then
    log_load "start data"
    /usr/bin/time -f "%e" -o $R/data-multitask.seconds \
      "$MOEX" data prepare --out data/multitask --denoise > $R/data-multitask.log 2>&1
  fi
  for name in multitask-moe multitask-dense; do
    train $name "$MOEX" train --config configs/recipes/$name.json
    evaluate $name data/multitask
  done
fi

if [[ " $tables " == *" 3 "* ]]; then
  # Kim et al.: keep the experts the (multitask) calibration tokens route to most.
  for k in 4 2; do
    prune multitask-moe-k$k multitask-moe --keep-experts $k --calibration data/multitask \
      --rank-by frequency
    evaluate multitask-moe-k$k data/multitask
  done
  # The same E/4 cut calibrated on en<->es translation alone (Kim et al. prune for one task).
  prune multitask-moe-k2-translate multitask-moe --keep-experts 2 \
    --calibration data/multitask/bible.en-es.train --rank-by frequency
  evaluate multitask-moe-k2-translate data/multitask
  # 300 more steps: the E/4 model, and as controls the unpruned MoE and the dense model.
  for pair in multitask-moe-k2-ft:multitask-moe-k2 multitask-moe-ft:multitask-moe \
    multitask-dense-ft:multitask-dense; do
    name=${pair%%:*}
    train $name "$MOEX" distill --teacher "$R/${pair#*:}/final" --config configs/recipes/$name.json
    evaluate $name data/multitask
  done
  rows="multitask-moe multitask-moe-k4 multitask-moe-k2 multitask-moe-k2-translate
    multitask-moe-k2-ft multitask-moe-ft multitask-dense multitask-dense-ft"
  decode data/multitask $rows
  python3 bench/recipes_summary.py --markdown $R $rows
fi

if [[ " $tables " == *" 4 "* ]]; then
  for name in multitask-moe-seed2 multitask-dense-seed2; do
    train $name "$MOEX" train --config configs/recipes/$name.json
    evaluate $name data/multitask
  done
  python3 bench/recipes_summary.py --markdown $R multitask-moe multitask-dense \
    multitask-moe-seed2 multitask-dense-seed2
fi
