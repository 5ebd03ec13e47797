#!/usr/bin/env bash
# One run on a GPU machine: build (or use the binaries carried in .devcarry/), run the GPU tests,
# moex's MoE-layer benchmarks and the PyTorch peers, write logs to $OUT, print a ratio table last.
#   OUT=/tmp/out scripts/gpu_check.sh   # MOEX_SKIP_TESTS=1 / MOEX_SKIP_EXPORT=1 / MOEX_SKIP_BENCH=1 skip parts
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/moex_gpu_check}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

# Binaries: carried ones (built elsewhere for sm_90a, with their non-CUDA shared libraries) or a build.
if [ -x .devcarry/bin/moex_gpu_tests ] && [ -x .devcarry/bin/moex ]; then
  BIN=.devcarry/bin
  LIBS=/tmp/moex_libs
  mkdir -p "$LIBS"
  [ -f .devcarry/libs.tar.xz ] && tar xJf .devcarry/libs.tar.xz -C "$LIBS"
  [ -d .devcarry/lib ] && cp .devcarry/lib/* "$LIBS"/
  export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
else
  export PATH=/usr/local/cuda/bin:$PATH
  cmake -S . -B build-cuda -G Ninja >/dev/null && cmake --build build-cuda -j"$(nproc)" --target moex moex_gpu_tests || exit 1
  BIN=build-cuda
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# The exit status is non-zero when a GPU test fails or is skipped, or when the export check fails.
status=0
if [ -z "${MOEX_SKIP_TESTS:-}" ]; then
  "$BIN/moex_gpu_tests" --gtest_brief=1 >"$OUT/gpu_tests.log" 2>&1
  tests_exit=$?
  echo "gpu tests: exit $tests_exit"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]|^\[ info \]|FAILED|SKIPPED|Failure|error" "$OUT/gpu_tests.log" | head -60
  if [ "$tests_exit" -ne 0 ]; then status=1; fi
  if grep -q "^\[  SKIPPED \]" "$OUT/gpu_tests.log"; then
    echo "gpu tests: some were skipped (a skipped GPU test counts as a failure)"
    status=1
  fi
  if ! grep -q "^\[  PASSED  \]" "$OUT/gpu_tests.log"; then status=1; fi
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
exit $status
