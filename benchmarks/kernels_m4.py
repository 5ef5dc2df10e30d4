"""Instructions per MAC of fedtiny's int8 kernels on the emulated Cortex-M4, bundled against
CMSIS-NN, side by side in one run.

    python benchmarks/kernels_m4.py [--cmsis-nn DIR_OR_ARCHIVE]

Builds ``ft_nn_bench_mps2`` (``device_trainer_c/tests/nn_bench_main.c``: each layer through
``ft_layer_forward_s8``, the call the trainer makes) twice — bundled kernels, and against
CMSIS-NN (default: v7.0.0 from ``../shared/third_party/``) — runs both on QEMU's mps2-an386
under ``-icount shift=0`` (one instruction per virtual nanosecond; the FPGAIO counter's ticks are
calibrated by a spin loop of known length in the same run) and prints a table. Instructions are
not cycles (loads, stores and branches take more than one cycle on a Cortex-M4); ``-O2``
(Release), ``-mcpu=cortex-m4 -mfpu=fpv4-sp-d16``, ``__ARM_FEATURE_DSP`` defined by the compiler.
For average pooling the count is per input element. A second table gives the float32 training
kernels of the trainable layers (forward, and backward per MAC of the weight and input
gradients), float weights and the int8 view of QAS training; CMSIS-NN has no part in them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
C_ROOT = ROOT / "device_trainer_c"


def default_cmsis() -> Path | None:
    for base in (ROOT.parent / "shared" / "third_party", Path("/work/shared/third_party")):
        if (base / "cmsis-nn-v7.0.0.tar.gz").exists():
            return base / "cmsis-nn-v7.0.0.tar.gz"
    return None


def tree(path: Path, work: Path) -> Path:
    if path.is_dir():
        return path
    with tarfile.open(path) as tar:
        tar.extractall(work, filter="data")
    return work / path.name.removesuffix(".tar.gz")


def measure(build: Path, cmsis: Path | None) -> dict[str, float]:
    cfg = ["cmake", "-S", str(C_ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
           f"-DCMAKE_TOOLCHAIN_FILE={C_ROOT / 'cmake/arm-none-eabi-cortex-m4.cmake'}"]
    if cmsis is not None:
        cfg.append(f"-DFEDTINY_CMSIS_NN_DIR={cmsis}")
    subprocess.run(cfg, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j", "2", "--target", "ft_nn_bench_mps2"], check=True,
                   capture_output=True)
    proc = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none",
                           "-semihosting-config", "enable=on,target=native", "-icount", "shift=0",
                           "-kernel", str(build / "ft_nn_bench_mps2.elf")], capture_output=True, text=True, timeout=600)
    rows = [ln.split() for ln in (proc.stdout + proc.stderr).splitlines() if len(ln.split()) == 4]
    ticks = {name: (int(t), int(m), int(r)) for name, t, m, r in rows}
    calib_ticks, calib_instr, _ = ticks.pop("calib")
    per_tick = calib_instr / calib_ticks
    return {name: t * per_tick / (m * r) for name, (t, m, r) in ticks.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cmsis-nn", type=Path, default=default_cmsis(), help="a CMSIS-NN tree or .tar.gz")
    a = ap.parse_args()
    if a.cmsis_nn is None:
        print("kernels_m4: no CMSIS-NN tree (pass --cmsis-nn DIR_OR_ARCHIVE)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours = measure(work / "bundled", None)
        theirs = measure(work / "cmsis", tree(a.cmsis_nn, work))
    print(f"instructions per MAC on the emulated Cortex-M4 (CMSIS-NN: {a.cmsis_nn.name})")
    print(f"{'layer':<32} {'bundled':>8} {'CMSIS-NN':>9} {'ratio':>6}")
    for name in ours:
        if not name.startswith("f32_"):
            print(f"{name:<32} {ours[name]:8.2f} {theirs[name]:9.2f} {ours[name] / theirs[name]:5.2f}x")
    print()
    print("float32 training kernels (fedtiny's own; backward = weight and input gradients, 2 MACs each)")
    print(f"{'layer':<32} {'forward':>8} {'backward':>9}")
    for name in ours:
        if name.startswith("f32_") and name.endswith("_fwd"):
            base = name.removesuffix("_fwd")
            print(f"{base.removeprefix('f32_'):<32} {ours[name]:8.2f} {ours[base + '_bwd']:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
