"""A board behind the serial protocol: the firmware (device_trainer_c/firmware) on QEMU's
emulated Cortex-M4 (mps2-an386), reached through pyserial's socket:// link to QEMU's UART0.

Digital twin: for the same model bytes, data, seed and settings, the board's encoded update
equals the simulated client's (host C trainer + C encoder via fedtiny's client code) byte for
byte. The link survives garbage and corrupted frames."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from fedtiny.devices import protocol as P
from fedtiny.devices.link import BoardClient, BoardError, data_block
from fedtiny.trainer import Model, TrainConfig, Trainer
from tests.cortex_m import build_firmware, needs_cortex_m
from tests.models import random_model

pytestmark = needs_cortex_m


@pytest.fixture(scope="module")
def firmware(tmp_path_factory) -> Path:
    return build_firmware(tmp_path_factory.mktemp("fw"), "ft_board_mps2")


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(42)
    model = Model(random_model(rng, frozen=("conv2d",), trainable=("fc", "fc")))
    x = rng.integers(-128, 128, (48, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 48).astype(np.uint8)
    return model, model.prefix_features(x), y


@pytest.fixture(scope="module")
def board(firmware, task, tmp_path_factory):
    model, feats, y = task
    data = tmp_path_factory.mktemp("flash") / "data.bin"
    data.write_bytes(data_block(feats, y))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    qemu = subprocess.Popen(["qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-monitor", "none",
                             "-serial", f"tcp:127.0.0.1:{port},server=on,wait=off",
                             "-semihosting-config", "enable=on,target=native", "-kernel", str(firmware),
                             "-device", f"loader,file={data},addr=0x21000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = None
    for _ in range(100):
        try:
            client = BoardClient(f"socket://127.0.0.1:{port}", timeout=3.0)
            break
        except Exception:  # noqa: BLE001 - QEMU still starting
            time.sleep(0.1)
    assert client is not None, "QEMU did not open its serial port"
    yield client
    client.close()
    qemu.kill()
    qemu.wait(timeout=10)


def test_hello_and_model_load(board, task):
    model, _, y = task
    info = board.hello()
    assert info["protocol"] == 1 and info["sram_kb"] == 256 and info["samples"] == len(y)
    assert info["model_crc32"] == 0
    board.load_model(model.to_bytes())
    import zlib

    assert board.hello()["model_crc32"] == zlib.crc32(model.to_bytes())


@pytest.mark.parametrize("bits,per_channel", [(32, False), (8, True), (2, True), (1, False)])
def test_board_update_equals_the_simulated_clients_byte_for_byte(board, task, bits, per_channel):
    from fedtiny.config import compose
    from fedtiny.fl.aggregate import channel_axes
    from fedtiny.fl.client_app import encode_update

    model, feats, y = task
    board.load_model(model.to_bytes())
    key = (3, 1, 5)  # (seed, round, device)
    res = board.train(epochs=2, seed=11, lr=0.05, momentum=0.9, batch=8, bits=bits, per_channel=per_channel,
                      nearest=False, key=key)
    blobs = board.update(res["update_bytes"])

    host = Trainer(model, TrainConfig(lr=0.05, momentum=0.9, batch_size=8))
    before = host.get_params()
    stats = host.train_epochs(feats, y, epochs=2, seed=11)
    deltas = {}
    for k, ((w0, b0), (w1, b1)) in enumerate(zip(before, host.get_params())):
        if w0.size:
            deltas[f"layer{k}.weight"], deltas[f"layer{k}.bias"] = w1 - w0, b1 - b0
    cfg = compose([f"codec.bits={bits}", f"codec.per_channel={str(per_channel).lower()}"])
    want, _ = encode_update(deltas, channel_axes(model), cfg.codec, key, None)
    assert sorted(blobs) == sorted(want)
    for name in want:
        assert blobs[name].tobytes() == want[name].tobytes(), name
    assert np.float32(res["loss"]) == np.float32(stats.loss)


def test_board_info_command(board):
    """`fedtiny board info URL` over its own connection (QEMU's serial port takes one client at a time)."""
    import sys

    url = board.port.portstr
    board.port.close()
    try:
        proc = subprocess.run([sys.executable, "-m", "fedtiny", "board", "info", url], capture_output=True, text=True,
                              timeout=60)
    finally:
        for _ in range(50):
            try:
                board.port.open()
                break
            except Exception:  # noqa: BLE001 - QEMU accepts the next client shortly after
                time.sleep(0.1)
    assert proc.returncode == 0, proc.stderr
    assert "protocol: 1" in proc.stdout and "sram_kb: 256" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "fedtiny", "board", "info", "socket://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "fedtiny board" in bad.stderr  # nothing listens there: a clear error
    assert board.hello()["protocol"] == 1


def test_board_trains_from_the_global_model_it_is_sent(board, task):
    """Round > 1: the board gets the global values (PARAMS) and sends its change against them."""
    from fedtiny.config import compose
    from fedtiny.fl.aggregate import channel_axes
    from fedtiny.fl.client_app import encode_update

    model, feats, y = task
    board.load_model(model.to_bytes())
    rng = np.random.default_rng(8)
    host = Trainer(model, TrainConfig(lr=0.05, momentum=0.9, batch_size=8))
    glob = [(w + rng.normal(0, 0.05, w.shape).astype(np.float32), b + np.float32(0.01)) if w.size else (w, b)
            for w, b in host.get_params()]
    board.set_params(glob)
    host.set_params(glob)
    res = board.train(epochs=1, seed=4, lr=0.05, momentum=0.9, batch=8, bits=4, per_channel=True, nearest=False,
                      key=(3, 2, 5))
    blobs = board.update(res["update_bytes"])
    host.train_epochs(feats, y, epochs=1, seed=4)
    deltas = {}
    for k, ((w0, b0), (w1, b1)) in enumerate(zip(glob, host.get_params())):
        if w0.size:
            deltas[f"layer{k}.weight"], deltas[f"layer{k}.bias"] = w1 - w0, b1 - b0
    want, _ = encode_update(deltas, channel_axes(model), compose(["codec.bits=4"]).codec, (3, 2, 5), None)
    assert {k: v.tobytes() for k, v in blobs.items()} == {k: v.tobytes() for k, v in want.items()}
    with pytest.raises(BoardError, match="BAD_DATA"):
        board.request(P.PARAMS, (10**6).to_bytes(4, "little") + bytes(8))  # offset beyond the model


def test_link_resynchronises_after_garbage_and_corrupted_frames(board):
    board.send_raw(bytes(range(256)) + b"\xa5\x5a\x01\x02\x40\x00" + b"\xa5" * 50)  # garbage, a stray header
    assert board.hello()["protocol"] == 1
    bad = bytearray(P.frame(P.HELLO, 77))
    bad[-1] ^= 0xFF  # wrong CRC: the board must ignore it
    board.send_raw(bytes(bad))
    board.send_raw(P.frame(P.HELLO, 78)[:5])  # truncated
    assert board.hello()["protocol"] == 1  # the retrying client gets through
    with pytest.raises(BoardError, match="UNSUPPORTED"):
        board.request(0x33)
