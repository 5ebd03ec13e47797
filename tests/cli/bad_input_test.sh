#!/usr/bin/env bash
# Bad input to the moex binary: each case must exit with status 1 and print exactly one line,
# "moex <command>: error: ...", that names the file and field (checked by a fragment).
set -uo pipefail
MOEX="$1"
TMP="$(mktemp -d)"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
trap 'rm -rf "$TMP"' EXIT
failures=0

expect_error() {  # expect_error "<fragment>" moex-args...
  local fragment="$1"; shift
  local err rc
  # EXPECT_TIMEOUT (seconds) ends a case that would otherwise never end (a server that started
  # where it should have refused): it then fails, with timeout's status 124, instead of hanging.
  err="$(timeout -k 10 "${EXPECT_TIMEOUT:-0}" "$MOEX" "$@" 2>&1 >/dev/null)"; rc=$?
  local lines; lines="$(printf '%s\n' "$err" | grep -c .)"
  if [ "$rc" -ne 1 ] || [ "$lines" -ne 1 ] || [[ "$err" != *"error:"* ]] || [[ "$err" != *"$fragment"* ]]; then
    echo "FAIL: moex $* -> rc=$rc, stderr:"; printf '%s\n' "$err" | sed 's/^/    /'
    echo "    (wanted rc=1, one line containing '$fragment')"
    failures=$((failures + 1))
  else
    echo "ok: moex $1 ... -> $err"
  fi
}

# configs
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8, "hidden_sise": 3}, "data": {"path": "x"}}' > "$TMP/typo.json"
expect_error "typo.json: unknown field 'model.hidden_sise'" train --config "$TMP/typo.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8, "moe": {"num_experts": 2}}, "data": {"path": "x", "seq_len": 8}, "optimizer": {"bias_update_rate": 0.01}}' > "$TMP/nobias.json"
expect_error "nobias.json: optimizer.bias_update_rate needs MoE layers with a selection bias" train --config "$TMP/nobias.json"
# learning-rate schedules: a decay style by name, its own options only with it
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8}, "data": {"path": "x", "seq_len": 8}, "schedule": {"decay": "cosine_annealing"}}' > "$TMP/decay.json"
expect_error "decay.json: schedule.decay is 'cosine_annealing'; expected one of: cosine, linear" train --config "$TMP/decay.json"
sed 's/"decay": "cosine_annealing"/"decay": "linear", "decay_fraction": 0.1/' "$TMP/decay.json" > "$TMP/wsd.json"
expect_error 'wsd.json: schedule.decay_fraction is for "decay": "wsd" only' train --config "$TMP/wsd.json"
# parallel layouts: checked at start-up, before any data is read (docs/parallelism.md)
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8, "moe": {"num_experts": 2}}, "data": {"path": "x", "seq_len": 8}, "parallel": {"ep": 2}}' > "$TMP/ep.json"
expect_error "ep.json: parallel.ep: 2 must be >= 1 and divide dp = ranks / tp = 1 / 1 = 1" train --config "$TMP/ep.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8, "moe": {"num_experts": 2}}, "data": {"path": "x", "seq_len": 8}, "parallel": {"ep": 2, "cac": true}}' > "$TMP/cac.json"
expect_error "cac.json: parallel.cac needs training.activation_checkpointing" train --config "$TMP/cac.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8}, "data": {"path": "x", "seq_len": 8}, "parallel": {"offload": true}}' > "$TMP/offload.json"
expect_error "offload.json: parallel.offload: ZeRO-Offload moves GPU state to the host; it needs training.device \"cuda\"" train --config "$TMP/offload.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8}, "data": {"path": "x", "seq_len": 8}, "parallel": {"zero_stage": 3}}' > "$TMP/zero.json"
expect_error "zero.json: parallel.zero_stage must be 0, 1 or 2 (stage 3 is not built)" train --config "$TMP/zero.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8}, "data": {"path": "x", "seq_len": 8}, "parallel": {"zero_stage": 1, "shard_master": true}}' > "$TMP/master.json"
expect_error "master.json: parallel.shard_master: a CPU model's fp32 weights are what it computes with; sharding a master needs training.device \"cuda\"" train --config "$TMP/master.json"
printf '{"model": ' > "$TMP/broken.json"
expect_error "broken.json: invalid JSON" train --config "$TMP/broken.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8}, "data": {"path": "x", "seq_len": 4}, "training": {"steps": 99999999999999999999}}' > "$TMP/bigint.json"
expect_error "bigint.json: training.steps is 1e+20, out of the 64-bit integer range" train --config "$TMP/bigint.json"
expect_error "unknown flag --stepz" train --stepz 3
expect_error "flag --stop-after: 99999999999999999999 is out of the 64-bit integer range" train --config "$TMP/typo.json" --stop-after 99999999999999999999
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8, "num_layers": 2}, "data": {"path": "x"}}' > "$TMP/twice.json"
expect_error 'twice.json: invalid JSON: the key "model.num_layers" appears twice' train --config "$TMP/twice.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8, "bos_id": 10}, "data": {"path": "x"}}' > "$TMP/bos.json"
expect_error "bos.json: model.bos_id is 10, outside the vocabulary of 10" train --config "$TMP/bos.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8, "moe": {"num_experts": 2, "capacity_factor": 0}}, "data": {"path": "x"}}' > "$TMP/cf.json"
expect_error "cf.json: model.moe.capacity_factor must be > 0" train --config "$TMP/cf.json"
printf '{"distill": {}}' > "$TMP/kd.json"
expect_error "kd.json: the 'distill' section makes this a distillation config: run it with moex distill" train --config "$TMP/kd.json"
expect_error "/dev/zero: larger than 64 MiB" train --config /dev/zero
mkdir -p "$TMP/a_dir"
expect_error "a_dir: is a directory, not a file" train --config "$TMP/a_dir"
# a known field set to null is unset (here: required), not unknown
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": null, "num_heads": 2, "max_seq_len": 8}, "data": {"path": "x"}}' > "$TMP/null.json"
expect_error "null.json: model.num_layers" train --config "$TMP/null.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 10, "num_layers": 1, "num_heads": 4, "max_seq_len": 8}, "data": {"path": "x"}}' > "$TMP/heads.json"
expect_error "heads.json: model.hidden_size (10) is not a multiple of model.num_heads (4); set model.head_dim" train --config "$TMP/heads.json"
expect_error "--stop-after must be >= 1 (got 0)" train --config "$TMP/heads.json" --stop-after 0
# data prepare: what is at --out is not replaced unless it is a corpus; ranges checked up front
echo precious > "$TMP/notes.txt"
expect_error "--out $TMP/notes.txt exists and is not a directory; it is not replaced" data prepare --out "$TMP/notes.txt"
mkdir -p "$TMP/proj/src" && echo code > "$TMP/proj/src/code.c"
expect_error "--out $TMP/proj is a directory that holds no corpus (no corpus.json); it is not replaced" data prepare --out "$TMP/proj"
[ "$(cat "$TMP/notes.txt")" = precious ] && [ -f "$TMP/proj/src/code.c" ] ||
  { echo "FAIL: data prepare touched what was at --out"; failures=$((failures + 1)); }
expect_error "--valid-fraction must be in [0, 1), got 1.5" data prepare --out "$TMP/c" --valid-fraction 1.5
# data prepare --input (your own text): the tokenizer is required, the default corpus' options
# and a line that is no JSON object are refused by name, and nothing is left at --out
printf '{"text": "a"}\n' > "$TMP/own.jsonl"
expect_error "give one of --tokenizer FILE or --model DIR with --input" data prepare --input "$TMP/own.jsonl" --out "$TMP/own"
expect_error "--vocab-size is an option of the default corpus, not of --input" data prepare --input "$TMP/own.jsonl" --tokenizer "$TMP/x" --vocab-size 100 --out "$TMP/own"
expect_error "--tokenizer needs --input (your own text)" data prepare --tokenizer "$TMP/x" --out "$TMP/own"
printf '{"text": "a"}\n["b"]\n' > "$TMP/own2.jsonl"
expect_error "--chat needs --input (your own text)" data prepare --chat --out "$TMP/own"
expect_error "give one of --chat and --prompt-completion" data prepare --chat --prompt-completion --input "$TMP/own.jsonl" --tokenizer "$ROOT/tests/fixtures/tokenizers/llama2/tokenizer.json" --out "$TMP/own"
# (The preparation has started, so its progress lines come first: the error is the last line.)
err="$("$MOEX" data prepare --input "$TMP/own2.jsonl" --tokenizer "$ROOT/tests/fixtures/tokenizers/llama2/tokenizer.json" --out "$TMP/own" 2>&1 >/dev/null)"; rc=$?
if [ "$rc" -ne 1 ] || [[ "$(printf '%s\n' "$err" | tail -n 1)" != *"own2.jsonl:2: not a JSON object"* ]]; then
  echo "FAIL: data prepare --input of a bad line -> rc=$rc, stderr:"; printf '%s\n' "$err" | sed 's/^/    /'
  failures=$((failures + 1))
fi
[ ! -e "$TMP/own" ] && [ ! -e "$TMP/own.tmp" ] || { echo "FAIL: data prepare --input left $TMP/own behind"; failures=$((failures + 1)); }
expect_error "--threads must be in [1, 4096], got 0" data prepare --out "$TMP/c" --threads 0
expect_error "--max-source-mb must be in (0, 1048576], got 0" data prepare --out "$TMP/c" --max-source-mb 0

# a tokenizer.model that is not one: the reason without the library's source location
printf '\xff\xff\xff\xff\xff\xff' > "$TMP/bad.model"
expect_error "bad.model: not a SentencePiece model (and not a tokenizer.json): its bytes do not parse as one" tokenize --tokenizer "$TMP/bad.model" --text hi

# model directories
mkdir -p "$TMP/arch"
printf '{"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}' > "$TMP/arch/config.json"
expect_error "config.json" eval --model "$TMP/arch" --input-ids "$TMP/none.safetensors"
expect_error "config.json: cannot open" generate --model "$TMP/missing" --prompt hi
# a saved model's fields are named as that file has them (moex_model.), not as a training config
mkdir -p "$TMP/kvheads"
printf '{"model_type": "moex", "moex_model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 4, "num_kv_heads": 3, "max_seq_len": 8}}' > "$TMP/kvheads/config.json"
expect_error "kvheads/config.json: moex_model.num_kv_heads (3) must divide moex_model.num_heads (4)" eval --model "$TMP/kvheads" --input-ids "$TMP/none.safetensors"
mkdir -p "$TMP/trunc"
printf '{"model_type": "moex", "moex_model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8}}' > "$TMP/trunc/config.json"
printf '\xff\xff\x00\x00\x00\x00\x00\x00{"a": 1}' > "$TMP/trunc/model.safetensors"
expect_error "model.safetensors" eval --model "$TMP/trunc" --input-ids "$TMP/none.safetensors"

# tokenizers
printf '{"model": {"type": "BPE", "merges": []}}' > "$TMP/tok.json"
expect_error "tok.json" tokenize --tokenizer "$TMP/tok.json" --text hi
expect_error "/dev/zero: larger than 256 MiB" tokenize --tokenizer /dev/zero --text hi
printf '{"version": "1.0", ' > "$TMP/tok2.json"
expect_error "tok2.json" tokenize --tokenizer "$TMP/tok2.json" --text hi

# datasets: a corpus whose index does not match its data
mkdir -p "$TMP/corpus"
printf 'MMIDIDX\x00\x00garbage' > "$TMP/corpus/a.train.idx"; : > "$TMP/corpus/a.train.bin"
cp "$TMP/corpus/a.train.idx" "$TMP/corpus/a.valid.idx"; : > "$TMP/corpus/a.valid.bin"
printf '{"tokenizer": "t.model", "vocab_size": 10, "sources": [{"name": "a", "language": "en", "train": {"prefix": "a.train", "tokens": 1000}, "valid": {"prefix": "a.valid", "tokens": 100}}]}' > "$TMP/corpus/corpus.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8}, "data": {"path": "%s", "seq_len": 4}, "training": {"steps": 1, "out_dir": "%s/run"}}' "$TMP/corpus" "$TMP" > "$TMP/data.json"
expect_error "a.train.idx" train --config "$TMP/data.json"
# a manifest field the reader does not know the value of
sed 's/"language": "en",/"language": "en", "task": "summarize",/' "$TMP/corpus/corpus.json" > "$TMP/corpus/c2" && mv "$TMP/corpus/c2" "$TMP/corpus/corpus.json"
expect_error 'corpus.json: sources[0].task must be "lm", "translate" or "denoise", got "summarize"' train --config "$TMP/data.json"
# a field of the wrong type, named
sed 's/"name": "a"/"name": 5/' "$TMP/corpus/corpus.json" > "$TMP/corpus/c3" && cp "$TMP/corpus/corpus.json" "$TMP/corpus/c4" && mv "$TMP/corpus/c3" "$TMP/corpus/corpus.json"
expect_error 'corpus.json: sources[0].name must be a string, got 5' train --config "$TMP/data.json"
# top-level ids: a wrong type named, and one past int32 refused, not wrapped into the vocabulary
sed 's/"vocab_size": 10,/"vocab_size": 10, "eos_id": "2",/' "$TMP/corpus/c4" > "$TMP/corpus/corpus.json"
expect_error 'corpus.json: eos_id must be an integer, got "2"' train --config "$TMP/data.json"
sed 's/"vocab_size": 10,/"vocab_size": 10, "bos_id": 4294967297,/' "$TMP/corpus/c4" > "$TMP/corpus/corpus.json"
expect_error 'corpus.json: bos_id 4294967297 is outside the vocabulary of 10' train --config "$TMP/data.json"
sed 's/"vocab_size": 10,/"vocab_size": 10, "eos_id": 4294967297,/' "$TMP/corpus/c4" > "$TMP/corpus/corpus.json"
expect_error 'corpus.json: eos_id 4294967297 is outside the vocabulary of 10' train --config "$TMP/data.json"
mv "$TMP/corpus/c4" "$TMP/corpus/corpus.json"
# a dataset of ids 0..999 (another tokenizer) for a model of 10 tokens: refused at the first read,
# naming the file, before any step
python3 - "$TMP/corpus/a.train" "$TMP/corpus/a.valid" <<'PY'
import struct, sys
for prefix in sys.argv[1:]:
    ids = list(range(1000))
    open(prefix + ".bin", "wb").write(struct.pack("<1000H", *ids))
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + bytes([8]) + struct.pack("<QQ", 1, 2)
    idx += struct.pack("<i", 1000) + struct.pack("<q", 0) + struct.pack("<qq", 0, 1)
    open(prefix + ".idx", "wb").write(idx)
PY
sed 's/, "task": "summarize"//' "$TMP/corpus/corpus.json" > "$TMP/corpus/c2" && mv "$TMP/corpus/c2" "$TMP/corpus/corpus.json"
expect_error "outside the model's vocabulary of 10" train --config "$TMP/data.json"
# The same with in-vocabulary validation data: the training split's first read, in the first step,
# refuses it. The run leaves no metrics.jsonl, which would refuse the next try as an earlier run.
python3 - "$TMP/corpus/a.valid" <<'PY'
import struct, sys
ids = [i % 10 for i in range(1000)]
open(sys.argv[1] + ".bin", "wb").write(struct.pack("<1000H", *ids))
PY
printf '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "f": 5, "g": 6, "h": 7, "i": 8, "j": 9}, "merges": []}}' > "$TMP/corpus/t.json"
sed 's/"t.model"/"t.json"/' "$TMP/corpus/corpus.json" > "$TMP/corpus/c2" && mv "$TMP/corpus/c2" "$TMP/corpus/corpus.json"
# an id past int32 to decode is refused, not wrapped to the id 1
expect_error "--text: id 4294967297 is outside the range of token ids" tokenize --tokenizer "$TMP/corpus/t.json" --decode --text '{"ids": [4294967297]}'
# (The run has started, so its start-up info lines come first: the error is the last line.)
err="$("$MOEX" train --config "$TMP/data.json" 2>&1 >/dev/null)"; rc=$?
if [ "$rc" -ne 1 ] || [[ "$(printf '%s\n' "$err" | tail -n 1)" != *"error: $TMP/corpus/a.train.bin: token"* ]]; then
  echo "FAIL: a run in-vocabulary for validation only -> rc=$rc, stderr:"; printf '%s\n' "$err" | sed 's/^/    /'
  failures=$((failures + 1))
elif [ -e "$TMP/run/metrics.jsonl" ]; then
  echo "FAIL: a run that failed in its first step left metrics.jsonl"; failures=$((failures + 1))
else
  echo "ok: a run that failed in its first step left no metrics.jsonl"
fi
# a model far past the machine's memory: refused before minutes of allocating
printf '{"model": {"vocab_size": 32000, "hidden_size": 8192, "num_layers": 4000, "num_heads": 64, "max_seq_len": 8}, "data": {"path": "%s", "seq_len": 4}, "training": {"steps": 1, "out_dir": "%s/run"}}' "$TMP/corpus" "$TMP" > "$TMP/huge.json"
expect_error "huge.json: the model has 4295557128192 parameters; training it on the CPU needs at least" train --config "$TMP/huge.json"
# training.device "cuda" where no GPU is visible (CUDA_VISIBLE_DEVICES empty: also on a GPU machine)
sed 's/"steps": 1,/"steps": 1, "device": "cuda",/' "$TMP/data.json" > "$TMP/cuda.json"
CUDA_VISIBLE_DEVICES= expect_error 'cuda.json: training.device "cuda" (or --device cuda), but no GPU is visible' train --config "$TMP/cuda.json"
# a micro-batch whose activations no machine holds: refused naming the fields, before any allocation
printf '{"model": {"vocab_size": 10, "hidden_size": 64, "num_layers": 1, "num_heads": 2, "max_seq_len": 4096}, "data": {"path": "%s", "seq_len": 4096}, "training": {"steps": 1, "micro_batch_size": 16777216, "out_dir": "%s/run"}}' "$TMP/corpus" "$TMP" > "$TMP/batch.json"
expect_error "batch.json: training.micro_batch_size 16777216 x data.seq_len 4096 tokens need at least" train --config "$TMP/batch.json"
# --resume given a run's out_dir instead of one of its checkpoints
mkdir -p "$TMP/oldrun/latest" && echo '{}' > "$TMP/oldrun/latest/trainer_state.json"
expect_error "oldrun: this is a run's out_dir, not a checkpoint; resume from one of its checkpoints, e.g. $TMP/oldrun/latest" train --config "$TMP/data.json" --resume "$TMP/oldrun"
# training.init_from (moex train --init-from): a missing directory, one without config.json, and
# a config that also has a "model" section; nothing is written to out_dir
printf '{"data": {"path": "%s", "seq_len": 4}, "training": {"steps": 1, "out_dir": "%s/initrun", "init_from": "%s"}}' "$TMP/corpus" "$TMP" "$TMP/nowhere" > "$TMP/init_missing.json"
expect_error "init_missing.json: training.init_from: $TMP/nowhere: no such directory" train --config "$TMP/init_missing.json"
expect_error "--init-from: $TMP/nowhere2: no such directory" train --config "$TMP/init_missing.json" --init-from "$TMP/nowhere2"
mkdir -p "$TMP/noconfig"
sed "s|$TMP/nowhere|$TMP/noconfig|" "$TMP/init_missing.json" > "$TMP/init_noconfig.json"
expect_error "init_noconfig.json: training.init_from: $TMP/noconfig/config.json is missing" train --config "$TMP/init_noconfig.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 8}, "data": {"path": "%s", "seq_len": 4}, "training": {"steps": 1, "out_dir": "%s/initrun", "init_from": "%s"}}' "$TMP/corpus" "$TMP" "$TMP/noconfig" > "$TMP/init_model.json"
expect_error "init_model.json: model: leave it out with training.init_from; the model is $TMP/noconfig's" train --config "$TMP/init_model.json"
[ ! -e "$TMP/initrun" ] || { echo "FAIL: a refused init_from run wrote $TMP/initrun"; failures=$((failures + 1)); }
# a fresh run into the out_dir of an earlier one
mkdir -p "$TMP/run" && echo '{"step": 1}' > "$TMP/run/metrics.jsonl"
expect_error "holds an earlier run (metrics.jsonl)" train --config "$TMP/data.json"
[ -s "$TMP/run/metrics.jsonl" ] || { echo "FAIL: the earlier run's metrics.jsonl was touched"; failures=$((failures + 1)); }

# benchmark flags: counts are checked before anything runs, on either device (cuda included,
# whether or not this build has CUDA), and a flag the benchmark does not read is an error
expect_error "--iters must be between 1 and" bench moe-layer --iters 0
expect_error "--warmup must be between 0 and" bench moe-layer --warmup -1
expect_error "--iters must be between 1 and" bench moe-layer --device cuda --iters 0
expect_error "--warmup must be between 0 and" bench moe-layer --device cuda --warmup -1
expect_error "--iters must be between 1 and" bench train-step --iters 0
expect_error "--tokens must be between 2 and" bench decode --tokens 1
expect_error "--batch: '0' is not a batch size in [1, 4096]" bench decode --batch 0
expect_error "unknown --shape 'nope'" bench decode --shape nope
expect_error "give one of --tokenizer or --model" tokenize --text hi
expect_error "--shape mixtral is sized for --device cuda; pass --device cuda" bench moe-layer --shape mixtral
expect_error "bench decode does not take --iters" bench decode --iters 3
expect_error "--device: unknown device 'tpu'" bench decode --device tpu
expect_error "--device: unknown device 'tpu'" bench train-step --device tpu
expect_error "--device: unknown device 'gpu0'" eval --model "$TMP/none" --input-ids x --device gpu0
expect_error "--device: unknown device 'cuda:x'" generate --model "$TMP/none" --prompt hi --device cuda:x
expect_error "bench moe-layer does not take --tokens" bench moe-layer --tokens 8
expect_error "--cac needs --ep > 1" bench moe-layer --cac
expect_error "bench train-step does not take --cac" bench train-step --cac
expect_error "--moments-dtype must be fp32 or bf16" bench train-step --moments-dtype fp16
expect_error "--master-dtype must be fp32 or bf16 (optimizer.master_dtype)" bench train-step --master-dtype fp16
expect_error "bf16 master weights need a model on a GPU" bench train-step --device cpu --master-dtype bf16 \
  --config "$(dirname "$0")/../../configs/tiny-moe.json"

# prune: counts and directories are checked before anything is written
expect_error "--keep-experts must be >= 1" prune --model "$TMP/model_dir" --out "$TMP/p" --keep-experts 0 --calibration x
expect_error "config.json: cannot open" prune --model "$TMP/missing" --out "$TMP/p" --keep-experts 2 --calibration x
# ... on a model transformers saved (Mixtral, 2 layers of 4 experts, top-2)
MIXTRAL="$(cd "$(dirname "$0")/../fixtures/hf/mixtral" && pwd)"
CALIB="$MIXTRAL/fixture.safetensors"
expect_error "--keep-experts 9 must be in [top_k = 2, 4)" prune --model "$MIXTRAL/model" --out "$TMP/p" --keep-experts 9 --calibration "$CALIB"
expect_error "--keep-experts 1 must be in [top_k = 2, 4)" prune --model "$MIXTRAL/model" --out "$TMP/p" --keep-experts 1 --calibration "$CALIB"
expect_error "--keep-layers: layer 5 is outside [0, 2)" prune --model "$MIXTRAL/model" --out "$TMP/p" --keep-layers 0,5
expect_error "flag --keep-layers expects integers separated by commas" prune --model "$MIXTRAL/model" --out "$TMP/p" --keep-layers 0,x
expect_error "--rank-by: 'weight' is not a ranking" prune --model "$MIXTRAL/model" --out "$TMP/p" --keep-experts 2 --rank-by weight --calibration "$CALIB"
expect_error "--keep-experts needs --calibration" prune --model "$MIXTRAL/model" --out "$TMP/p" --keep-experts 2
expect_error "--calibration-tokens applies to a dataset prefix or corpus directory" prune --model "$MIXTRAL/model" --out "$TMP/p" --keep-experts 2 --calibration "$CALIB" --calibration-tokens 64
expect_error "is a hf model directory and is written as one" prune --model "$MIXTRAL/model" --out "$TMP/p" --keep-layers 1 --format moex
expect_error "nothing to prune" prune --model "$MIXTRAL/model" --out "$TMP/p"
# generation lengths: refused before any text is printed (expect_error checks stderr's one line;
# stdout must stay empty too), on a prompt of one row (generate warns that it takes the first of
# several)
python3 - "$TMP/one_row.safetensors" <<'PY'
import json, struct, sys
head = json.dumps({"input_ids": {"dtype": "I32", "shape": [1, 3], "data_offsets": [0, 12]}}).encode()
head += b" " * (-len(head) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(head)) + head + struct.pack("<3i", 1, 2, 3))
PY
PROMPT_IDS="$TMP/one_row.safetensors"
# ids past the model's 128-token vocabulary (another tokenizer's, most likely): the file and place
python3 - "$TMP/far_ids.safetensors" <<'PY'
import json, struct, sys
head = json.dumps({"input_ids": {"dtype": "I32", "shape": [1, 3], "data_offsets": [0, 12]}}).encode()
head += b" " * (-len(head) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(head)) + head + struct.pack("<3i", 1, 2, 500))
PY
expect_error "far_ids.safetensors: input_ids[0, 2] is 500, outside the model's vocabulary of 128" eval --model "$MIXTRAL/model" --input-ids "$TMP/far_ids.safetensors"
expect_error "far_ids.safetensors: input_ids[0, 2] is 500, outside the model's vocabulary of 128" generate --model "$MIXTRAL/model" --input-ids "$TMP/far_ids.safetensors"
# no rows at all: no loss to report
python3 - "$TMP/no_rows.safetensors" <<'PY'
import json, struct, sys
head = json.dumps({"input_ids": {"dtype": "I32", "shape": [0, 3], "data_offsets": [0, 0]}}).encode()
head += b" " * (-len(head) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(head)) + head)
PY
expect_error "no_rows.safetensors: input_ids must be int32 [B, T] with B, T > 0, got I32 [0, 3]" eval --model "$MIXTRAL/model" --input-ids "$TMP/no_rows.safetensors"
# --logits-out checked before the evaluation: not the input's file (left as it was), not a
# directory, in a directory that exists
cp "$PROMPT_IDS" "$TMP/ids_copy.safetensors"
expect_error "--logits-out $TMP/ids_copy.safetensors is the --input-ids file" eval --model "$MIXTRAL/model" --input-ids "$TMP/ids_copy.safetensors" --logits-out "$TMP/ids_copy.safetensors"
cmp -s "$PROMPT_IDS" "$TMP/ids_copy.safetensors" || { echo "FAIL: --logits-out overwrote the --input-ids file"; failures=$((failures + 1)); }
mkdir -p "$TMP/logits_dir"
expect_error "--no-packing belongs to --data (a corpus)" eval --model "$MIXTRAL/model" --input-ids "$PROMPT_IDS" --no-packing
expect_error "--seq-len belongs to --data (a corpus)" eval --model "$MIXTRAL/model" --input-ids "$PROMPT_IDS" --seq-len 8
expect_error "--logits-out $TMP/logits_dir is a directory" eval --model "$MIXTRAL/model" --input-ids "$PROMPT_IDS" --logits-out "$TMP/logits_dir"
expect_error "--logits-out $TMP/nowhere/l.safetensors: its directory $TMP/nowhere does not exist" eval --model "$MIXTRAL/model" --input-ids "$PROMPT_IDS" --logits-out "$TMP/nowhere/l.safetensors"
# a tokenizer of another model (GPT-2's 50,257 ids beside a 128-token model)
cp -r "$MIXTRAL/model" "$TMP/other_tokenizer"
cp "$(dirname "$0")/../fixtures/tokenizers/gpt2/tokenizer.json" "$TMP/other_tokenizer/"
expect_error "other_tokenizer/tokenizer.json: the tokenizer has ids up to 50256, past the model's vocabulary of 128" generate --model "$TMP/other_tokenizer" --input-ids "$PROMPT_IDS"
# rows past max_seq_len on a model of learned positions (no row for them): refused naming the file
mkdir -p "$TMP/lcorpus"
python3 - "$TMP/lcorpus/a.train" "$TMP/lcorpus/a.valid" <<'PY'
import struct, sys
for prefix in sys.argv[1:]:
    ids = [i % 10 for i in range(1000)]
    open(prefix + ".bin", "wb").write(struct.pack("<1000H", *ids))
    idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + bytes([8]) + struct.pack("<QQ", 1, 2)
    idx += struct.pack("<i", 1000) + struct.pack("<q", 0) + struct.pack("<qq", 0, 1)
    open(prefix + ".idx", "wb").write(idx)
PY
printf '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "f": 5, "g": 6, "h": 7, "i": 8, "j": 9}, "merges": []}}' > "$TMP/lcorpus/t.json"
printf '{"tokenizer": "t.json", "vocab_size": 10, "sources": [{"name": "a", "language": "en", "train": {"prefix": "a.train", "tokens": 1000}, "valid": {"prefix": "a.valid", "tokens": 1000}}]}' > "$TMP/lcorpus/corpus.json"
printf '{"model": {"vocab_size": 10, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_seq_len": 4, "positions": "learned"}, "data": {"path": "%s", "seq_len": 4}, "training": {"steps": 1, "eval_every": 0, "out_dir": "%s/lrun"}}' "$TMP/lcorpus" "$TMP" > "$TMP/learned.json"
"$MOEX" train --config "$TMP/learned.json" >/dev/null 2>&1 || { echo "FAIL: the learned-positions model did not train"; failures=$((failures + 1)); }
python3 - "$TMP/five.safetensors" <<'PY'
import json, struct, sys
head = json.dumps({"input_ids": {"dtype": "I32", "shape": [1, 5], "data_offsets": [0, 20]}}).encode()
head += b" " * (-len(head) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(head)) + head + struct.pack("<5i", 1, 2, 3, 4, 5))
PY
expect_error "five.safetensors: rows of 5 tokens exceed model.max_seq_len (4), and the model's learned positions have no more rows" eval --model "$TMP/lrun/final" --input-ids "$TMP/five.safetensors"
# a prompt that is not UTF-8 text (as the server refuses it)
cp -r "$MIXTRAL/model" "$TMP/tiny_tokenizer"
printf '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}, "merges": []}}' > "$TMP/tiny_tokenizer/tokenizer.json"
expect_error "--prompt is not valid UTF-8 text" generate --model "$TMP/tiny_tokenizer" --prompt $'\xff\xfe'
# a KV cache no machine holds: refused naming the options, before any of it is allocated
EXPECT_TIMEOUT=300 expect_error "serving: a KV cache of 2000000000 blocks of 16 positions (max_batch 8 sequences of max_context 256) needs" serve --model "$TMP/tiny_tokenizer" --kv-blocks 2000000000 --port 0
expect_error "max_new_tokens must be in [0, 2^31 - 1]" generate --model "$MIXTRAL/model" --input-ids "$PROMPT_IDS" --max-new-tokens 99999999999
expect_error "temperature must be a finite number >= 0 (got inf)" generate --model "$MIXTRAL/model" --input-ids "$PROMPT_IDS" --temperature inf
# generate takes --prompt or --input-ids, not both
expect_error "give --prompt TEXT or --input-ids FILE, not both" generate --model "$MIXTRAL/model" --input-ids "$CALIB" --prompt hi
# (past this RoPE model's 256 positions: a warning says so, then the cache is refused)
out="$("$MOEX" generate --model "$MIXTRAL/model" --input-ids "$PROMPT_IDS" --max-new-tokens 2000000000 2>"$TMP/gen.err")"
rc=$?
if [ "$rc" -ne 1 ] || [ -n "$out" ] || ! tail -1 "$TMP/gen.err" | grep -q "error: serving: a KV cache of .* GiB of memory and swap; .*--max-new-tokens"; then
  echo "FAIL: generate --max-new-tokens 2000000000 -> rc=$rc, stdout '$out', stderr:"; cat "$TMP/gen.err"
  failures=$((failures + 1))
else
  echo "ok: moex generate ... -> $(tail -1 "$TMP/gen.err")"
fi
# a dataset of another tokenizer (one document of ids 0..999 as uint16, Megatron's layout) for
# the 128-token model
python3 - "$TMP/big" <<'PY'
import struct, sys
ids = list(range(1000))
open(sys.argv[1] + ".bin", "wb").write(struct.pack("<1000H", *ids))
idx = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + bytes([8]) + struct.pack("<QQ", 1, 2)
idx += struct.pack("<i", 1000) + struct.pack("<q", 0) + struct.pack("<qq", 0, 1)
open(sys.argv[1] + ".idx", "wb").write(idx)
PY
expect_error "is outside the model's vocabulary of 128" prune --model "$MIXTRAL/model" --out "$TMP/p" --keep-experts 2 --calibration "$TMP/big" --calibration-tokens 64
if [ -e "$TMP/p" ] || [ -e "$TMP/p.tmp" ]; then
  echo "FAIL: a refused prune left $TMP/p behind"; failures=$((failures + 1))
fi
expect_error "--noise-rate, --mean-span and --denoise-chunk need --denoise" data prepare --out "$TMP/d" --noise-rate 0.2
expect_error "denoise: noise_rate must be in (0, 1)" data prepare --out "$TMP/d" --denoise --noise-rate 1.5

# export: the output may not be the model directory itself
mkdir -p "$TMP/model_dir"
expect_error "is the model directory itself" export --model "$TMP/model_dir" --out "$TMP/model_dir" --architecture MixtralForCausalLM
# export and prune replace an earlier model at --out, never a file or a directory of other things
echo "keep me" > "$TMP/notes.txt"
mkdir -p "$TMP/mine" && echo "keep me" > "$TMP/mine/notes.txt"
expect_error "exists and is not a directory" export --model "$TMP/model_dir" --out "$TMP/notes.txt" --architecture MixtralForCausalLM
expect_error "holds no model (no config.json)" export --model "$TMP/model_dir" --out "$TMP/mine" --architecture MixtralForCausalLM
expect_error "holds no model (no config.json)" prune --model "$MIXTRAL/model" --out "$TMP/mine" --keep-layers 1
for f in "$TMP/notes.txt" "$TMP/mine/notes.txt"; do
  [ "$(cat "$f")" = "keep me" ] || { echo "FAIL: $f was replaced"; exit 1; }
done

if [ "$failures" -ne 0 ]; then echo "$failures case(s) failed"; exit 1; fi
echo "all bad-input cases gave one clear error"
