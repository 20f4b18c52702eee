#!/usr/bin/env bash
# Installs what is missing (Debian packages only) and builds tessel. Idempotent: a second
# run installs nothing and rebuilds only what changed.
#   [TESSEL_EXTRA_PACKAGES="pkg ..."] scripts/setup.sh [BUILD_DIR] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config
  libprotobuf-dev protobuf-compiler
  libopenblas-dev zlib1g-dev
  libdnnl-dev ocl-icd-opencl-dev   # oneDNN (f32 products); its CMake config asks for OpenCL
  libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist
  clang libclang-rt-14-dev
  llvm-14-dev
  libgloo-dev
  openmpi-bin libopenmpi-dev slurm-wlm iproute2   # launchers and hosts the tests run ranks under
)
# More packages for a caller that needs them, space-separated: scripts/test.sh adds the
# browser its HTML report test renders in (414 MB, so not part of every setup).
read -r -a extra <<<"${TESSEL_EXTRA_PACKAGES:-}"
PACKAGES+=("${extra[@]}")

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

BUILD_DIR=${1:-build}
shift || true
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
