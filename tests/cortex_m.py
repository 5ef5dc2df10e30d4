"""Shared by the tests that run firmware on QEMU's emulated Cortex-M4 (mps2-an386): the tool
check (CI must have them; elsewhere the tests skip) and the cross build of a firmware target."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm", "cmake")
missing = [t for t in TOOLS if shutil.which(t) is None]
if missing and os.environ.get("CI"):
    raise RuntimeError(f"CI must have {missing}: scripts/setup.sh installs them")
needs_cortex_m = pytest.mark.skipif(bool(missing), reason=f"needs {missing} (bash scripts/setup.sh installs them)")


def build_firmware(build: Path, target: str) -> Path:
    """Cross-build `target` of device_trainer_c for the Cortex-M4F into `build`; returns the ELF."""
    from fedtiny.devices.emulate import build_firmware as build_target

    return build_target(build, target)
