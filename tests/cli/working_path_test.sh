#!/usr/bin/env bash
# The working path through the moex binary: prepare a small corpus, train a tiny MoE for a few
# steps, generate (greedy and sampled), evaluate (on token ids and on the corpus), tokenize,
# prune, distill and export to Qwen3-MoE, asserting what each step produced.
#   working_path_test.sh MOEX [KEEP_DIR]
# With KEEP_DIR the export and the references check_hf_export.py compares it with are left
# there: KEEP_DIR/export (the Hugging Face directory) and KEEP_DIR/reference.json (moex's ids
# for a few strings, the eval ids and the logits file below). scripts/gpu_check.sh runs it so.
#
# The corpus text is the repository's own documentation (present wherever the tests are), laid
# out as the two inputs `moex data prepare` reads: handbook-style HTML pages and a
# diatheke-style Bible text file.
set -euo pipefail
MOEX="$(realpath "$1")"
KEEP="${2:-}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
step() { echo "== $*"; }

# ---- corpus: every non-empty documentation line is a paragraph (pages) and a verse (Bible) ----
step "moex data prepare"
mkdir -p "$TMP/src/handbook/en-US" "$TMP/src/bible"
n=0
for md in "$ROOT"/README.md "$ROOT"/docs/*.md; do
  n=$((n + 1))
  {
    echo "<html><body>"
    grep -v '^\s*$' "$md" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' \
      -e 's/^/<p>/' -e 's/$/<\/p>/'
    echo "</body></html>"
  } >"$TMP/src/handbook/en-US/page$n.html"
done
cat "$ROOT"/README.md "$ROOT"/docs/*.md | grep -v '^\s*$' | tr -d '\r' |
  awk '{ c = int((NR - 1) / 12) + 1; v = (NR - 1) % 12 + 1; print "Genesis " c ":" v ": " $0 }' \
    >"$TMP/src/bible/engWEB2015eb.txt"
"$MOEX" data prepare --out "$TMP/corpus" --languages en --no-parallel --vocab-size 400 \
  --valid-fraction 0.1 --threads 2 --handbook-dir "$TMP/src/handbook" \
  --bible-text-dir "$TMP/src/bible" >"$TMP/prepare.log"
[ -f "$TMP/corpus/corpus.json" ] && [ -f "$TMP/corpus/tokenizer.model" ] ||
  fail "data prepare wrote no corpus.json / tokenizer.model"
TOK="$TMP/corpus/tokenizer.model"

# ---- training: dropless MoE so that the Hugging Face export computes the same function ----
step "moex train"
cat >"$TMP/config.json" <<EOF
{
  "model": {"vocab_size": 400, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
            "max_seq_len": 64, "ffn_size": 64, "positions": "rope", "norm": "rmsnorm",
            "activation": "swiglu", "tie_embeddings": true, "qk_norm": "per_head",
            "moe": {"layer_freq": 2, "num_experts": 4, "top_k": 2, "ffn_size": 32, "renormalize": true,
                    "dropless": true, "aux_loss_coef": 0.01}},
  "data": {"path": "$TMP/corpus", "seq_len": 32},
  "optimizer": {"lr": 0.01, "grad_clip": 1.0},
  "schedule": {"warmup_steps": 2},
  "training": {"steps": 8, "micro_batch_size": 4, "grad_accum": 1, "seed": 1, "log_every": 1,
               "eval_every": 8, "eval_batches": 2, "out_dir": "$TMP/run"}
}
EOF
"$MOEX" train --config "$TMP/config.json" >"$TMP/train.log" 2>&1 || {
  cat "$TMP/train.log"
  fail "moex train exited non-zero"
}
MODEL="$TMP/run/final"
for f in config.json model.safetensors tokenizer.model; do
  [ -f "$MODEL/$f" ] || fail "the final checkpoint has no $f"
done
[ "$(wc -l <"$TMP/run/metrics.jsonl")" -eq 8 ] || fail "metrics.jsonl should have 8 lines"

# ---- your own text: a .jsonl and a plain text file tokenized with the model's tokenizer, and
# the model fine-tuned on it ----
step "moex data prepare --input"
python3 - "$ROOT/README.md" >"$TMP/own.jsonl" <<'PY'
import json, sys
lines = [l.rstrip("\n") for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
for l in lines[:40]:
    print(json.dumps({"text": l}))
PY
cat "$ROOT/docs/data.md" >"$TMP/notes.txt"
"$MOEX" data prepare --input "$TMP/own.jsonl,$TMP/notes.txt" --model "$MODEL" \
  --out "$TMP/own_corpus" --valid-fraction 0.1 >"$TMP/own_prepare.log" 2>&1 || {
  cat "$TMP/own_prepare.log"
  fail "data prepare --input exited non-zero"
}
grep -q '"tokenizer": "tokenizer.model"' "$TMP/own_corpus/corpus.json" ||
  fail "the own-text corpus does not name its copy of the model's tokenizer"
# Fine-tuning the trained model on it: --init-from gives the model, so the config has none.
python3 - "$TMP/config.json" "$TMP/own_config.json" "$TMP" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
del c["model"]
c["data"]["path"] = sys.argv[3] + "/own_corpus"
c["training"].update(steps=2, eval_every=2, out_dir=sys.argv[3] + "/own_run")
json.dump(c, open(sys.argv[2], "w"))
PY
"$MOEX" train --config "$TMP/own_config.json" --init-from "$MODEL" >"$TMP/own_train.log" 2>&1 || {
  cat "$TMP/own_train.log"
  fail "moex train --init-from on the own-text corpus exited non-zero"
}
grep -q "weights from $MODEL" "$TMP/own_train.log" || fail "the fine-tuning run did not load $MODEL"

# ---- chat data: conversations rendered with the model's chat template (moex's default here), a
# loss mask on the answers, and the model fine-tuned on them ----
step "moex data prepare --chat"
python3 - "$TMP/chat.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(60):
        f.write(json.dumps({"messages": [
            {"role": "system", "content": "You answer in one line."},
            {"role": "user", "content": f"What does step {i} of the working path check?"},
            {"role": "assistant", "content": f"Step {i} checks that the model trains and serves."}]}) + "\n")
PY
"$MOEX" data prepare --chat --input "$TMP/chat.jsonl" --model "$MODEL" --out "$TMP/chat_corpus" \
  --valid-fraction 0.1 >"$TMP/chat_prepare.log" 2>&1 || {
  cat "$TMP/chat_prepare.log"
  fail "data prepare --chat exited non-zero"
}
python3 - "$TMP/chat_corpus/corpus.json" <<'PY' || fail "the chat corpus has no loss mask on part of its tokens"
import json, sys
train = json.load(open(sys.argv[1]))["sources"][0]["train"]
assert train["loss_mask"] == "chat.train.mask", train
assert 0 < train["trained_tokens"] < train["tokens"], train
PY
# One conversation a sample (data.packing false): no sample sees two conversations.
python3 - "$TMP/own_config.json" "$TMP/chat_config.json" "$TMP" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["data"].update(path=sys.argv[3] + "/chat_corpus", packing=False)
c["training"]["out_dir"] = sys.argv[3] + "/chat_run"
json.dump(c, open(sys.argv[2], "w"))
PY
"$MOEX" train --config "$TMP/chat_config.json" --init-from "$MODEL" >"$TMP/chat_train.log" 2>&1 || {
  cat "$TMP/chat_train.log"
  fail "moex train on the chat corpus exited non-zero"
}
[ "$(wc -l <"$TMP/chat_run/metrics.jsonl")" -eq 2 ] || fail "the chat run should log 2 steps"
grep -q "data.packing false: source chat: [0-9][0-9] documents" "$TMP/chat_train.log" ||
  fail "the chat run should take one conversation a sample"
[ "$(wc -l <"$TMP/own_run/metrics.jsonl")" -eq 2 ] && grep -q '"eval_loss"' "$TMP/own_run/metrics.jsonl" ||
  fail "the own-text run should log 2 steps and an eval"

# Python helpers (standard library only): safetensors int32 ids in, f32 logits out.
cat >"$TMP/st.py" <<'PY'
import json, math, struct, sys

def write_ids(path, rows):
    data = b"".join(struct.pack("<%di" % len(r), *r) for r in rows)
    header = json.dumps({"input_ids": {"dtype": "I32", "shape": [len(rows), len(rows[0])],
                                       "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)

def read_f32(path, name):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    meta = json.loads(raw[8:8 + n])[name]
    assert meta["dtype"] == "F32", meta
    a, b = meta["data_offsets"]
    return meta["shape"], struct.unpack("<%df" % ((b - a) // 4), raw[8 + n + a:8 + n + b])

def rows_of(path, name):  # [B, T, V] -> list of B lists of T rows of V floats
    (B, T, V), flat = read_f32(path, name)
    return [[flat[(b * T + t) * V:(b * T + t + 1) * V] for t in range(T)] for b in range(B)]
PY

# ---- tokenize: the ids every later step uses ----
step "moex tokenize"
PROMPT="The MoE layer routes each token"
PROMPT_IDS="$("$MOEX" tokenize --tokenizer "$TOK" --text "$PROMPT" --json)"
python3 - "$PROMPT_IDS" "$("$MOEX" tokenize --tokenizer "$TOK" --text "$PROMPT")" <<'PY' ||
import json, sys
ids = json.loads(sys.argv[1])["ids"]
assert ids[0] == 1 and len(ids) >= 4, ids        # BOS first, then the text
assert ids == [int(x) for x in sys.argv[2].split(",")], "--json and plain output differ"
PY
  fail "moex tokenize --json"
DECODED="$("$MOEX" tokenize --tokenizer "$TOK" --decode --ids "$(python3 -c 'import json,sys; print(",".join(map(str, json.loads(sys.argv[1])["ids"])))' "$PROMPT_IDS")")"
[ "$DECODED" = "$PROMPT" ] || fail "decode(encode(prompt)) = '$DECODED'"
# --model DIR, as generate, eval and serve take it: the trained model's tokenizer, the same ids.
[ "$("$MOEX" tokenize --model "$MODEL" --text "$PROMPT")" = \
  "$("$MOEX" tokenize --tokenizer "$TOK" --text "$PROMPT")" ] || fail "tokenize --model"

# ---- generate: greedy is reproducible and agrees with eval's logits; sampling follows --seed ----
step "moex generate"
gen() { "$MOEX" generate --model "$MODEL" --prompt "$PROMPT" --max-new-tokens 12 --json "$@"; }
GREEDY="$(gen)"
[ "$GREEDY" = "$(gen)" ] || fail "greedy generation differs between two runs"
# --json's text is what the plain run prints after the prompt.
PLAIN="$("$MOEX" generate --model "$MODEL" --prompt "$PROMPT" --max-new-tokens 12)"
python3 - "$GREEDY" "$PLAIN" "$PROMPT" <<'PY' || fail "generate --json text"
import json, sys
g = json.loads(sys.argv[1])
# $(...) drops the trailing newlines of the plain run's output
assert g["text"] is not None and sys.argv[2] == (sys.argv[3] + g["text"]).rstrip("\n"), (g, sys.argv[2])
new = g["tokens"][g["prompt_tokens"]:]
assert g["prompt_tokens"] >= 4, g
if g["finish_reason"] == "stop":
    assert new and new[-1] == 2, g  # EOS
else:
    assert g["finish_reason"] == "length" and len(new) == 12 and new[-1] != 2, g
PY
SAMPLED="$(gen --temperature 1.0 --top-k 50 --seed 7)"
[ "$SAMPLED" = "$(gen --temperature 1.0 --top-k 50 --seed 7)" ] ||
  fail "sampled generation differs between two runs with --seed 7"
# Greedy decoding re-checked by teacher forcing: eval's logits at each position pick the next
# generated token.
python3 - "$TMP" "$PROMPT_IDS" "$GREEDY" "$SAMPLED" <<'PY' || fail "generate output"
import json, sys
sys.path.insert(0, sys.argv[1])
import st
prompt = json.loads(sys.argv[2])["ids"]
for name, text in (("greedy", sys.argv[3]), ("sampled", sys.argv[4])):
    toks = json.loads(text)["tokens"]
    assert toks[:len(prompt)] == prompt, (name, "does not start with the prompt ids", toks)
    new = toks[len(prompt):]
    assert 1 <= len(new) <= 12 and all(0 <= t < 400 for t in new), (name, new)
    assert len(new) == 12 or new[-1] == 2, (name, "stopped early without EOS", new)
st.write_ids(sys.argv[1] + "/greedy_ids.safetensors", [json.loads(sys.argv[3])["tokens"]])
PY
"$MOEX" eval --model "$MODEL" --input-ids "$TMP/greedy_ids.safetensors" \
  --logits-out "$TMP/greedy_logits.safetensors" >/dev/null
python3 - "$TMP" "$PROMPT_IDS" "$GREEDY" <<'PY' || fail "greedy tokens are not the argmax of eval's logits"
import json, sys
sys.path.insert(0, sys.argv[1])
import st
n = len(json.loads(sys.argv[2])["ids"])
toks = json.loads(sys.argv[3])["tokens"]
rows = st.rows_of(sys.argv[1] + "/greedy_logits.safetensors", "logits")[0]
for t in range(n - 1, len(toks) - 1):
    row = rows[t]
    best = max(range(len(row)), key=row.__getitem__)
    assert best == toks[t + 1], (t, best, toks[t + 1])
PY

# ---- eval: the loss is the mean next-token cross-entropy of its own logits ----
step "moex eval"
python3 - "$TMP" "$MOEX" "$TOK" <<'PY' || fail "writing eval ids"
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
import st
texts = ["Each subcommand has --help.", "Training writes metrics, a loss plot and checkpoints."]
rows = [json.loads(subprocess.check_output([sys.argv[2], "tokenize", "--tokenizer", sys.argv[3],
                                            "--text", t, "--json"]))["ids"] for t in texts]
T = min(len(r) for r in rows)
st.write_ids(sys.argv[1] + "/eval_ids.safetensors", [r[:T] for r in rows])
PY
EVAL="$("$MOEX" eval --model "$MODEL" --input-ids "$TMP/eval_ids.safetensors" \
  --logits-out "$TMP/eval_logits.safetensors")"
python3 - "$TMP" "$EVAL" <<'PY' || fail "eval loss is not the cross-entropy of its logits"
import json, math, struct, sys
sys.path.insert(0, sys.argv[1])
import st
loss = json.loads(sys.argv[2])["loss"]
raw = open(sys.argv[1] + "/eval_ids.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
B, T = json.loads(raw[8:8 + n])["input_ids"]["shape"]
ids = struct.unpack("<%di" % (B * T), raw[8 + n:])
logits = st.rows_of(sys.argv[1] + "/eval_logits.safetensors", "logits")
total = 0.0
for b in range(B):
    for t in range(T - 1):
        row = logits[b][t]
        m = max(row)
        total += m + math.log(sum(math.exp(x - m) for x in row)) - row[ids[b * T + t + 1]]
ce = total / (B * (T - 1))
assert abs(ce - loss) < 1e-4 * max(1.0, ce), (ce, loss)
assert 0 < loss < math.log(400) + 1, loss
PY

# ---- prune: keep 3 of the 4 experts by routing frequency; the result loads, runs, and is smaller ----
step "moex prune"
PRUNED_JSON="$("$MOEX" prune --model "$MODEL" --out "$TMP/pruned" --keep-experts 3 \
  --calibration "$TMP/eval_ids.safetensors")"
PRUNED_EVAL="$("$MOEX" eval --model "$TMP/pruned" --input-ids "$TMP/eval_ids.safetensors")"
python3 - "$PRUNED_JSON" "$PRUNED_EVAL" <<'PY' || fail "prune"
import json, math, sys
p, e = json.loads(sys.argv[1]), json.loads(sys.argv[2])
# one MoE layer (layer_freq 2 of 2 layers): 1 expert of d=32 x 3 x F=32 weights + a router row
assert p["params_before"] - p["params_after"] == 3 * 32 * 32 + 32, p
assert all(len(k) == 3 for k in p["kept"].values()), p
assert math.isfinite(e["loss"]) and 0 < e["loss"] < math.log(400) + 2, e
PY
[ -f "$TMP/pruned/tokenizer.model" ] || fail "prune did not copy the tokenizer"
# ... and by gate mass over 512 tokens of a prepared dataset, keeping only the MoE block (layer
# dropping): one block of 3 experts, the embedding, final norm and head
PRUNED2_JSON="$("$MOEX" prune --model "$MODEL" --out "$TMP/pruned2" --keep-experts 3 \
  --rank-by gate-mass --keep-layers 1 --calibration "$TMP/corpus/bible.en.train" \
  --calibration-tokens 512)" || fail "prune by gate mass on a dataset"
"$MOEX" eval --model "$TMP/pruned2" --input-ids "$TMP/eval_ids.safetensors" >/dev/null ||
  fail "the layer-pruned model does not evaluate"
python3 - "$PRUNED_JSON" "$PRUNED2_JSON" <<'PY' || fail "prune --keep-layers"
import json, sys
full, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert p["kept_layers"] == [1] and list(p["kept"]) == ["1"] and len(p["kept"]["1"]) == 3, p
assert p["rank_by"] == "gate-mass" and p["format"] == "moex", p
# the dropped dense block 0: attention (q 32 wide, k and v 2 kv heads x 8) and per-head q/k norms,
# its SwiGLU MLP of 64 and its two RMSNorms
block0 = 32 * (32 + 2 * 16) + 32 * 32 + 2 * 8 + 3 * 32 * 64 + 2 * 32
assert p["params_after"] == full["params_after"] - block0, (p, full, block0)
# active per token: top-2 of the 3 kept experts, so one expert's 3 * 32 * 32 weights idle
assert p["params_after"] - p["active_params_after"] == 3 * 32 * 32, p
PY

# ---- distill: a one-block student from the trained model's MoE block; KD for 2 of 4 steps ----
step "moex distill"
python3 - "$TMP" <<'PY' || fail "writing the distill config"
import json, sys
c = json.load(open(sys.argv[1] + "/config.json"))
c["model"]["num_layers"] = 1
c["model"]["moe"]["layer_freq"] = 1
c["training"].update({"steps": 4, "eval_every": 4, "out_dir": sys.argv[1] + "/student"})
c["distill"] = {"alpha": 0.5, "temperature": 2.0, "stop_kd_at_step": 2,
                "init_from_teacher_layers": [1]}
json.dump(c, open(sys.argv[1] + "/distill.json", "w"))
PY
"$MOEX" distill --teacher "$MODEL" --config "$TMP/distill.json" >"$TMP/distill.log" 2>&1 || {
  cat "$TMP/distill.log"
  fail "moex distill exited non-zero"
}
python3 - "$TMP/student/metrics.jsonl" <<'PY' || fail "distill metrics"
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
assert len(m) == 4, m
assert all(x["kd_loss"] > 0 and x["kd_alpha"] == 0.5 for x in m[:2]), m
assert all(x["kd_loss"] == 0 and x["kd_alpha"] == 0 and x["loss"] == x["lm_loss"] for x in m[2:]), m
PY
DISTILL_EVAL="$("$MOEX" eval --model "$TMP/student/final" --input-ids "$TMP/eval_ids.safetensors")"
python3 -c 'import json, math, sys; e = json.loads(sys.argv[1]); assert math.isfinite(e["loss"]), e' \
  "$DISTILL_EVAL" || fail "the distilled student does not evaluate"
"$MOEX" distill --teacher "$TMP/nowhere" --config "$TMP/distill.json" 2>"$TMP/distill_err.log" &&
  fail "distill from a missing teacher succeeded"
grep -q "no such directory" "$TMP/distill_err.log" || fail "missing teacher: $(cat "$TMP/distill_err.log")"

# ---- eval --data: perplexity of every source of the valid split ----
step "moex eval --data"
DATA_EVAL="$("$MOEX" eval --model "$MODEL" --data "$TMP/corpus" --split valid --seq-len 32)"
python3 - "$DATA_EVAL" "$TMP/corpus/corpus.json" <<'PY' || fail "eval --data: $DATA_EVAL"
import json, math, sys
e, corpus = json.loads(sys.argv[1]), json.load(open(sys.argv[2]))
names = [s["name"] for s in corpus["sources"] if s["valid"]["tokens"] >= 2]
assert [s["name"] for s in e["sources"]] == names, (e, names)
for s in e["sources"]:
    assert 0 < s["loss"] < math.log(400) + 2 and abs(s["perplexity"] - math.exp(s["loss"])) < 1e-6 * s["perplexity"], s
assert e["tokens"] == sum(s["tokens"] for s in e["sources"]) > 0, e
PY

# ---- export: the Hugging Face directory loads back into moex with the same function ----
step "moex export"
EXPORT="$TMP/export"
"$MOEX" export --model "$MODEL" --out "$EXPORT" --architecture Qwen3MoeForCausalLM >/dev/null \
  2>"$TMP/export.err"
# The model trains with DeepSpeed's aux-loss form, which Hugging Face does not have: said, by field.
grep -q 'model.moe.aux_loss_type "deepspeed" has no Hugging Face equivalent' "$TMP/export.err" ||
  fail "export did not warn about model.moe.aux_loss_type: $(cat "$TMP/export.err")"
# tokenize reads the export's directory as generate does (its tokenizer.json is a Unigram copy of
# the SentencePiece model beside it): the same ids as the corpus tokenizer.
[ "$("$MOEX" tokenize --tokenizer "$EXPORT" --text "$PROMPT")" = \
  "$("$MOEX" tokenize --tokenizer "$TOK" --text "$PROMPT")" ] || fail "tokenize of the export's directory"
for f in config.json model.safetensors generation_config.json tokenizer.model tokenizer.json \
  tokenizer_config.json; do
  [ -f "$EXPORT/$f" ] || fail "export has no $f"
done
[ ! -e "$EXPORT.tmp" ] || fail "export left $EXPORT.tmp behind"
EXPORT_EVAL="$("$MOEX" eval --model "$EXPORT" --input-ids "$TMP/eval_ids.safetensors" \
  --logits-out "$TMP/export_logits.safetensors")"
[ "$("$MOEX" generate --model "$EXPORT" --prompt "$PROMPT" --max-new-tokens 12 --json)" = "$GREEDY" ] ||
  fail "greedy generation from the export differs from the trained model's"
python3 - "$EXPORT" "$EVAL" "$EXPORT_EVAL" "$TMP/corpus/corpus.json" <<'PY' || fail "exported files"
import json, sys
d = sys.argv[1]
cfg = json.load(open(d + "/config.json"))
gen = json.load(open(d + "/generation_config.json"))
tc = json.load(open(d + "/tokenizer_config.json"))
tj = json.load(open(d + "/tokenizer.json"))
corpus = json.load(open(sys.argv[4]))  # the tokenizer's ids, as data prepare recorded them
bos, eos = corpus["bos_id"], corpus["eos_id"]
assert (bos, eos) == (1, 2), corpus
assert cfg["architectures"] == ["Qwen3MoeForCausalLM"] and cfg["vocab_size"] == 400, cfg
assert gen == {"bos_token_id": bos, "eos_token_id": eos}, gen
assert cfg["bos_token_id"] == bos and cfg["eos_token_id"] == eos, cfg
assert tc["tokenizer_class"] == "PreTrainedTokenizerFast", tc
assert (tc["bos_token"], tc["eos_token"], tc["unk_token"]) == ("<s>", "</s>", "<unk>"), tc
assert tc["pad_token"] is None and tc["add_bos_token"] is True and tc["model_max_length"] == 64, tc
vocab = tj["model"]["vocab"]
assert tj["model"]["type"] == "Unigram" and len(vocab) <= 400, tj["model"]["type"]
assert [vocab[i][0] for i in (0, 1, 2)] == ["<unk>", "<s>", "</s>"], vocab[:3]
added = {t["content"]: t["id"] for t in tj["added_tokens"]}
assert added["<s>"] == 1 and added["</s>"] == 2 and "<lang:en>" in added, added
assert tj["post_processor"]["special_tokens"]["<s>"]["ids"] == [1], tj["post_processor"]
a, b = json.loads(sys.argv[2])["loss"], json.loads(sys.argv[3])["loss"]
assert abs(a - b) < 1e-5, ("eval loss of the export differs", a, b)
PY
cmp -s "$MODEL/tokenizer.model" "$EXPORT/tokenizer.model" || fail "tokenizer.model was not copied as is"
# An export that fails (Mixtral has no per-head q/k norm) leaves the earlier one as it was.
sum_before="$(cat "$EXPORT"/* | cksum)"
if err="$("$MOEX" export --model "$MODEL" --out "$EXPORT" --architecture MixtralForCausalLM 2>&1)"; then
  fail "export to Mixtral of a model with per-head q/k norm succeeded"
fi
[[ "$err" == *"qk_norm"* ]] || fail "the failed export's error does not name qk_norm: $err"
[ "$(cat "$EXPORT"/* | cksum)" = "$sum_before" ] && [ ! -e "$EXPORT.tmp" ] ||
  fail "a failed export changed $EXPORT or left $EXPORT.tmp"

if [ -n "$KEEP" ]; then
  mkdir -p "$KEEP"
  rm -rf "$KEEP/export"
  cp -r "$EXPORT" "$KEEP/export"
  cp "$TMP/eval_ids.safetensors" "$TMP/export_logits.safetensors" "$KEEP/"
  python3 - "$MOEX" "$TOK" "$KEEP" <<'PY'
import json, subprocess, sys
moex, tok, keep = sys.argv[1:4]
texts = ["The MoE layer routes each token", "Hello world", "moex export --model DIR --out DIR",
         "Café, naïve résumé: déjà vu.", "  two  spaces  ", "tabs\tand\nnewlines", "数字 123 ✓"]
def moex_json(*args):
    return json.loads(subprocess.check_output([moex, "tokenize", "--tokenizer", tok, *args]))
ids = {t: moex_json("--text", t, "--json")["ids"] for t in texts}
text = {t: moex_json("--decode", "--ids", ",".join(map(str, ids[t])), "--json")["text"]
        for t in texts}
json.dump({"tokenize": ids, "decode": text, "eval_ids": "eval_ids.safetensors",
           "logits": "export_logits.safetensors"}, open(keep + "/reference.json", "w"), indent=1)
PY
  echo "kept the export and its references in $KEEP"
fi
echo "working path: all steps passed"
