#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a lent GPU machine, so nothing is built there: the
# GPU-side binaries of build/ (built here for sm_90a by scripts/setup.sh) and the shared libraries
# they link that the GPU machine lacks (everything but the CUDA toolkit, glibc and the C++
# runtime), as .devcarry/bin.tar.xz. .devcarry/ is git-ignored: name it in the run's carry.
#   scripts/make_devcarry.sh && (device run, carry .devcarry): scripts/gpu_check.sh
#   MOEX_SERVE_MODEL_SRC=runs/x/final scripts/make_devcarry.sh   (also a model for the serving bench)
set -euo pipefail
cd "$(dirname "$0")/.."
BINS=(moex moex_gpu_tests moex_gpu_kernel_tests moex_bench_attention moex_dist_gpu_tests
  moex_bench_moe_grouped_cudnn)
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
# xz -9e: about a third smaller than the default level (a lease carries 64 MiB in all).
tar cf - -C "$STAGE" bin lib | xz -9e -T0 >.devcarry/bin.tar.xz
# MOEX_SERVE_MODEL_SRC=DIR (a moex model directory): its weights, config and tokenizer go along as
# .devcarry/serve_model for gpu_check.sh's serving benchmark (optimizer state left behind).
if [ -n "${MOEX_SERVE_MODEL_SRC:-}" ]; then
  mkdir -p .devcarry/serve_model
  for f in config.json model.safetensors tokenizer.model tokenizer.json tokenizer_config.json; do
    [ -f "$MOEX_SERVE_MODEL_SRC/$f" ] && cp "$MOEX_SERVE_MODEL_SRC/$f" .devcarry/serve_model/
  done
fi
# Open MPI's runtime as this machine has it (Debian's packages), for gpu_check.sh's mpirun tests:
# the GPU image has no MPI. Unpacked there under a prefix of its own (OPAL_PREFIX).
OMPI_PACKAGES=(libopenmpi3 openmpi-bin openmpi-common libpmix2 libhwloc15 libhwloc-plugins
  libevent-core-2.1-7 libevent-pthreads-2.1-7 libevent-2.1-7 libevent-extra-2.1-7)
if dpkg -s "${OMPI_PACKAGES[@]}" >/dev/null 2>&1; then
  dpkg -L "${OMPI_PACKAGES[@]}" | grep -v -E '/share/(doc|man|lintian)/|java|mpifh|usempi|\.a$' |
    while read -r f; do if [ -f "$f" ]; then echo "$f"; fi; done >"$STAGE/ompi_files.txt"
  tar cJf .devcarry/ompi.tar.xz -T "$STAGE/ompi_files.txt" 2>/dev/null
fi
du -sh .devcarry
