#!/usr/bin/env bash
# Install what fedtiny needs on a fresh Debian machine with Python >= 3.10: the Cortex-M
# toolchain (apt), the pinned CPU build of PyTorch, and fedtiny itself (builds the C extension).
# Idempotent: already-installed parts are skipped quickly. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# dataset-fashion-mnist: the IDX files of experiment=fashion_scale (and its tests), read offline
apt_packages=(cmake gcc g++ gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm dataset-fashion-mnist)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing ${missing[*]} (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# torch first and pinned: a loose requirement would pull a multi-GB CUDA build.
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[test]"
echo "setup: done ($("$PY" -c 'import fedtiny._core as c; print("trainer", c.TRAINER_VERSION)'))"
