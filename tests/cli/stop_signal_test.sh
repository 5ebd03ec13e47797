#!/usr/bin/env bash
# Ctrl-C and SIGTERM sent to `moex train` from outside, many times while it computes, must end
# the run after its step with a `latest` checkpoint: never a crash. A signal
# handler that ran on whichever thread the signal landed in could push its frame into the heap
# while oneDNN's JIT GEMM ran with its stack pointer there (heap corruption, abort, no
# checkpoint, in most runs); core/stop_signals.h takes the signals in a thread of their own.
#   stop_signal_test.sh MOEX WRITE_TRAIN_FIXTURE
set -euo pipefail
MOEX="$(realpath "$1")"
FIXTURE="$(realpath "$2")"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

config="$("$FIXTURE" "$TMP/corpus" "$TMP/run")"
# GEMMs large enough for oneDNN's JIT kernels (the LM head's 8000 columns above all).
python3 - "$config" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["model"].update(vocab_size=8000, hidden_size=128, ffn_size=256)
c["training"].update(steps=1000000, eval_every=0, checkpoint_every=0, micro_batch_size=8)
json.dump(c, open(sys.argv[1], "w"))
PY

for signal in INT TERM INT TERM; do
  rm -rf "$TMP/run"
  "$MOEX" train --config "$config" >"$TMP/train.log" 2>&1 &
  pid=$!
  # The first step's metrics line: the run is in its loop, its handlers in place.
  until [ -s "$TMP/run/metrics.jsonl" ]; do
    kill -0 "$pid" 2>/dev/null ||
      fail "moex train ended before its first step: $(tail -3 "$TMP/train.log")"
    sleep 0.05
  done
  # Signals while it computes, until it has stopped (the later ones say "still stopping").
  for _ in $(seq 1 30); do
    kill -s "$signal" "$pid" 2>/dev/null || break
    [ -d "$TMP/run/latest" ] && break
    sleep 0.01
  done
  status=0
  wait "$pid" || status=$?
  # 130: the run stopped itself. A signal sent just as it returned (its checkpoint written, its
  # handlers given back) may end it by default instead: 128 + the signal's number, checkpoint
  # there. A crash is anything else (134: an abort, 139: a segfault).
  default=$((128 + $(kill -l "$signal")))
  [ "$status" -eq 130 ] || [ "$status" -eq "$default" ] ||
    fail "SIG$signal: exit status $status: $(tail -3 "$TMP/train.log")"
  ! grep -qE "corrupted|double free|Aborted" "$TMP/train.log" ||
    fail "SIG$signal: $(grep -m1 -E "corrupted|double free|Aborted" "$TMP/train.log")"
  [ -f "$TMP/run/latest/model.safetensors" ] || fail "SIG$signal: no latest checkpoint"
  echo "ok: SIG$signal ends the run with a checkpoint"
done
