#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a lent GPU machine, so nothing is built there: the
# GPU-side binaries of build/ (built here for sm_90a by scripts/setup.sh) and the shared libraries
# they link that the GPU machine lacks (everything but the CUDA toolkit, glibc and the C++
# runtime), as .devcarry/bin.tar.xz. .devcarry/ is git-ignored: name it in the run's carry.
#   scripts/make_devcarry.sh && (device run, carry .devcarry): scripts/gpu_check.sh
#   MOEX_SERVE_MODEL_SRC=runs/x/final scripts/make_devcarry.sh   (also a model for the serving bench)
set -euo pipefail
cd "$(dirname "$0")/.."
BINS=(moex moex_gpu_tests moex_gpu_kernel_tests moex_bench_attention)
cmake --build build --target "${BINS[@]}"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib"
for b in "${BINS[@]}"; do
  cp "build/$b" "$STAGE/bin/"
  strip "$STAGE/bin/$b"
done
for b in "${BINS[@]}"; do ldd "build/$b"; done | awk '/=> \// {print $3}' | sort -u |
  grep -v -E '/cuda|libcuda|libcublas|libcudart|libnvrtc|ld-linux|/libc\.so|/libm\.so|libstdc\+\+|libgcc_s|libpthread|libdl\.so|librt\.so' |
  while read -r lib; do cp -L "$lib" "$STAGE/lib/"; done
rm -rf .devcarry
mkdir -p .devcarry
tar cJf .devcarry/bin.tar.xz -C "$STAGE" bin lib
# MOEX_SERVE_MODEL_SRC=DIR (a moex model directory): its weights, config and tokenizer go along as
# .devcarry/serve_model for gpu_check.sh's serving benchmark (optimizer state left behind).
if [ -n "${MOEX_SERVE_MODEL_SRC:-}" ]; then
  mkdir -p .devcarry/serve_model
  for f in config.json model.safetensors tokenizer.model tokenizer.json tokenizer_config.json; do
    [ -f "$MOEX_SERVE_MODEL_SRC/$f" ] && cp "$MOEX_SERVE_MODEL_SRC/$f" .devcarry/serve_model/
  done
fi
du -sh .devcarry
