#!/usr/bin/env bash
# One run on a GPU machine: build (or use the binaries carried in .devcarry/), run the GPU tests,
# moex's benchmarks (MoE layer, attention, whole training step) and their PyTorch peers, write
# logs to $OUT, print ratio tables last.
#   OUT=/tmp/out scripts/gpu_check.sh
# Parts can be skipped: MOEX_SKIP_TESTS=1 (every test), MOEX_SKIP_DIST_GPU=1 (the mpirun tests), MOEX_SKIP_EXPORT=1, MOEX_SKIP_BENCH=1 (the MoE layer),
# MOEX_SKIP_ATTN_BENCH=1, MOEX_SKIP_DECODE_BENCH=1, MOEX_SKIP_DECODE_PEER=1, MOEX_SKIP_PREFILL_BENCH=1, MOEX_SKIP_SERVE_BENCH=1, MOEX_SKIP_PREFIX_BENCH=1, MOEX_SKIP_TRAIN_BENCH=1, MOEX_SKIP_OFFLOAD_BENCH=1; MOEX_TRAIN_PEER_ARGS picks
# training peers (train_peers.py flags). MOEX_DECODE_BATCHES narrows the decode batches, MOEX_DECODE_NCU=1
# adds a per-kernel profile of one batch-1 step, MOEX_TRAIN_NCU=small|medium one of a training step. MOEX_GPU_TEST_FILTER (a gtest filter, e.g. "MoEDecode*:Gpu.Decode*")
# runs only the matching GPU tests, to spend little device time on a kernel change; MOEX_DIST_GPU_FILTER
# does the same for the mpirun tests (two ranks only).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/moex_gpu_check}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

# Binaries: carried ones (scripts/make_devcarry.sh: built elsewhere for sm_90a, with their
# non-CUDA shared libraries) or a build.
[ -f .devcarry/bin.tar.xz ] && tar xJf .devcarry/bin.tar.xz -C .devcarry
if [ -x .devcarry/bin/moex_gpu_tests ] && [ -x .devcarry/bin/moex ] && [ -x .devcarry/bin/moex_gpu_kernel_tests ]; then
  BIN=.devcarry/bin
  LIBS=/tmp/moex_libs
  mkdir -p "$LIBS"
  [ -f .devcarry/libs.tar.xz ] && tar xJf .devcarry/libs.tar.xz -C "$LIBS"
  [ -d .devcarry/lib ] && cp .devcarry/lib/* "$LIBS"/
  export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
else
  export PATH=/usr/local/cuda/bin:$PATH
  cmake -S . -B build-cuda -G Ninja >/dev/null && cmake --build build-cuda -j"$(nproc)" --target moex moex_gpu_tests moex_gpu_kernel_tests moex_bench_attention || exit 1
  BIN=build-cuda
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# The exit status is non-zero when a GPU test fails or is skipped, or when the export check fails.
status=0
if [ -z "${MOEX_SKIP_TESTS:-}" ]; then
  for suite in moex_gpu_kernel_tests moex_gpu_tests; do
    "$BIN/$suite" --gtest_brief=1 ${MOEX_GPU_TEST_FILTER:+--gtest_filter="$MOEX_GPU_TEST_FILTER"} \
      >"$OUT/$suite.log" 2>&1
    tests_exit=$?
    echo "$suite: exit $tests_exit"
    grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]|^\[ info \]|FAILED|SKIPPED|Failure|error" "$OUT/$suite.log" | head -60
    if [ "$tests_exit" -ne 0 ]; then status=1; fi
    if grep -q "^\[  SKIPPED \]" "$OUT/$suite.log"; then
      echo "$suite: some were skipped (a skipped GPU test counts as a failure)"
      status=1
    fi
    if ! grep -q "^\[  PASSED  \]" "$OUT/$suite.log"; then status=1; fi
  done
fi

# Distributed training on GPU ranks: mpirun -np 2 on the one GPU, the GPU collectives through MPI
# in host memory (MOEX_GPU_COLLECTIVES=host; NCCL refuses two ranks on one GPU). The GPU image has
# no MPI: make_devcarry.sh carries Open MPI's runtime (.devcarry/ompi.tar.xz), unpacked and
# relocated here with OPAL_PREFIX. No mpirun at all counts as a failure, like a skipped test.
if [ -z "${MOEX_SKIP_TESTS:-}" ] && [ -z "${MOEX_SKIP_DIST_GPU:-}" ]; then
  MPIRUN=$(command -v mpirun || true)
  if [ -z "$MPIRUN" ] && [ -f .devcarry/ompi.tar.xz ]; then
    OMPI_ROOT=/tmp/moex_ompi
    mkdir -p "$OMPI_ROOT" && tar xJf .devcarry/ompi.tar.xz -C "$OMPI_ROOT"
    export OPAL_PREFIX="$OMPI_ROOT/usr" OMPI_MCA_mca_base_component_show_load_errors=0
    export PMIX_INSTALL_PREFIX="$OMPI_ROOT/usr/lib/x86_64-linux-gnu/pmix2"
    export LD_LIBRARY_PATH="$OMPI_ROOT/usr/lib/x86_64-linux-gnu:$OMPI_ROOT/usr/lib/x86_64-linux-gnu/openmpi/lib:$LD_LIBRARY_PATH"
    MPIRUN="$OMPI_ROOT/usr/bin/orterun"
  fi
  if [ -z "$MPIRUN" ] || [ ! -x "$BIN/moex_dist_gpu_tests" ]; then
    echo "moex_dist_gpu_tests: no mpirun or no binary: not run (counts as a failure)"
    status=1
  else
    # Two ranks for every layout but tp x ep (with and without DTD), which takes four.
    dist_exit=0
    : >"$OUT/moex_dist_gpu_tests.log"
    # MOEX_DIST_GPU_FILTER (a gtest filter) runs only those tests, at two ranks.
    for np in 2 4; do
      filter='-GpuFourRanks.*'
      [ "$np" = 4 ] && filter='GpuFourRanks.*'
      if [ -n "${MOEX_DIST_GPU_FILTER:-}" ]; then
        [ "$np" = 4 ] && continue
        filter="$MOEX_DIST_GPU_FILTER"
      fi
      log="$OUT/moex_dist_gpu_tests_np$np.log"
      (cd "$OUT" && MOEX_GPU_COLLECTIVES=host timeout 900 "$MPIRUN" --allow-run-as-root --oversubscribe \
        -np "$np" -x MOEX_GPU_COLLECTIVES -x LD_LIBRARY_PATH -x OMP_NUM_THREADS=4 \
        "$OLDPWD/$BIN/moex_dist_gpu_tests" --gtest_brief=1 --gtest_color=no --gtest_filter="$filter") \
        >"$log" 2>&1 || dist_exit=1
      grep -q "^\[  PASSED  \]" "$log" || dist_exit=1  # each run must report its tests passed
      cat "$log" >>"$OUT/moex_dist_gpu_tests.log"
    done
    echo "moex_dist_gpu_tests (mpirun -np 2 and -np 4, one GPU): exit $dist_exit"
    grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]|^\[ info \]|Failure|rror" \
      "$OUT/moex_dist_gpu_tests.log" | head -40
    if [ "$dist_exit" -ne 0 ] ||
       grep -q "^\[  SKIPPED \]" "$OUT/moex_dist_gpu_tests.log"; then status=1; fi
    # moex generate --tp 2 --device cuda through the command line (its GPU group, both ranks on
    # this GPU), whole and with sliced experts, beside the one-GPU run, on the carried serving
    # model (scripts/make_devcarry.sh with MOEX_SERVE_MODEL_SRC). bf16 split sums may move a
    # near-tie, so the tokens are printed side by side; a failed run fails the check.
    if [ -d .devcarry/serve_model ]; then
      gen=("$BIN/moex" generate --model .devcarry/serve_model --device cuda --prompt "The history of"
           --max-new-tokens 24 --json)
      echo "== moex generate on the GPU: one rank, --tp 2, --tp 2 --expert-slicing =="
      "${gen[@]}" 2>>"$OUT/tp_generate.err" || status=1
      for extra in "" "--expert-slicing"; do
        # shellcheck disable=SC2086
        MOEX_GPU_COLLECTIVES=host timeout 300 "$MPIRUN" --allow-run-as-root --oversubscribe -np 2 \
          -x MOEX_GPU_COLLECTIVES -x LD_LIBRARY_PATH -x OMP_NUM_THREADS=4 "${gen[@]}" --tp 2 $extra \
          2>>"$OUT/tp_generate.err" || { echo "generate --tp 2 $extra failed"; status=1; }
      done
    fi
    # The GPU layer with its experts over the two ranks (mixtral shape): the exchanges' bytes per
    # forward+backward, plain and as a checkpointed layer with CAC. Through host memory on one GPU,
    # so the times say little; the bytes are what a run over NCCL sends.
    if [ -z "${MOEX_SKIP_BENCH:-}" ]; then
      for extra in "" "--cac"; do
        (cd "$OUT" && MOEX_GPU_COLLECTIVES=host timeout 300 "$MPIRUN" --allow-run-as-root \
          --oversubscribe -np 2 -x MOEX_GPU_COLLECTIVES -x LD_LIBRARY_PATH \
          "$OLDPWD/$BIN/moex" bench moe-layer --device cuda --ep 2 --shape mixtral --json \
          --iters 5 $extra) 2>&1 | tee -a "$OUT/moe_layer_ep.log" | grep -E '^\{|rror'
      done
    fi
  fi
fi

# Export check: tests/cli/working_path_test.sh trains a tiny model on the CPU with $BIN/moex and
# keeps its Hugging Face export; transformers must load it and agree with moex (ids, logits, eos).
if [ -z "${MOEX_SKIP_EXPORT:-}" ]; then
  rm -rf "$OUT/hf_export"
  if tests/cli/working_path_test.sh "$BIN/moex" "$OUT/hf_export" >"$OUT/working_path.log" 2>&1; then
    HF_HUB_OFFLINE=1 python3 tests/reference/check_hf_export.py --trained "$OUT/hf_export" \
      >"$OUT/hf_export_check.log" 2>&1
    export_exit=$?
    echo "hf export check: exit $export_exit"
    if [ "$export_exit" -ne 0 ]; then status=1; fi
    grep -E "^(FAIL|ALL OK|MISMATCH)|Error|error" "$OUT/hf_export_check.log" | head -20
  else
    echo "hf export check: working_path_test.sh failed"
    status=1
    tail -n 20 "$OUT/working_path.log"
  fi
fi

# Pruning check: moex prune on the transformers-saved fixtures (tests/fixtures/hf); transformers
# must load each pruned directory and agree with moex eval and with the same pruning done in torch.
if [ -z "${MOEX_SKIP_EXPORT:-}" ]; then
  rm -rf "$OUT/pruned_hf"
  HF_HUB_OFFLINE=1 python3 tests/reference/check_pruned_hf.py --moex "$BIN/moex" \
    --work "$OUT/pruned_hf" >"$OUT/pruned_hf_check.log" 2>&1
  prune_exit=$?
  echo "hf pruned check: exit $prune_exit"
  if [ "$prune_exit" -ne 0 ]; then status=1; fi
  grep -E "BAD|ALL OK|MISMATCH|Error|error" "$OUT/pruned_hf_check.log" | head -20
fi

if [ -z "${MOEX_SKIP_BENCH:-}" ]; then
  : >"$OUT/moex_bench.jsonl"
  for shape in mixtral finegrained gshard; do
    # dropless = padded strided-batched GEMMs (the default); dropless-grouped = exact rows through
    # cublasGemmGroupedBatchedEx (bf16 out) + one GEMM per expert for the fp32 weight gradients.
    for mode in capacity dropless dropless-grouped; do
      "$BIN/moex" bench moe-layer --device cuda --shape "$shape" --mode "$mode" --json \
        >>"$OUT/moex_bench.jsonl" 2>>"$OUT/moex_bench.err" || echo "moex bench $shape $mode failed" | tee -a "$OUT/moex_bench.err"
    done
  done
  PYTHONUNBUFFERED=1 python3 bench/peers/moe_peers.py >"$OUT/peers.jsonl" 2>"$OUT/peers.err" || echo "peers exit $?"
  grep -h "grouped GEMM calls\|failed" "$OUT/moex_bench.err" | head -6
  tail -n 5 "$OUT/moex_bench.err" "$OUT/peers.err"
  python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def rows(p):
    return [json.loads(l) for l in open(os.path.join(out, p)) if l.strip().startswith("{")]
m = rows("moex_bench.jsonl"); p = rows("peers.jsonl")
gpu = open(os.path.join(out, "gpu.txt")).read().strip()
print(f"\n== MoE layer fwd+bwd, bf16, {gpu} ==")
print(f"{'shape':12} {'impl':22} {'fwd_ms':>8} {'fwdbwd_ms':>10} {'TFLOP/s':>8} {'vs dense':>8} {'moex speedup':>12}")
for shape in ["mixtral", "finegrained", "gshard"]:
    mm = {r["mode"]: r for r in m if r["shape"] == shape}
    pp = {r["peer"]: r for r in p if r.get("shape") == shape and "error" not in r}
    for mode, r in mm.items():
        print(f"{shape:12} {'moex ' + mode:22} {r['fwd_ms']:8.2f} {r['fwdbwd_ms']:10.2f} {r['fwdbwd_tflops']:8.1f} "
              f"{r['fwdbwd_tflops'] / r['dense_fwdbwd_tflops']:8.2f} {'':>12}")
    if mm:
        r = next(iter(mm.values()))
        print(f"{shape:12} {'moex dense (same FLOPs)':22} {'':8} {'':10} {r['dense_fwdbwd_tflops']:8.1f}")
    best_dropless = min([mm[k]['fwdbwd_ms'] for k in ('dropless', 'dropless-grouped') if k in mm] or [float('nan')])
    for peer, r in pp.items():
        ref = mm.get("capacity", {}).get("fwdbwd_ms") if peer == "deepspeed" else best_dropless
        sp = (r["fwdbwd_ms"] / ref) if ref else float("nan")
        print(f"{shape:12} {'peer ' + peer:22} {r['fwd_ms']:8.2f} {r['fwdbwd_ms']:10.2f} {r['fwdbwd_tflops']:8.1f} "
              f"{r['fwdbwd_tflops'] / r['dense_fwdbwd_tflops']:8.2f} {sp:11.2f}x")
print(f"\n== dropless host sync (counts copy + stream sync inside forward), {gpu} ==")
print(f"{'shape':12} {'mode':18} {'fwd_ms':>8} {'known_counts_ms':>15} {'host_sync_ms':>12} {'host_wait_ms':>12}")
for r in m:
    if "host_sync_ms" in r:
        print(f"{r['shape']:12} {r['mode']:18} {r['fwd_ms']:8.3f} {r['fwd_known_counts_ms']:15.3f} "
              f"{r['host_sync_ms']:12.3f} {r['host_wait_ms']:12.3f}")
for r in p:
    if "error" in r:
        print("peer error:", r)
PY
fi
# Attention: moex's flash kernels against torch's scaled_dot_product_attention, same shapes.
if [ -z "${MOEX_SKIP_ATTN_BENCH:-}" ] && [ -x "$BIN/moex_bench_attention" ]; then
  "$BIN/moex_bench_attention" >"$OUT/attn_bench.jsonl" 2>"$OUT/attn_bench.err" || echo "attention bench failed"
  python3 bench/peers/attention_peer.py >>"$OUT/attn_bench.jsonl" 2>>"$OUT/attn_bench.err" || echo "attention peer failed"
  python3 - "$OUT" <<'PY'
import json, sys, os
lines = [json.loads(l) for l in open(os.path.join(sys.argv[1], "attn_bench.jsonl")) if l.startswith("{")]
rows = [r for r in lines if "fwdbwd_ms" in r]
prefill = [r for r in lines if r.get("prefill")]
print("\n== causal GQA attention, bf16 ==")
print(f"{'shape':8} {'impl':12} {'fwd_ms':>8} {'fwdbwd_ms':>10} {'fwd TF/s':>9} {'fwdbwd TF/s':>11}")
for r in rows:
    print(f"{r['shape']:8} {r['impl']:12} {r['fwd_ms']:8.3f} {r['fwdbwd_ms']:10.3f} {r['fwd_tflops']:9.1f} {r['fwdbwd_tflops']:11.1f}")
for shape in sorted({r['shape'] for r in rows}):
    t = [r for r in rows if r['shape'] == shape and not r['impl'].startswith('moex')]
    for impl in ("moex", "moex-cudnn"):
        m = [r for r in rows if r['shape'] == shape and r['impl'] == impl]
        if m and t:
            print(f"{shape}: torch/{impl} time ratio fwd {t[0]['fwd_ms'] / m[0]['fwd_ms']:.2f}, fwd+bwd {t[0]['fwdbwd_ms'] / m[0]['fwdbwd_ms']:.2f} (>1: moex faster)")
print("\n== serving prefill over the paged pool (32/8 heads of 128, 16-position blocks), forward ms ==")
impls = ["moex_paged_rows", "moex_paged_tiles", "moex_contiguous", "torch_sdpa"]
print(f"{'shape':14} {'first':>6} {'rows':>5} " + " ".join(f"{i:>17}" for i in impls) + "  sdpa/tiles")
for shape in dict.fromkeys(r["shape"] for r in prefill):
    by = {r["impl"]: r for r in prefill if r["shape"] == shape}
    any_r = next(iter(by.values()))
    cells = [f"{by[i]['fwd_ms']:8.3f} ({by[i]['fwd_tflops']:5.0f}T)" if "fwd_ms" in by.get(i, {}) else f"{'-':>17}" for i in impls]
    ratio = by["torch_sdpa"]["fwd_ms"] / by["moex_paged_tiles"]["fwd_ms"] if "fwd_ms" in by.get("torch_sdpa", {}) and "moex_paged_tiles" in by else float("nan")
    print(f"{shape:14} {any_r.get('first', 0):6} {any_r.get('rows', 0):5} " + " ".join(cells) + f"  {ratio:.2f}")
PY
fi

# Decode: batches of sequences through the serving scheduler on a Mixtral-sized 4-layer model,
# against the bytes-per-step floor, then the PyTorch peers (torch.compile reduce-overhead, HF
# generate; MOEX_SKIP_DECODE_PEER=1 skips them).
if [ -z "${MOEX_SKIP_DECODE_BENCH:-}" ]; then
  : >"$OUT/decode_bench.jsonl"
  # One process for every batch size: drawing the 6-billion-parameter model's weights takes longest.
  # MOEX_DECODE_BATCHES narrows the batch sizes (moex and the peer), e.g. "1".
  BATCHES=${MOEX_DECODE_BATCHES:-1,8,32}
  timeout 300 "$BIN/moex" bench decode --device cuda --shape mixtral4l --batch "$BATCHES" --tokens 64 \
    --json >>"$OUT/decode_bench.jsonl" 2>>"$OUT/decode_bench.err" || echo "moex decode failed"
  # MOEX_DECODE_NCU=1: every kernel of one batch-1 decode step, each timed alone by Nsight Compute
  # (the weights' random fill runs first: give it minutes), summed per kernel name.
  if [ -n "${MOEX_DECODE_NCU:-}" ]; then
    timeout 300 ncu --clock-control none --cache-control none --graph-profiling node \
      --metrics gpu__time_duration.sum --csv "$BIN/moex" bench decode --device cuda \
      --shape mixtral4l --batch 1 --tokens 2 --json >"$OUT/decode_ncu.csv" 2>"$OUT/decode_ncu.err" ||
      echo "ncu exit $?"
    python3 - "$OUT/decode_ncu.csv" <<'PY'
import collections, csv, re, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10 and r[0].isdigit()]
starts = [i for i, r in enumerate(rows) if "embedding" in r[4]]
if not starts:
    sys.exit("decode ncu: no step found")
total, per = 0.0, collections.Counter()
counts = collections.Counter()
for r in rows[starts[-1]:]:  # the last step: from its embedding lookup on
    name = re.sub(r"\(.*", "", r[4]).replace("void ", "")[:70]
    us = float(r[-1].replace(",", "")) / 1000
    total += us
    per[name] += us
    counts[name] += 1
print(f"\n== decode batch 1, one step's kernels (ncu): {len(rows) - starts[-1]} kernels, {total:.1f} us ==")
for name, us in per.most_common():
    print(f"{counts[name]:4d} {us:8.1f}  {name}")
PY
  fi
  if [ -z "${MOEX_SKIP_DECODE_PEER:-}" ]; then
    # MOEX_DECODE_PEER_ARGS: more decode_peer.py flags, e.g. "--impl compile".
    PYTHONUNBUFFERED=1 timeout 420 python3 bench/peers/decode_peer.py --batch "$BATCHES" --tokens 64 \
      ${MOEX_DECODE_PEER_ARGS:-} >>"$OUT/decode_bench.jsonl" 2>"$OUT/decode_peer.err" || echo "decode peer exit $?"
    tail -n 5 "$OUT/decode_peer.err"
  fi
  python3 - "$OUT" <<'PY'
import json, sys, os
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "decode_bench.jsonl")) if l.startswith("{")]
print("\n== decode, mixtral4l, bf16 ==")
print(f"{'impl':12} {'batch':>5} {'ms/step':>8} {'tokens/s':>9} {'floor ms':>8} {'of floor':>8} {'graph ms':>8} {'launch ms':>9} {'wait ms':>8}")
for r in rows:
    impl = r.get("impl", "moex")
    if "error" in r:
        print(f"{impl:12} {r.get('batch', '?'):>5} error: {str(r['error'])[:100]}")
        continue
    print(f"{impl:12} {r['batch']:5d} {r['ms_per_step']:8.3f} {r['tokens_per_s']:9.0f} "
          f"{r['floor_ms']:8.3f} {r['frac_of_floor']:8.2f} {r.get('graph_ms', 0):8.3f} "
          f"{r.get('host_launch_ms', 0):9.3f} {r.get('host_wait_ms', 0):8.3f}")
PY
fi

# Long context: one sequence's 4000-token prompt in one serving step on mixtral4l (prefill_ms, the
# second of two runs on one model, so warm), then batch-1 decode steps at ~4K positions: as built
# (prompt tiles on tensor cores, decode rows' positions split over blocks), with every prompt row
# attended alone (MOEX_PAGED_TILES=0), and with one block per decode row (MOEX_POSITION_SPLITS=1);
# MOEX_LONG_VARIANTS narrows the list.
if [ -z "${MOEX_SKIP_PREFILL_BENCH:-}" ]; then
  : >"$OUT/prefill_bench.jsonl"
  for variant in ${MOEX_LONG_VARIANTS:-as_built MOEX_PAGED_TILES=0 MOEX_POSITION_SPLITS=1}; do
    env $([ "$variant" = as_built ] || echo "$variant") "$BIN/moex" bench decode --device cuda \
      --shape mixtral4l --batch 1,1 --prompt 4000 --tokens 24 --json 2>>"$OUT/prefill_bench.err" |
      tail -1 | sed "s/^{/{\"variant\": \"$variant\", /" >>"$OUT/prefill_bench.jsonl"
  done
  python3 - "$OUT" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "prefill_bench.jsonl")) if l.startswith("{")]
print("\n== a 4000-token prompt prefilled in one step, then batch-1 decode, mixtral4l ==")
for r in rows:
    print(f"{r['variant']:24} prefill {r['prefill_ms']:8.1f} ms, decode {r['ms_per_step']:.3f} ms/step (graph {r.get('graph_ms', 0):.3f}, floor {r['floor_ms']:.3f})")
PY
fi

# Serving: bench/serve_bench.py (K concurrent streaming clients) against moex serve on the GPU and
# on this machine's CPU cores, with the model in $MOEX_SERVE_MODEL (default .devcarry/serve_model,
# a small trained moex directory; MOEX_SKIP_SERVE_BENCH=1 skips this).
SERVE_MODEL=${MOEX_SERVE_MODEL:-.devcarry/serve_model}
# Starts `moex serve --port 0` with the given arguments, its output in the log file $1 (emptied
# first, so an earlier run's URL is never read), and sets SERVE_PID and SERVE_URL; returns non-zero
# when the server exits or is not listening within two minutes (then it is stopped).
start_serve() {
  local log=$1
  shift
  : >"$log"
  "$BIN/moex" serve --port 0 "$@" >"$log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 1 240); do
    SERVE_URL=$(grep -o '"listening": "[^"]*"' "$log" 2>/dev/null | cut -d'"' -f4)
    [ -n "$SERVE_URL" ] && return 0
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.5
  done
  echo "moex serve $* did not start"
  tail -5 "$log"
  kill "$SERVE_PID" 2>/dev/null
  wait "$SERVE_PID"
  return 1
}
# Ends the server start_serve started (SIGINT: it drains, then exits).
stop_serve() {
  kill -INT "$SERVE_PID"
  wait "$SERVE_PID"
}
# Prints the bench/serve_bench.py lines of the file $1 as a table titled $2: first the columns
# named by the other arguments, each KEY:HEADER:FORMAT[:SHOWN FOR AN EMPTY VALUE] (a Python format
# spec: a number alone is a left-aligned text width), then tokens/s, TTFT p50 and p99, and errors.
serve_table() {
  python3 - "$@" <<'PY'
import json, sys
path, title, *specs = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.startswith("{")]
cols = [(s.split(":") + [""])[:4] for s in specs]
def width(fmt):  # the header's alignment follows the value's: numbers to the right
    return fmt if fmt.isdigit() else ">" + fmt.rstrip("df").split(".")[0]
ms = lambda v: f"{v:9.1f}" if v is not None else f"{'-':>9}"  # null when no request answered
print(f"\n== {title} ==")
print(" ".join(f"{header:{width(fmt)}}" for _, header, fmt, _ in cols) +
      f" {'tokens/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'errors':>6}")
for r in rows:
    print(" ".join(f"{empty if r[key] == '' else r[key]:{fmt}}" for key, _, fmt, empty in cols) +
          f" {r['tokens_per_s']:9.0f} {ms(r['ttft_p50_ms'])} {ms(r['ttft_p99_ms'])} {r['errors']:6d}")
PY
}

if [ -z "${MOEX_SKIP_SERVE_BENCH:-}" ] && [ -f "$SERVE_MODEL/config.json" ]; then
  : >"$OUT/serve_bench.jsonl"
  for dev in cuda cpu; do
    start_serve "$OUT/serve_$dev.log" --model "$SERVE_MODEL" --model-name bench --device $dev \
      --max-batch 8 --max-context 256 || continue
    for clients in 1 8; do
      timeout 300 python3 bench/serve_bench.py "$SERVE_URL" bench --clients $clients --requests 32 \
        --max-tokens 32 | sed "s/^{/{\"device\": \"$dev\", /" >>"$OUT/serve_bench.jsonl"
    done
    stop_serve
  done
  serve_table "$OUT/serve_bench.jsonl" "moex serve, 32 streamed requests of 32 tokens, greedy" \
    device:device:6 clients:clients:7d
fi

# Prefix caching on the GPU: a 2.3 B-parameter Mixtral-style model with random weights
# (bench/random_mixtral.py), 8 clients whose prompts share a ~2000-token passage, with and without
# the cache (each after a warm-up run without the passage). MOEX_SKIP_PREFIX_BENCH=1 skips this.
if [ -z "${MOEX_SKIP_PREFIX_BENCH:-}" ]; then
  : >"$OUT/prefix_bench.jsonl"
  RANDOM_MODEL=/tmp/moex_random_mixtral  # kept between runs on one machine (4.7 GB)
  if [ -f "$RANDOM_MODEL/model.safetensors" ] ||
     python3 bench/random_mixtral.py "$RANDOM_MODEL" >"$OUT/random_mixtral.log" 2>&1; then
    for flag in "" "--no-prefix-caching"; do
      # shellcheck disable=SC2086
      start_serve "$OUT/serve_prefix${flag:+_nocache}.log" --model "$RANDOM_MODEL" \
        --model-name bench --device cuda --max-batch 8 --max-context 4096 $flag || continue
      for words in 0 1500; do
        timeout 200 python3 bench/serve_bench.py "$SERVE_URL" bench --clients 8 --requests 32 \
          --max-tokens 32 --shared-prefix-words $words |
          sed "s/^{/{\"server_flags\": \"$flag\", /" >>"$OUT/prefix_bench.jsonl"
      done
      stop_serve
    done
    serve_table "$OUT/prefix_bench.jsonl" \
      "moex serve on the GPU, prefix caching: 8 clients, 32 requests of 32 tokens" \
      "server_flags:server flags:22:(default)" "shared_prefix_words:shared words:12d" \
      seconds:seconds:8.2f
  else
    echo "bench/random_mixtral.py failed: $(tail -n 1 "$OUT/random_mixtral.log")"
  fi
fi

# Whole training step: moex on configs/gpu-{small,medium}.json against HF Mixtral eager and compiled.
if [ -z "${MOEX_SKIP_TRAIN_BENCH:-}" ]; then
  : >"$OUT/train_bench.jsonl"
  # MOEX_TRAIN_PRECISIONS: the optimizer.moments_dtype/grads_dtype/master_dtype triples to run (by
  # default fp32 state, bf16 moments, bf16 moments and gradients, and all three bf16: the peer's
  # state).
  for shape in small medium; do
    for triple in ${MOEX_TRAIN_PRECISIONS:-fp32/fp32/fp32 bf16/fp32/fp32 bf16/bf16/fp32 bf16/bf16/bf16}; do
      IFS=/ read -r moments grads master <<<"$triple"
      "$BIN/moex" bench train-step --device cuda --config configs/gpu-$shape.json --warmup 3 --iters 8 \
        --moments-dtype "$moments" --grads-dtype "$grads" --master-dtype "$master" --json \
        2>>"$OUT/train_bench.err" |
        sed "s/^{/{\"shape\": \"$shape\", \"moments\": \"$moments\", \"grads\": \"$grads\", \"master\": \"$master\", /" \
        >>"$OUT/train_bench.jsonl" || echo "moex train-step $shape $triple failed"
    done
  done
  # MOEX_TRAIN_PEER_ARGS narrows the peers (e.g. "--shape medium --mode compile") when time is short.
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 python3 bench/peers/train_peers.py --iters 6 --warmup 3 ${MOEX_TRAIN_PEER_ARGS:-} \
    >>"$OUT/train_bench.jsonl" 2>"$OUT/train_peers.err" || echo "train peers exit $?"
  tail -n 3 "$OUT/train_bench.err" "$OUT/train_peers.err"
  python3 - "$OUT" <<'PY'
import json, sys, os
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "train_bench.jsonl")) if l.startswith("{")]
gpu = open(os.path.join(sys.argv[1], "gpu.txt")).read().strip()
print(f"\n== training step (fwd + bwd + clip + AdamW), bf16, {gpu} ==")
print(f"{'shape':8} {'impl':32} {'tokens/s':>10} {'step_ms':>8} {'MFU':>6} {'peak GiB':>9} {'AdamW ms':>8} {'vs HF compile':>13}")
for shape in ["small", "medium"]:
    rs = [r for r in rows if r.get("shape") == shape]
    ref = next((r for r in rs if r.get("peer") == "hf_compile" and "error" not in r), None)
    for r in rs:
        impl = r.get("peer") or (f"moex {r.get('moments', '')} m, {r.get('grads', '')} g, "
                                 f"{r.get('master', '')} w")
        if "error" in r:
            print(f"{shape:8} {impl:32} error: {r['error'][:100]}")
            continue
        ratio = r["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")
        adam = r.get("op_ms", {}).get("adamw")
        adam = f"{adam:8.2f}" if isinstance(adam, (int, float)) else f"{'-':>8}"
        print(f"{shape:8} {impl:32} {r['tokens_per_s']:10.0f} {r['step_ms']:8.1f} "
              f"{r['mfu']:6.3f} {r['peak_mem_gib']:9.1f} {adam} {ratio:12.2f}x")
        if "state_gib" in r:  # where moex's peak goes (GiB); the rest is other buffers
            parts = [r.get(k, 0.0) for k in ("state_gib", "activation_gib", "moe_kept_gib",
                                             "moe_scratch_gib")]
            print(f"{'':8} {'  state, arena, MoE kept, scratch':32} " +
                  " ".join(f"{p:.2f}" for p in parts) +
                  f", other {r['peak_mem_gib'] - sum(parts):.2f}" +
                  f" (MoE rows in gradient memory {r.get('moe_lent_gib', 0.0):.2f})")
PY
fi

# MOEX_TRAIN_NCU=small|medium: every kernel of one training step of that shape, each timed alone by
# Nsight Compute: summed per kernel name, and the step's kernels in order (one layer's worth). The
# step time without ncu minus the kernels' sum is the time the GPU waits (host syncs, launches).
if [ -n "${MOEX_TRAIN_NCU:-}" ]; then
  timeout 400 ncu --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum,launch__grid_size --csv "$BIN/moex" bench train-step \
    --device cuda --config "configs/gpu-$MOEX_TRAIN_NCU.json" --warmup 0 --iters 1 --json \
    >"$OUT/train_ncu.csv" 2>"$OUT/train_ncu.err" || echo "ncu exit $?"
  python3 - "$OUT/train_ncu.csv" <<'PY'
import collections, csv, re, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10 and r[0].isdigit()]
# One row per (kernel, metric): pair them up by kernel id.
kern = collections.OrderedDict()
for r in rows:
    k = kern.setdefault(r[0], {"name": r[4]})
    k[r[-3]] = r[-1]
ks = list(kern.values())
def metric(k, prefix):
    for key, v in k.items():
        if key.startswith(prefix):
            return float(v.replace(",", ""))
    return 0.0
starts = [i for i, k in enumerate(ks) if "embedding_forward" in k["name"]]
if len(starts) < 2:
    sys.exit(f"train ncu: fewer than two steps found ({len(ks)} kernels)")
step = ks[starts[-2]:starts[-1]]
total, per, counts = 0.0, collections.Counter(), collections.Counter()
for k in step:
    name = re.sub(r"\(.*", "", k["name"]).replace("void ", "")[:90]
    us = metric(k, "gpu__time_duration") / 1000
    total += us; per[name] += us; counts[name] += 1
print(f"\n== one training step's kernels (ncu): {len(step)} kernels, {total / 1000:.2f} ms ==")
for name, us in per.most_common(40):
    print(f"{counts[name]:5d} {us / 1000:8.3f} ms  {name}")
print("\n-- the step's first 120 kernels in order (us, grid) --")
for k in step[:120]:
    name = re.sub(r"\(.*", "", k["name"]).replace("void ", "")[:100]
    print(f"{metric(k, 'gpu__time_duration') / 1000:9.1f} {int(metric(k, 'launch__grid_size')):7d}  {name}")
PY
fi

# ZeRO-Offload: the medium shape (16 layers, 4.8 B parameters) and deeper copies of it (24: 7.1 B,
# 28: 8.3 B), with and without offload: GPU peak memory, step time, and whether the step fits at
# all. Activation checkpointing on, so the weights and optimizer state decide what fits.
# MOEX_OFFLOAD_LAYERS and MOEX_OFFLOAD_MODES ("plain offload") narrow the runs. Offload keeps 12
# bytes per parameter on the host (master weights and moments): mind the host's memory.
if [ -z "${MOEX_SKIP_OFFLOAD_BENCH:-}" ]; then
  : >"$OUT/offload_bench.jsonl"
  # MOEX_OFFLOAD_MOMENTS: optimizer.moments_dtype values (fp32 by default; bf16 halves the moments).
  # MOEX_OFFLOAD_STATE=bf16: bf16 master weights and gradients (they stay on the GPU, the host keeps
  # only the moments: with bf16 moments 4 bytes a parameter on each side; docs/parallelism.md).
  state_flags=""
  [ "${MOEX_OFFLOAD_STATE:-fp32}" = bf16 ] && state_flags="--master-dtype bf16 --grads-dtype bf16"
  for layers in ${MOEX_OFFLOAD_LAYERS:-16 24 28}; do
    for moments in ${MOEX_OFFLOAD_MOMENTS:-fp32}; do
      cfg="$OUT/medium_${layers}l.json"
      sed -e "s/\"num_layers\": 16/\"num_layers\": $layers/" \
          -e 's/"micro_batch_size": 4/"micro_batch_size": 4, "activation_checkpointing": true/' \
          configs/gpu-medium.json >"$cfg"
      for mode in ${MOEX_OFFLOAD_MODES:-plain offload}; do
        flag=""
        [ "$mode" = offload ] && flag="--offload"
        # shellcheck disable=SC2086
        line=$("$BIN/moex" bench train-step --device cuda --config "$cfg" --warmup 1 --iters 2 --json \
          --moments-dtype "$moments" $state_flags $flag 2>>"$OUT/offload_bench.err" | grep '^{')
        [ -n "$line" ] || line="{\"offload\": $([ -n "$flag" ] && echo true || echo false), \"error\": \"$(tail -n 1 "$OUT/offload_bench.err" | tr -d '"' | cut -c1-160)\"}"
        echo "$line" | sed "s/^{/{\"layers\": $layers, \"moments\": \"$moments\", /" >>"$OUT/offload_bench.jsonl"
      done
    done
  done
  python3 - "$OUT" <<'PY'
import json, sys, os
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "offload_bench.jsonl")) if l.startswith("{")]
print("\n== ZeRO-Offload: medium shape, activation checkpointing, batch 4 x 2048 ==")
print(f"{'layers':>6} {'moments':>7} {'offload':>7} {'params':>8} {'step_ms':>9} {'tokens/s':>9} {'peak GiB':>9} {'host adam ms':>12}")
for r in rows:
    if "error" in r:
        print(f"{r['layers']:6} {r['moments']:>7} {str(r.get('offload')):>7} error: {r['error'][:110]}")
        continue
    adam = r.get("offload_ms", {}).get("adam")
    adam = f"{adam:12.0f}" if isinstance(adam, (int, float)) else f"{'-':>12}"
    print(f"{r['layers']:6} {r['moments']:>7} {str(r['offload']):>7} {r['parameters']/1e9:7.2f}B {r['step_ms']:9.0f} "
          f"{r['tokens_per_s']:9.0f} {r['peak_mem_gib']:9.1f} {adam}")
PY
fi
exit $status
