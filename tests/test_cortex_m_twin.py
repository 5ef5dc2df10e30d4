"""One trainer: the same C code trained on an emulated Cortex-M4F (QEMU mps2-an386, hard
float, -ffp-contract=off) and on the host gives bit-identical parameters and loss.

The firmware (device_trainer_c/tests/twin_main.c) reads a job (model bytes, int8 samples,
labels, settings) that QEMU places in PSRAM, trains, and prints the float32 bit patterns.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedtiny.trainer import LayerUpdate, Model, TrainConfig, Trainer
from tests.cortex_m import build_firmware, needs_cortex_m
from tests.models import random_model

pytestmark = needs_cortex_m


@pytest.fixture(scope="module")
def firmware(tmp_path_factory) -> Path:
    return build_firmware(tmp_path_factory.mktemp("m4"), "ft_twin_mps2")


def job_bytes(model_bytes: bytes, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, epochs: int, seed: int) -> bytes:
    def align(n: int) -> int:
        return (n + 7) & ~7

    updates = [u._arg() for u in cfg.update] if cfg.update is not None else []
    words = [kind | (bias << 8) | (channels << 16) for kind, bias, channels in updates]
    words += [0] * (32 - len(words))
    head = 4 * (20 + 32)
    m_off = align(head)
    x_off = align(m_off + len(model_bytes))
    y_off = align(x_off + x.nbytes)
    out = bytearray(align(y_off + y.size))
    struct.pack_into("<4sIIIIIIIIIfffIIfIIII32I", out, 0, b"FTTW", 3, m_off, len(model_bytes), x_off, y_off, len(y),
                     x[0].size, epochs, seed, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size,
                     int(cfg.with_prefix), cfg.prox_mu, cfg.start_layer, len(updates),
                     cfg._precision_arg(), cfg._rounding_arg(), *words)
    out[m_off : m_off + len(model_bytes)] = model_bytes
    out[x_off : x_off + x.nbytes] = np.ascontiguousarray(x).tobytes()
    out[y_off : y_off + y.size] = y.astype(np.uint8).tobytes()
    return bytes(out)


def run_qemu(firmware: Path, job: Path) -> dict:
    proc = subprocess.run(
        ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none",
         "-semihosting-config", "enable=on,target=native", "-kernel", str(firmware),
         "-device", f"loader,file={job},addr=0x21000000"],
        capture_output=True, text=True, timeout=120)
    # semihosting console output arrives on QEMU's stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.split()[:1] in (["P"], ["STATUS"], ["HWM"],
                                                                                     ["LOSS"], ["PARAMS"], ["END"])]
    assert proc.returncode == 0 and lines and lines[-1] == "END", (proc.returncode, proc.stderr[-500:])
    out: dict = {"P": []}
    for ln in lines[:-1]:
        tag, value = ln.split()
        if tag == "P":
            out["P"].append(int(value, 16))
        else:
            out[tag] = int(value, 16)
    return out


N, A = LayerUpdate("none", False), LayerUpdate("all", True)
CASES = [
    # (frozen int8 prefix, trainable float suffix, with_prefix, momentum, weight decay, prox, scheme, start
    #  [, precision, rounding])
    (("conv2d", "dwconv2d"), ("fc",), True, 0.9, 1e-4, 0.0, None, 0),
    (("conv2d",), ("conv2d", "avgpool", "flatten", "fc"), True, 0.0, 0.0, 0.1, None, 0),
    (("dwconv2d", "conv2d"), ("dwconv2d", "conv2d", "fc", "fc"), False, 0.9, 0.0, 0.0, None, 0),
    # sparse schemes: channel subsets, bias-only, float samples cached at the first updated layer
    (("conv2d",), ("conv2d", "dwconv2d", "flatten", "fc"), False, 0.9, 1e-4, 0.1,
     (LayerUpdate(2, True), LayerUpdate(1, False), N, A), 0),
    (("conv2d",), ("conv2d", "dwconv2d", "avgpool", "fc", "fc"), False, 0.9, 0.0, 0.0,
     (N, LayerUpdate("none", True), N, LayerUpdate(2, False), A), 1),
    # int8 weights with QAS steps: stochastic rounding (the hash draws) and round-to-nearest
    (("conv2d",), ("conv2d", "dwconv2d", "flatten", "fc"), False, 0.9, 1e-4, 0.1,
     (LayerUpdate(2, True), LayerUpdate("all", False), N, A), 0, "int8", "stochastic"),
    (("conv2d",), ("dwconv2d", "conv2d", "avgpool", "fc"), True, 0.0, 0.0, 0.0,
     (LayerUpdate(1, True), LayerUpdate("all", True), N, LayerUpdate(2, True)), 0, "int8", "nearest"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_emulated_cortex_m4_trains_bit_identically(firmware, tmp_path, case):
    frozen, suffix, with_prefix, mom, wd, prox, scheme, start, *precision = CASES[case]
    precision, rounding = precision or ("float32", "stochastic")
    rng = np.random.default_rng(100 + case)
    spec = random_model(rng, frozen=frozen, trainable=suffix)
    model = Model(spec)
    x = rng.integers(-128, 128, (40, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 40).astype(np.uint8)
    samples = x if with_prefix else (model.features_at(x, start) if start else model.prefix_features(x))
    cfg = TrainConfig(lr=0.05, momentum=mom, weight_decay=wd, batch_size=8, with_prefix=with_prefix, prox_mu=prox,
                      update=scheme, start_layer=start, precision=precision, rounding=rounding)
    host = Trainer(model, cfg)
    host.train_epochs(samples, y, epochs=3, seed=11 + case)
    loss = host.evaluate(samples, y).loss
    host_bits = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in host.get_params()]).view(np.uint32).tolist()

    job = tmp_path / "job.bin"
    job.write_bytes(job_bytes(model.to_bytes(), samples, y, cfg, epochs=3, seed=11 + case))
    board = run_qemu(firmware, job)
    assert board["STATUS"] == 0
    assert board["HWM"] == host.plan.arena_bytes
    assert board["P"] == host_bits  # every parameter, bit for bit
    assert board["LOSS"] == int(np.array(loss, np.float32).view(np.uint32))
