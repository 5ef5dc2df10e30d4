#!/usr/bin/env bash
# Set up and run every test: the standalone C build with -Werror, the C unit tests under
# ASan + UBSan, the Cortex-M4 cross build, and the Python test suite.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh

echo "== C: host build (-Wall -Wextra -Werror) and unit tests under ASan + UBSan"
cmake -S device_trainer_c -B build/test-c -DFEDTINY_BUILD_TESTS=ON -DFEDTINY_SANITIZE=ON \
      -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/test-c -j 2 >/dev/null
if ! ctest --test-dir build/test-c -V > build/test-c/ctest.log 2>&1; then
    cat build/test-c/ctest.log
    exit 1
fi
grep -E "ft_expf|loader:|plan:|training|codec:|protocol:|tests passed" build/test-c/ctest.log

echo "== C: Cortex-M4F cross build (arm-none-eabi-gcc, -mfloat-abi=hard -mfpu=fpv4-sp-d16) + mps2-an386 twin firmware"
cmake -S device_trainer_c -B build/test-m4 -DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi-cortex-m4.cmake \
      -DCMAKE_BUILD_TYPE=MinSizeRel >/dev/null
cmake --build build/test-m4 -j 2 >/dev/null
arm-none-eabi-size -t build/test-m4/libfedtiny_trainer.a | tail -n 1 | \
    awk '{print "libfedtiny_trainer.a for Cortex-M4F: text " $1 " B, data " $2 " B, bss " $3 " B"}'
arm-none-eabi-size build/test-m4/ft_twin_mps2.elf | tail -n 1 | \
    awk '{print "ft_twin_mps2.elf (trainer + 160 KiB arena): text " $1 " B, data " $2 " B, bss " $3 " B"}'
arm-none-eabi-size build/test-m4/ft_board_mps2.elf | tail -n 1 | \
    awk '{print "ft_board_mps2.elf (board firmware, 256 KiB SRAM budget): text " $1 " B, data " $2 " B, bss " $3 " B"}'

echo "== Python tests (unit, property, and federated simulations on Ray)"
export FLWR_TELEMETRY_ENABLED=0 RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0
"$PY" -m pytest "$@"
