"""The slow tier (issue 20): the BLE tests again, through bleak's real BlueZ backend, in a
virtme-ng VM (scripts/ble_bluez_tier.sh). Runs when FEDTINY_BLUEZ_TIER=1 (CI sets it; the
script then installs a kernel image, BlueZ, QEMU for x86 and virtme-ng); skipped with the
reason otherwise, or when the script says it cannot run here (exit 77)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("FEDTINY_BLUEZ_TIER") != "1",
                    reason="the BlueZ tier is off: FEDTINY_BLUEZ_TIER=1 (installs a kernel image, bluez, "
                           "qemu-system-x86 and virtme-ng), or run bash scripts/ble_bluez_tier.sh --install")
@pytest.mark.skipif(os.environ.get("FEDTINY_BLE_STACK") == "bluez", reason="already inside the tier")
def test_the_ble_tests_pass_through_real_bluez():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "ble_bluez_tier.sh"), "--install"], capture_output=True,
                          text=True, timeout=3000, env={**os.environ, "PYTHON": sys.executable})
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout.splitlines()[-1]
