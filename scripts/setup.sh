#!/usr/bin/env bash
# Installs what the build and the tests need on a Debian/Ubuntu machine (run as root or with sudo),
# then configures and builds psa (CPU reference, CUDA backend when nvcc is on the PATH, the `psa`
# tool and the tests) into build/release.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    build-essential cmake ninja-build ccache pkg-config \
    libyaml-cpp-dev libcli11-dev libgtest-dev libgmock-dev nlohmann-json3-dev \
    libpng-dev zlib1g-dev python3 python3-pip >/dev/null
fi

# nvcc is often installed outside the PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

export CCACHE_BASEDIR="$PWD"
cmake --preset release >/dev/null
cmake --build --preset release
