#!/usr/bin/env bash
# On the GPU machine, with adamw_bf16_variants.patch applied and .devcarry made from that build
# (bench/experiments/README.md): the model GPU tests, then each AdamW variant for the all-bf16
# state (load-ahead x min blocks, "f": approximate square root and division): its kernel
# bandwidth, and the small and medium training steps' AdamW time and memory.
cd "$(dirname "$0")/../.."
tar xJf .devcarry/bin.tar.xz -C .devcarry
BIN=.devcarry/bin
mkdir -p /tmp/moex_libs && cp .devcarry/lib/* /tmp/moex_libs/
export LD_LIBRARY_PATH=/tmp/moex_libs:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name --format=csv,noheader
$BIN/moex_gpu_tests --gtest_brief=1 2>&1 | grep -E "^\[  (PASSED|FAILED|SKIPPED)|Failure" | head -20
for v in 4x1 1x1 2x1 4x3 2x4 1x1f 2x1f 4x1f 2x4f; do
  echo "== variant $v"
  MOEX_ADAMW_VARIANT=$v $BIN/moex_gpu_kernel_tests --gtest_filter='AdamW*' --gtest_brief=1 2>&1 |
    grep -E "bandwidth\]|FAILED|PASSED"
done
show() {
  python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print('$1', 'tok/s %.0f' % r['tokens_per_s'], 'step %.1f' % r['step_ms'], 'adamw %.2f' % r['op_ms']['adamw'], 'peak %.2f' % r['peak_mem_gib'], 'state %.2f' % r['state_gib'], 'arena %.2f' % r['activation_gib'])"
}
for shape in small medium; do
  for v in 4x1 1x1 1x1f 2x1f 4x1f; do
    MOEX_ADAMW_VARIANT=$v $BIN/moex bench train-step --device cuda --config configs/gpu-$shape.json \
      --warmup 2 --iters 6 --moments-dtype bf16 --grads-dtype bf16 --master-dtype bf16 --json | show "$shape bf16 master $v"
  done
  $BIN/moex bench train-step --device cuda --config configs/gpu-$shape.json \
    --warmup 2 --iters 6 --moments-dtype bf16 --grads-dtype bf16 --master-dtype fp32 --json | show "$shape fp32 master"
done
