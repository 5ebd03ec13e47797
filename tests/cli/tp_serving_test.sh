#!/usr/bin/env bash
# moex generate, eval and serve with --tp 2 under mpirun -np 2 (the model split over two CPU ranks,
# docs/parallelism.md §Serving under tensor parallelism) on a Hugging Face directory (the
# working-path test's Qwen3-MoE export): the tokens, texts, loss and logits equal the single
# process's, the split server answers concurrent requests and drains on SIGTERM, and a --tp that
# does not fit is one clear error.
#   tp_serving_test.sh MPIRUN MOEX MODEL_DIR IDS   (IDS: int32 input_ids [B, T] for moex eval)
set -euo pipefail
MPIRUN="$1"
MOEX="$(realpath "$2")"
MODEL="$3"
IDS="$4"
TMP="$(mktemp -d)"
SERVER=""
cleanup() {
  # The ranks first: mpirun killed with SIGKILL would leave them behind.
  [ -n "$SERVER" ] && { pkill -9 -P "$SERVER" 2>/dev/null; kill -9 "$SERVER" 2>/dev/null; } || true
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# The pid of rank $1 among mpirun $SERVER's children.
rank_pid() {
  local pid
  for pid in $(pgrep -P "$SERVER"); do
    # grep reads all of tr's output (no -q): under pipefail, tr cut off by an early exit would
    # make the match read as a miss (SIGPIPE, status 141).
    if tr '\0' '\n' <"/proc/$pid/environ" | grep -x "OMPI_COMM_WORLD_RANK=$1" >/dev/null; then
      echo "$pid"
      return
    fi
  done
  fail "no rank $1 process under mpirun ($SERVER)"
}
# Starts `moex serve --tp 2` under mpirun (SERVER: mpirun's pid; logs $TMP/$1.out and .err) and
# waits for its listening line.
start_split_server() {
  "${MPI[@]}" "$MOEX" serve --model "$MODEL" --tp 2 --port 0 --model-name m >"$TMP/$1.out" \
    2>"$TMP/$1.err" &
  SERVER=$!
  for _ in $(seq 600); do
    grep -q listening "$TMP/$1.out" 2>/dev/null && return
    kill -0 "$SERVER" 2>/dev/null || { cat "$TMP/$1.err" >&2; fail "the server ended"; }
    sleep 0.1
  done
  fail "no listening line in 60 s: $(cat "$TMP/$1.out")"
}
# Waits until mpirun $SERVER has ended, at most 30 s after $1.
wait_job_end() {
  for _ in $(seq 300); do
    kill -0 "$SERVER" 2>/dev/null || return 0
    sleep 0.1
  done
  fail "the job still runs 30 s after $1"
}
[ -f "$MODEL/config.json" ] || fail "$MODEL/config.json is missing"
export OMP_NUM_THREADS=1
MPI=("$MPIRUN" --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS)

# ---- generate: greedy and sampled, split against whole ----
for sampling in "" "--temperature 0.9 --top-p 0.9 --seed 5"; do
  # shellcheck disable=SC2086
  "$MOEX" generate --model "$MODEL" --prompt "the river" --max-new-tokens 20 --json $sampling \
    >"$TMP/whole.json"
  # shellcheck disable=SC2086
  "${MPI[@]}" "$MOEX" generate --model "$MODEL" --prompt "the river" --max-new-tokens 20 --json \
    --tp 2 $sampling >"$TMP/split.json" 2>"$TMP/split.err" ||
    { cat "$TMP/split.err" >&2; fail "mpirun -np 2 moex generate --tp 2 $sampling"; }
  [ "$(wc -l <"$TMP/split.json")" = 1 ] || fail "rank 0 alone prints: got $(cat "$TMP/split.json")"
  cmp -s "$TMP/whole.json" "$TMP/split.json" ||
    fail "generate --tp 2 $sampling: $(cat "$TMP/split.json") != $(cat "$TMP/whole.json")"
done
# Every expert's hidden width split over the two ranks too.
"${MPI[@]}" "$MOEX" generate --model "$MODEL" --prompt "the river" --max-new-tokens 20 --json \
  --tp 2 --expert-slicing --temperature 0.9 --top-p 0.9 --seed 5 >"$TMP/sliced.json" 2>"$TMP/split.err" ||
  { cat "$TMP/split.err" >&2; fail "mpirun -np 2 moex generate --tp 2 --expert-slicing"; }
cmp -s "$TMP/whole.json" "$TMP/sliced.json" ||
  fail "generate --tp 2 --expert-slicing: $(cat "$TMP/sliced.json") != $(cat "$TMP/whole.json")"
echo "ok: generate --tp 2 (whole and sliced experts) equals the single process (greedy and sampled)"

# ---- eval: loss and logits, split against whole ----
"$MOEX" eval --model "$MODEL" --input-ids "$IDS" --logits-out "$TMP/whole.safetensors" >"$TMP/whole_eval.json"
"${MPI[@]}" "$MOEX" eval --model "$MODEL" --input-ids "$IDS" --logits-out "$TMP/split.safetensors" \
  --tp 2 >"$TMP/split_eval.json" 2>"$TMP/split.err" ||
  { cat "$TMP/split.err" >&2; fail "mpirun -np 2 moex eval --tp 2"; }
node - "$TMP" <<'JS'
const fs = require("fs");
const tmp = process.argv[2];
// The f32 tensor "logits" of a safetensors file.
const logits = (path) => {
  const buf = fs.readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const entry = JSON.parse(buf.subarray(8, 8 + n).toString()).logits;
  const [begin, end] = entry.data_offsets;
  const data = buf.subarray(8 + n + begin, 8 + n + end);
  return new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
};
const [a, b] = [logits(`${tmp}/split.safetensors`), logits(`${tmp}/whole.safetensors`)];
let diff = 0, norm = 0;
for (let i = 0; i < b.length; ++i) { diff += (a[i] - b[i]) ** 2; norm += b[i] ** 2; }
const rel = Math.sqrt(diff / norm);
const [la, lb] = ["split_eval", "whole_eval"].map((f) => JSON.parse(fs.readFileSync(`${tmp}/${f}.json`)).loss);
if (a.length !== b.length || !(rel < 1e-5) || !(Math.abs(la - lb) <= 1e-5 * Math.abs(lb))) {
  console.error(`FAIL: eval --tp 2: logits relative L2 ${rel}, loss ${la} against ${lb}`);
  process.exit(1);
}
JS
echo "ok: eval --tp 2 gives the single process's loss and logits (1e-5)"

# ---- --tp that does not match the job ----
if "$MOEX" generate --model "$MODEL" --prompt x --tp 2 >/dev/null 2>"$TMP/err"; then
  fail "--tp 2 without mpirun succeeded"
fi
grep -q "mpirun -np 2" "$TMP/err" || fail "unclear --tp error: $(cat "$TMP/err")"
# A model whose 2 kv heads do not split over 4 ranks: one error naming its config.
if "$MPIRUN" --allow-run-as-root --oversubscribe -np 4 -x OMP_NUM_THREADS "$MOEX" generate \
  --model "$MODEL" --prompt x --tp 4 >/dev/null 2>"$TMP/err"; then
  fail "--tp 4 of a model with 2 kv heads succeeded"
fi
grep -q "config.json: tensor parallelism: tp is 4, which does not divide model.num_kv_heads (2)" \
  "$TMP/err" || fail "unclear error for --tp 4: $(cat "$TMP/err")"
echo "ok: --tp 2 in a one-rank job and --tp 4 of 2 kv heads are clear errors"

# ---- serve: concurrent requests against the split model, then SIGTERM ----
start_split_server serve
URL="$(sed -n 's/.*"listening": "\([^"]*\)".*/\1/p' "$TMP/serve.out")"
[ -n "$URL" ] || fail "no listening line: $(cat "$TMP/serve.out")"
# Four concurrent greedy completions of two prompts: each equals moex generate's text.
for prompt in "the river" "once upon"; do
  "$MOEX" generate --model "$MODEL" --prompt "$prompt" --max-new-tokens 12 --json |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).text))' \
      >"$TMP/expect_${prompt// /_}"
done
node - "$URL" "$TMP" <<'JS'
const [url, tmp] = process.argv.slice(2);
const fs = require("fs");
const ask = (prompt) =>
  fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({model: "m", prompt, max_tokens: 12, temperature: 0}),
  }).then(async (r) => {
    const body = await r.json();
    if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${JSON.stringify(body)}`);
    return body.choices[0].text;
  });
const prompts = ["the river", "once upon", "the river", "once upon"];
Promise.all(prompts.map(ask)).then((texts) => {
  texts.forEach((text, i) => {
    const expect = fs.readFileSync(`${tmp}/expect_${prompts[i].replace(/ /g, "_")}`, "utf8");
    if (text !== expect) {
      console.error(`FAIL: request ${i}: ${JSON.stringify(text)} != ${JSON.stringify(expect)}`);
      process.exit(1);
    }
  });
}).catch((e) => { console.error(`FAIL: ${e.message}`); process.exit(1); });
JS
echo "ok: the split server's completions equal the single process's"
# Idle, the mirroring rank waits for rank 0's next step without keeping its core busy.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
RANK1="$(rank_pid 1)"
before="$(cpu_ticks "$RANK1")"
sleep 2
used=$(( $(cpu_ticks "$RANK1") - before ))
limit=$(( $(getconf CLK_TCK) / 2 ))  # half a second of CPU in two idle seconds
[ "$used" -lt "$limit" ] || fail "the idle mirroring rank used $used CPU ticks in 2 s (limit $limit)"
echo "ok: the idle mirroring rank used $used CPU ticks in 2 s"
# The serving rank drains and ends the steps the other rank mirrors (which ignores the signal):
# both return 0. (mpirun itself, signalled, would forward the signal and report the job killed.)
kill -TERM "$(rank_pid 0)"
wait_job_end SIGTERM
wait "$SERVER" || fail "the split server exited with status $? after SIGTERM: $(cat "$TMP/serve.err")"
SERVER=""
echo "ok: SIGTERM drains and ends both ranks"

# ---- a mirroring rank that dies takes the job down (no hang) ----
start_split_server serve2
kill -KILL "$(rank_pid 1)"
wait_job_end "its rank 1 died"
if wait "$SERVER"; then fail "the job exited 0 after its rank 1 died"; fi
SERVER=""
echo "ok: a dead mirroring rank ends the job, non-zero"
echo "PASS"
