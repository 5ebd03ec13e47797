#!/usr/bin/env bash
# Installs every system package moex needs (Debian 12) and builds it into build/.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake ninja-build pkg-config git
          libopenblas-dev libdnnl-dev nlohmann-json3-dev libgtest-dev
          libopenmpi-dev openmpi-bin libsentencepiece-dev sentencepiece libcpp-httplib-dev
          nodejs debian-handbook diatheke sword-text-web sword-text-sparv)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm ships inside some nodejs builds (NodeSource); Debian packages it apart.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
# The official OpenAI client and zod, the oracles of the server test (tests/serve/package-lock.json).
[ -d tests/serve/node_modules/openai ] && [ -d tests/serve/node_modules/zod ] || npm ci --prefix tests/serve --no-audit --no-fund

export PATH="/usr/local/cuda/bin:$PATH"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
