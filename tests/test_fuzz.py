"""Bounded fuzzing of the C parsers that take outside bytes: the frame receiver (serial link)
and the model loader (a model file sent to a board), built with ASan + UBSan
(device_trainer_c/tests/fuzz_main.c). Seeds are real model files (random architectures) and a
real frame stream; the campaign is seeded, so a failure reproduces with the printed command.
FEDTINY_FUZZ_SECONDS sets the time per target (default 20 s)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from fedtiny.devices import protocol as P
from fedtiny.trainer import Model
from tests.cortex_m import ROOT
from tests.models import random_model

SECONDS = float(os.environ.get("FEDTINY_FUZZ_SECONDS", "20"))


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    build = tmp_path_factory.mktemp("fuzz")
    subprocess.run(["cmake", "-S", str(ROOT / "device_trainer_c"), "-B", str(build), "-DFEDTINY_BUILD_TESTS=ON",
                    "-DFEDTINY_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "ft_fuzz", "-j", "2"], check=True, capture_output=True)
    return build / "ft_fuzz"


def _campaign(fuzzer, target: str, seeds: list) -> str:
    cmd = [str(fuzzer), target, f"{SECONDS:g}", "1", *map(str, seeds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 300)
    assert proc.returncode == 0 and "no crash" in proc.stdout, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_model_loader_survives_a_fuzzing_campaign(fuzzer, tmp_path):
    rng = np.random.default_rng(5)
    seeds = []
    for i in range(8):
        seeds.append(tmp_path / f"model{i}.bin")
        seeds[-1].write_bytes(Model(random_model(rng)).to_bytes())
    out = _campaign(fuzzer, "model", seeds)
    loaded = int(out.split(" models loaded")[0].rsplit(", ", 1)[1])
    assert loaded > 1000, out  # the campaign reached past the checksum into the loader and the kernels
    print(out)


def test_frame_receiver_survives_a_fuzzing_campaign(fuzzer, tmp_path):
    rng = np.random.default_rng(6)
    stream = b"".join(P.frame(t, i, rng.integers(0, 256, int(rng.integers(0, 1025))).astype(np.uint8).tobytes())
                      for i, t in enumerate([P.HELLO, P.LOAD, P.TRAIN, P.UPDATE, P.PARAMS, P.ERROR, P.ACK] * 4))
    (tmp_path / "frames.bin").write_bytes(stream)
    out = _campaign(fuzzer, "frames", [tmp_path / "frames.bin"])
    assert int(out.split(" frames accepted")[0].rsplit(", ", 1)[1]) > 1000, out
    print(out)
