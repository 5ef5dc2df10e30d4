"""The slow tier (issue 20): the BLE tests again, through bleak's real BlueZ backend, in a
virtme-ng VM (scripts/ble_bluez_tier.sh; it installs a kernel image, BlueZ, QEMU for x86 and
virtme-ng). The link tests (tests/test_ble_link.py, about 5 minutes under TCG) run by default,
in CI too; FEDTINY_BLUEZ_TIER=0 turns them off. The federations over BlueZ
(tests/test_ble_federated.py: 8-10 minutes each under nested emulation, over 50 minutes in all)
run with FEDTINY_BLUEZ_TIER=all. Skipped with the reason where the tier cannot run (exit 77)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIER = os.environ.get("FEDTINY_BLUEZ_TIER", "link")
INSIDE = pytest.mark.skipif(os.environ.get("FEDTINY_BLE_STACK") == "bluez", reason="already inside the tier")


def tier(*args: str) -> str:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "ble_bluez_tier.sh"), "--install", *args],
                          capture_output=True, text=True, timeout=3600, env={**os.environ, "PYTHON": sys.executable})
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout


@INSIDE
@pytest.mark.skipif(TIER == "0", reason="the BlueZ tier is off (FEDTINY_BLUEZ_TIER=0)")
def test_the_ble_link_tests_pass_through_real_bluez():
    out = tier("--link")
    last = out.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last and "error" not in last, out[-4000:]


@INSIDE
@pytest.mark.skipif(TIER != "all", reason="the federations over BlueZ take over 50 minutes under nested "
                                          "emulation: FEDTINY_BLUEZ_TIER=all runs them")
def test_the_federations_pass_through_real_bluez():
    out = tier("-k", "not test_ble_link")
    last = out.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last and "error" not in last, out[-4000:]
