#!/usr/bin/env bash
# moex serve against the official OpenAI client: serves a small model made the way a user would
# (the working-path test trains one and exports it with its tokenizer) with
# openai_client_test.mjs. The npm package comes from scripts/setup.sh (tests/serve/node_modules);
# without it this test fails rather than skip.
#   serve_client_test.sh MOEX [MODEL_DIR]
# Without MODEL_DIR it runs the working-path test first to make one (ctest passes the one that
# test kept).
set -euo pipefail
MOEX="$(realpath "$1")"
HERE="$(cd "$(dirname "$0")" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# Under AddressSanitizer freed memory waits in a quarantine (256 MB by default), which would read
# as growth in the load check: keep it small.
if [ -n "${ASAN_OPTIONS:-}" ]; then
  export ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=4" MOEX_SANITIZED=1
fi
[ -d "$HERE/node_modules/openai" ] && [ -d "$HERE/node_modules/zod" ] ||
  { echo "FAIL: tests/serve/node_modules/openai or zod is missing: run scripts/setup.sh (npm ci)" >&2; exit 1; }
MODEL="${2:-}"
if [ -z "$MODEL" ]; then
  "$HERE/../cli/working_path_test.sh" "$MOEX" "$TMP/keep" >"$TMP/model.log" 2>&1 ||
    { cat "$TMP/model.log" >&2; echo "FAIL: could not make the model" >&2; exit 1; }
  MODEL="$TMP/keep/export"
fi
[ -f "$MODEL/config.json" ] || { echo "FAIL: $MODEL/config.json is missing" >&2; exit 1; }
# In the background so that a signal to this script (a ctest timeout) reaches node, which then
# ends the server it started.
node "$HERE/openai_client_test.mjs" "$MOEX" "$MODEL" &
NODE=$!
trap 'kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true; rm -rf "$TMP"' EXIT
trap 'exit 1' TERM INT
wait "$NODE"
