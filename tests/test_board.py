"""A board behind the serial protocol: the firmware (device_trainer_c/firmware) on QEMU's
emulated Cortex-M4 (mps2-an386), reached through its bridge (fedtiny.devices.bridge) and
pyserial's socket:// link to QEMU's UART0.

Digital twin: for the same model bytes, data, seed and settings, the board's round
(fedtiny.devices.backend.BoardBackend) sends the same bytes as the simulated backend
(fedtiny.client.simulated.SimulatedBackend), for whole-model, sparse (channel subset, bias only),
int8 and differentially private updates. The link survives garbage and corrupted frames."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedtiny.devices import protocol as P
from fedtiny.devices.link import BoardClient, BoardError, data_block
from fedtiny.trainer import LayerUpdate, Model, TrainConfig, Trainer
from tests.cortex_m import build_firmware, needs_cortex_m
from tests.models import random_model

pytestmark = needs_cortex_m


@pytest.fixture(scope="module")
def firmware(tmp_path_factory) -> Path:
    return build_firmware(tmp_path_factory.mktemp("fw"), "ft_board_mps2")


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(42)
    model = Model(random_model(rng, frozen=("conv2d",), trainable=("dwconv2d", "conv2d", "flatten", "fc"),
                               input_shape=(6, 6, 2)))
    x = rng.integers(-128, 128, (40, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 40).astype(np.uint8)
    return model, model.prefix_features(x), y


@pytest.fixture(scope="module")
def fleet(firmware, task, tmp_path_factory):
    from fedtiny.devices.emulate import Fleet

    model, feats, y = task
    with Fleet(firmware, [data_block(feats, y)], tmp_path_factory.mktemp("board"), in_process_bridges=True) as f:
        yield f


@pytest.fixture(scope="module")
def board(fleet):
    client = BoardClient(fleet.urls[0], timeout=30.0, retries=1)
    yield client
    client.close()


def test_hello_and_model_load(board, task):
    model, _, y = task
    info = board.hello()
    assert info["protocol"] == 1 and info["sram_kb"] == 256 and info["samples"] == len(y)
    assert info["model_crc32"] == 0
    board.load_model(model.to_bytes())
    import zlib

    assert board.hello()["model_crc32"] == zlib.crc32(model.to_bytes())


def _received(model, seed: int) -> dict[str, np.ndarray]:
    """A global model that is not the model file (round > 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, (w, b) in enumerate(Trainer(model, TrainConfig()).get_params()):
        if w.size:
            out[f"layer{k}.weight"] = (w + rng.normal(0, 0.05, w.shape)).astype(np.float32)
            out[f"layer{k}.bias"] = (b + rng.normal(0, 0.02, b.shape)).astype(np.float32)
    return out


BASE = TrainConfig(lr=0.05, momentum=0.9, batch_size=8)
CASES = {  # name: (train config, codec overrides, dp (clip, noise std) or None)
    "all-f32-32bit": (BASE, ["codec.bits=32"], None),
    "all-f32-8bit-per-channel": (BASE, ["codec.bits=8"], None),
    "all-f32-2bit-nearest": (replace(BASE, weight_decay=1e-3), ["codec.bits=2", "codec.rounding=nearest"], None),
    "all-f32-1bit-per-tensor": (BASE, ["codec.bits=1", "codec.per_channel=false"], None),
    "channels+bias-f32-4bit": (replace(BASE, update=(LayerUpdate(2), LayerUpdate(3), LayerUpdate("none", False),
                                                     LayerUpdate("all"))), ["codec.bits=4"], None),
    "bias-only+head-prox-8bit": (replace(BASE, prox_mu=0.01, update=(LayerUpdate("none"), LayerUpdate("none"),
                                                                     LayerUpdate("none", False),
                                                                     LayerUpdate("all", False))), ["codec.bits=8"], None),
    "channels-int8-8bit": (replace(BASE, precision="int8", update=(LayerUpdate(1), LayerUpdate(2),
                                                                   LayerUpdate("none", False), LayerUpdate("all"))),
                           ["codec.bits=8"], None),
    "central-dp-clip-8bit": (BASE, ["codec.bits=8"], (0.05, 0.0)),
    "local-dp-noise-4bit": (BASE, ["codec.bits=4"], (0.05, 0.01)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_board_round_equals_the_simulated_round_byte_for_byte(fleet, task, case):
    from fedtiny.config import compose
    from fedtiny.devices.backend import BoardBackend
    from fedtiny.client.backend import RoundTask
    from fedtiny.client.simulated import SimulatedBackend

    model, feats, y = task
    tc, overrides, dp = CASES[case]
    codec_cfg = compose(overrides).codec
    received = _received(model, 8)
    key = (3, 2, 5)  # (seed, round, device)
    sim = SimulatedBackend(feats, y).train(RoundTask(model, tc, received, 2, 11, codec_cfg, key, dp))
    dev = BoardBackend(fleet.urls[0], 120.0).train(RoundTask(model, tc, received, 2, 11, codec_cfg, key, dp))
    assert sorted(dev.blobs) == sorted(sim.blobs) and sim.blobs
    for name in sim.blobs:
        assert dev.blobs[name].tobytes() == sim.blobs[name].tobytes(), name
    assert dev.subset == sim.subset
    assert np.float32(dev.loss) == np.float32(sim.loss) and dev.accuracy == sim.accuracy
    assert dev.arena_bytes == sim.arena_bytes  # the same arena plan on the board


def test_board_keeps_its_model_between_rounds(fleet, board, task):
    """The backend loads the model only when the board's CRC differs (as a flashed board)."""
    from fedtiny.client.backend import RoundTask
    from fedtiny.config import compose
    from fedtiny.devices.backend import BoardBackend

    model, feats, y = task
    board.request(P.RESET)
    assert board.hello()["model_crc32"] == 0
    task = RoundTask(model, BASE, _received(model, 1), 1, 1, compose([]).codec, (0, 1, 0), None)
    BoardBackend(fleet.urls[0], 120.0).train(task)
    assert board.hello()["model_crc32"] == zlib.crc32(model.to_bytes())


def test_board_rejects_a_train_request_that_does_not_match_its_model(board, task):
    model, _, _ = task
    board.load_model(model.to_bytes())
    good = TrainConfig(update=(LayerUpdate("all"),) * 4)
    bad = replace(good, update=(LayerUpdate("all"),) * 3)  # one entry short
    with pytest.raises(BoardError, match="BAD_CONFIG"):
        board.train(bad, 1, 1, 8, True, False, (0, 0, 0))
    with pytest.raises(BoardError, match="BAD_CONFIG"):
        board.request(P.TRAIN, bytes(40))  # too short


def test_board_info_and_serve_commands(fleet, board):
    """`fedtiny board info` through the bridge (which serves many clients), and `fedtiny board
    serve` as its own process in front of the bridge."""
    proc = subprocess.run([sys.executable, "-m", "fedtiny", "board", "info", fleet.urls[0]], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "protocol: 1" in proc.stdout and "sram_kb: 256" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "fedtiny", "board", "info", "socket://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "fedtiny board" in bad.stderr  # nothing listens there: a clear error
    serve = subprocess.Popen([sys.executable, "-m", "fedtiny", "board", "serve", fleet.urls[0]], stdout=subprocess.PIPE,
                             text=True)
    try:
        line = serve.stdout.readline()
        assert line.startswith(f"bridge {fleet.urls[0]} on socket://127.0.0.1:"), line
        chained = BoardClient(line.split(" on ")[1].strip(), timeout=30.0, retries=1)
        assert chained.hello()["protocol"] == 1
        chained.close()
    finally:
        serve.terminate()
        out, _ = serve.communicate(timeout=30)
    assert serve.returncode == 0 and "stopped after 1 requests, 0 link failures" in out
    assert board.hello()["protocol"] == 1


def test_bridge_reports_a_dead_link_and_reconnects():
    """A bridge whose board does not exist answers LINK_DOWN with the reason, promptly."""
    from fedtiny.devices.bridge import Bridge

    bridge = Bridge("socket://127.0.0.1:1", timeout=0.5, retries=1).start()
    try:
        client = BoardClient(bridge.url, timeout=10.0, retries=1)
        with pytest.raises(BoardError, match="LINK_DOWN"):
            client.hello()
        with pytest.raises(BoardError, match="LINK_DOWN"):
            client.hello()  # tried again, not stuck
        client.close()
        assert bridge.link_failures == 2
    finally:
        bridge.close()


def test_params_beyond_the_model_are_rejected(board, task):
    model, _, _ = task
    board.load_model(model.to_bytes())
    with pytest.raises(BoardError, match="BAD_DATA"):
        board.request(P.PARAMS, (10**6).to_bytes(4, "little") + bytes(8))  # offset beyond the model


def test_bridge_resynchronises_after_garbage_and_corrupted_frames(fleet):
    """Garbage, a CRC-damaged and a truncated frame from a client cost only themselves."""
    client = BoardClient(fleet.urls[0], timeout=2.0, retries=3)
    client.send_raw(bytes(range(256)) + b"\xa5\x5a\x01\x02\x40\x00" + b"\xa5" * 50)  # garbage, a stray header
    assert client.hello()["protocol"] == 1
    bad = bytearray(P.frame(P.HELLO, 77))
    bad[-1] ^= 0xFF  # wrong CRC: ignored
    client.send_raw(bytes(bad))
    client.send_raw(P.frame(P.HELLO, 78)[:5])  # truncated
    assert client.hello()["protocol"] == 1  # the retrying client gets through
    with pytest.raises(BoardError, match="UNSUPPORTED"):
        client.request(0x33)
    client.close()


def test_damaged_link_in_both_directions(firmware, task, tmp_path):
    """An injector between the bridge and QEMU flips, drops and inserts bytes both ways; the
    board and the bridge resynchronise and retry, and the round's bytes are still the twin's."""
    from fedtiny.config import compose
    from fedtiny.devices.backend import BoardBackend
    from fedtiny.devices.emulate import Fleet
    from fedtiny.client.backend import RoundTask
    from fedtiny.client.simulated import SimulatedBackend

    model, feats, y = task
    codec_cfg = compose(["codec.bits=8"]).codec
    received = _received(model, 3)
    # a 1 KB frame meets one of the injector's hits in most tries (one per 800 bytes): the bridge
    # may need many tries for one LOAD chunk, so it gets 30 (each try is damaged with p < 0.8)
    with Fleet(firmware, [data_block(feats, y)], tmp_path, damage=0.0, damage_every=800, seed=7,
               in_process_bridges=True, retries=30) as f:
        for rnd in (1, 2, 3, 4):
            dev = BoardBackend(f.urls[0], 120.0).train(RoundTask(model, BASE, received, 1, rnd, codec_cfg, (1, rnd, 0), None))
            sim = SimulatedBackend(feats, y).train(RoundTask(model, BASE, received, 1, rnd, codec_cfg, (1, rnd, 0), None))
            assert {k: v.tobytes() for k, v in dev.blobs.items()} == {k: v.tobytes() for k, v in sim.blobs.items()}
        damaged = dict(f.injectors[0].damaged)
        bridge = f.bridges[0]
        passed = f.injectors[0].passed
        for way in ("to_board", "to_host"):  # one damaged byte in every 800, both ways
            assert 2 <= passed[way] // 800 <= damaged[way] <= passed[way] // 800 + 1, (damaged, passed)
        assert bridge.link_failures == 0  # retries absorbed every damaged frame


def test_a_board_on_a_pseudo_terminal(firmware, task, tmp_path):
    """The path of a board on a real port: QEMU's UART on a pseudo-terminal (/dev/pts/N), which
    `fedtiny board serve` opens with pyserial as a tty (termios), as it would /dev/ttyACM0. A
    round through it is still the twin's bytes."""
    import os
    import stat

    from fedtiny.config import compose
    from fedtiny.devices.backend import BoardBackend
    from fedtiny.devices.emulate import Fleet
    from fedtiny.client.backend import RoundTask
    from fedtiny.client.simulated import SimulatedBackend

    model, feats, y = task
    tc, overrides, _ = CASES["channels+bias-f32-4bit"]
    codec_cfg = compose(overrides).codec
    received = _received(model, 5)
    with Fleet(firmware, [data_block(feats, y)], tmp_path, serial="pty") as f:
        tty = f.board_urls[0]
        assert tty.startswith("/dev/pts/") and stat.S_ISCHR(os.stat(tty).st_mode)
        dev = BoardBackend(f.urls[0], 120.0).train(RoundTask(model, tc, received, 2, 4, codec_cfg, (2, 4, 1), None))
        sim = SimulatedBackend(feats, y).train(RoundTask(model, tc, received, 2, 4, codec_cfg, (2, 4, 1), None))
        assert {k: v.tobytes() for k, v in dev.blobs.items()} == {k: v.tobytes() for k, v in sim.blobs.items()}
        assert dev.subset == sim.subset and dev.accuracy == sim.accuracy
        qemu = f.qemu[0]
    assert qemu.poll() is not None  # stopped with the fleet
    with pytest.raises(ValueError, match="TCP proxy"):
        Fleet(firmware, [data_block(feats, y)], tmp_path, serial="pty", damage=0.01)


@pytest.fixture(scope="module")
def icount_board(firmware, task, tmp_path_factory):
    from fedtiny.devices.emulate import Fleet

    model, feats, y = task
    with Fleet(firmware, [data_block(feats, y)], tmp_path_factory.mktemp("icount"), icount=True,
               in_process_bridges=True) as f:
        client = BoardClient(f.urls[0], timeout=30.0, retries=1)
        client.load_model(model.to_bytes())
        yield client
        client.close()


def test_counter_counts_instructions_under_icount(icount_board):
    """-icount shift=0: 1 ns of virtual time per instruction; the FPGAIO counter ticks at 25 MHz,
    so a loop of exactly 4n instructions takes n/10 ticks (40 instructions per tick)."""
    t1, t2 = icount_board.spin(100_000), icount_board.spin(500_000)
    assert abs(4 * 400_000 / (t2 - t1) - 40.0) < 0.01


def test_profile_and_peak_ram_of_a_training_round(icount_board, task):
    model, feats, y = task
    tc = replace(BASE, update=(LayerUpdate(2), LayerUpdate("none"), LayerUpdate("none", False), LayerUpdate("all")))
    trainer = Trainer(model, tc)
    icount_board.set_params(trainer.device_params(trainer.get_params()))
    res = icount_board.train(tc, 2, 1, 8, True, False, (0, 1, 0))
    s = icount_board.stats()
    assert res["arena_bytes"] == trainer.plan.arena_bytes == s["arena_used"]  # the planner's figure, on the board
    assert s["samples"] == 2 * len(y) and s["steps"] == 2 * -(-len(y) // 8)
    assert 0 < s["stack_peak"] < 16384 and s["static_ram"] + s["stack_peak"] <= s["ram_budget"] == 256 * 1024
    first = model.first_trainable
    assert all(v == 0 for v in s["prefix"]) and all(s["forward"][i] > 0 for i in range(first, len(s["forward"])))
    assert s["backward"][-1] > 0 and s["backward"][first] > 0  # backprop reaches layer 0 (its channels train)
    parts = sum(s["forward"]) + sum(s["backward"]) + s["input"] + s["loss"] + s["apply"] + s["other"]
    assert 0.9 * s["total"] <= parts <= s["total"]  # every tick attributed, bar the epilogue
    p = icount_board.profile(3)  # one forward pass through the int8 prefix too
    assert all(p["prefix"][i] > 0 for i in range(first)) and p["samples"] == 1


def test_a_repeated_request_is_answered_without_running_again(fleet):
    """A client that repeats its request (a poll, or a lost reply) gets the same reply; the
    bridge forwards it to the board once."""
    import socket
    import time

    bridge = fleet.bridges[0]
    before = bridge.requests
    host, port = fleet.urls[0].removeprefix("socket://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        request = P.frame(P.HELLO, 42)
        s.sendall(request + request)
        rx, got, deadline = P.Receiver(), [], time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += rx.feed(s.recv(4096))
    assert [f.type for f in got] == [P.HELLO | P.REPLY] * 2 and got[0] == got[1]
    assert bridge.requests == before + 1


@contextlib.contextmanager
def _board_link(bridge):
    """The bridge's own link to its board's UART, held under the bridge's lock (nothing else
    reaches the board meanwhile): bytes written here bypass the bridge (a host that died
    mid-write), and replies are read raw."""
    with bridge.lock:
        if bridge.board is None:
            bridge.board = BoardClient(bridge.board_url, timeout=bridge.timeout, retries=bridge.retries)
        yield bridge.board


@pytest.mark.parametrize("stale", [bytes.fromhex("a55a01090004"), b"\xa5", b"\xa5\x5a", b"\xa5\x5a\x03\x01\xff",
                                   P.frame(P.LOAD, 3, bytes(1000))[:500]],
                         ids=["audit", "1", "2", "5", "payload"])
def test_a_partial_frame_does_not_make_the_board_deaf(fleet, stale):
    """The audit's six bytes (a header announcing 1,024 bytes that never come) on the board's
    UART, and other partial frames: the very next HELLO is answered on its first try, without a
    retry, because the board expires the stale start after 50 ms of silence."""
    import time

    with _board_link(fleet.bridges[0]) as raw:
        raw.send_raw(stale)
    client = BoardClient(fleet.urls[0], timeout=10.0, retries=1)
    t0 = time.monotonic()
    try:
        assert client.hello()["protocol"] == 1
    finally:
        client.close()
    print(f"recovered from {len(stale)} stale bytes in {time.monotonic() - t0:.3f} s")


def test_the_board_expires_a_stale_header_between_requests(fleet):
    """Directly on the UART (no bridge retries): stale bytes, then a HELLO right behind them,
    which the stale header swallows; the board still answers it once the line goes idle."""
    with _board_link(fleet.bridges[0]) as raw:
        raw.send_raw(bytes.fromhex("a55a01090004"))
        reply = raw.exchange(P.HELLO, b"", timeout=5.0)  # one try of 5 s; retries=3 would hide a miss
        assert reply.type == P.HELLO | P.REPLY


def test_spin_is_acknowledged_as_the_header_says(fleet):
    """ft_proto.h: ACK for TRAIN, PROFILE and SPIN. Read raw from the board's UART."""
    import time

    with _board_link(fleet.bridges[0]) as raw:
        raw.send_raw(P.frame(P.SPIN, 201, (1000).to_bytes(4, "little")))
        got, deadline = [], time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += raw._frames()
        assert [(f.type, f.seq) for f in got] == [(P.ACK, 201), (P.SPIN | P.REPLY, 201)]
        raw.send_raw(P.frame(P.SPIN, 202, (1 << 29).to_bytes(4, "little")))  # beyond the bound
        got, deadline = [], time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += raw._frames()
        assert got[0].type == P.ACK and got[1].type == P.ERROR and "BAD_CONFIG" in P.error_text(got[1].payload)


@pytest.mark.parametrize("field,value", [("epochs", 0x7FFFFFFF), ("epochs", 0), ("batch", 0), ("batch", 5000),
                                         ("lr", float("nan")), ("lr", float("inf")), ("lr", 0.0), ("momentum", 1.0),
                                         ("bits", 3), ("clip", float("nan")), ("noise", 1.0)])
def test_every_train_field_is_bounded_on_the_board(board, task, field, value):
    """The audit's epochs = 0x7FFFFFFF (hours of training) and other out-of-range fields are
    refused at once with BAD_CONFIG, before the board trains."""
    import struct

    model, _, _ = task
    board.load_model(model.to_bytes())
    fields = dict(epochs=1, seed=1, lr=0.05, momentum=0.9, wd=0.0, mu=0.0, batch=8, bits=8, pc=1, nearest=0, k1=0,
                  k2=0, k3=0, clip=0.0, noise=0.0, precision=0, rounding=0)
    fields[field] = value
    payload = struct.pack("<IIffffIIIIIIIffIII", *fields.values(), 0)
    with pytest.raises(BoardError, match="BAD_CONFIG"):
        board.request(P.TRAIN, payload)


def test_the_same_bounds_are_refused_at_config_time():
    import re

    from fedtiny import config as C
    from fedtiny.config import compose
    from fedtiny.errors import ConfigError

    header = (Path(__file__).resolve().parents[1] / "device_trainer_c/include/fedtiny/ft_trainer.h").read_text()
    c_bounds = {m[0]: float(m[1].rstrip("f")) for m in re.findall(r"#define FT_(MAX_\w+) ([0-9.]+f?)", header)}
    for name in ("MAX_EPOCHS", "MAX_BATCH", "MAX_LR", "MAX_WEIGHT_DECAY", "MAX_PROX_MU"):
        assert getattr(C, name) == c_bounds[name], name
    for override, msg in ((f"client.epochs={C.MAX_EPOCHS + 1}", "client.epochs must be in"),
                          (f"client.batch_size={C.MAX_BATCH + 1}", "client.batch_size must be in"),
                          ("client.lr=1000", "client.lr must be in"), ("client.weight_decay=2", "weight_decay"),
                          ("strategy=fedprox", None)):
        if msg is None:
            compose([override])
            continue
        with pytest.raises(ConfigError, match=msg):
            compose([override])


def test_a_long_training_request_can_be_cancelled(firmware, tmp_path):
    """A TRAIN of 1,000 epochs (minutes on this board) holds it; a CANCEL on another connection
    to the bridge stops it: the waiting client gets CANCELLED, and the board serves the next
    request."""
    import threading
    import time

    from fedtiny.devices.emulate import Fleet

    rng = np.random.default_rng(7)
    model = Model(random_model(rng, frozen=("conv2d",), trainable=("conv2d", "conv2d", "flatten", "fc"),
                               input_shape=(12, 12, 3)))
    x = rng.integers(-128, 128, (200, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 200).astype(np.uint8)
    tc = TrainConfig(lr=0.01, batch_size=4)
    with Fleet(firmware, [data_block(model.prefix_features(x), y)], tmp_path, in_process_bridges=True) as fleet:
        url = fleet.urls[0]
        client = BoardClient(url, timeout=60.0, retries=1, train_timeout=900.0)
        client.load_model(model.to_bytes())
        trainer = Trainer(model, tc)
        client.set_params(trainer.device_params(trainer.get_params()))
        outcome = {}

        def long_train():
            try:
                outcome["result"] = client.train(tc, 1000, 1, 8, True, False, (0, 1, 0))
            except BoardError as err:
                outcome["error"] = str(err)

        worker = threading.Thread(target=long_train)
        worker.start()
        time.sleep(3.0)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "fedtiny", "board", "cancel", url], capture_output=True,
                              text=True, timeout=60)  # as the README shows it
        assert proc.returncode == 0 and "cancel sent and answered" in proc.stdout, proc.stderr
        worker.join(timeout=300)
        print(f"cancelled in {time.monotonic() - t0:.3f} s")
        client.close()
        assert not worker.is_alive() and "CANCELLED" in outcome.get("error", ""), outcome
        after = BoardClient(url, timeout=10.0, retries=1)
        try:
            assert after.hello()["protocol"] == 1
            after.set_params(trainer.device_params(trainer.get_params()))
            assert after.train(tc, 1, 1, 8, True, False, (0, 1, 0))["count"] == len(y)
        finally:
            after.close()
        assert fleet.bridges[0].cancels == 1


def _every_candidate_on_the_board(model, x, y, firmware, workdir, codec_overrides=("codec.bits=8",)):
    """Run every planner candidate (float32 and int8) on emulated boards whose data enters where
    the scheme starts; returns [(scheme, planned, board arena, simulated arena)]."""
    from fedtiny.budgets.memory import candidate_schemes, scheme_config
    from fedtiny.config import compose
    from fedtiny.devices.backend import BoardBackend
    from fedtiny.devices.emulate import Fleet
    from fedtiny.client.backend import RoundTask
    from fedtiny.client.simulated import SimulatedBackend
    from fedtiny.trainer import plan

    base = TrainConfig(lr=0.05, momentum=0.9, batch_size=8)
    configs = [(s, scheme_config(model, base, s.update, s.precision))
               for s in candidate_schemes(model, ("float32", "int8"))]
    starts = sorted({tc.start_layer for _, tc in configs})
    feats = {k: model.features_at(x, k) if k else model.prefix_features(x) for k in starts}
    codec_cfg = compose(list(codec_overrides)).codec
    received = _received(model, 3)
    out = []
    with Fleet(firmware, [data_block(feats[k], y, k) for k in starts], workdir, in_process_bridges=True) as fleet:
        for s, tc in configs:
            url = fleet.urls[starts.index(tc.start_layer)]
            job = RoundTask(model, tc, received, 1, 5, codec_cfg, (1, 1, 1), None)
            sim, dev = SimulatedBackend(feats[tc.start_layer], y).train(job), BoardBackend(url, 120.0).train(job)
            assert {k: b.tobytes() for k, b in dev.blobs.items()} == {k: b.tobytes() for k, b in sim.blobs.items()}
            out.append((s.name, plan(model, tc).arena_bytes, dev.arena_bytes, sim.arena_bytes))
    return out


def test_planned_equals_measured_on_the_board_for_every_candidate(firmware, task, tmp_path):
    """The planner's arena for every candidate scheme (both precisions) is the arena high-water
    mark the board measures, and the board sends the simulated device's bytes."""
    model, _, y = task
    x = np.random.default_rng(42).integers(-128, 128, (40, *model.input_shape)).astype(np.int8)
    rows = _every_candidate_on_the_board(model, x, y, firmware, tmp_path)
    assert len(rows) >= 8 and any("/int8" in r[0] for r in rows)
    for name, planned, board_arena, sim_arena in rows:
        assert board_arena == planned == sim_arena, name
        print(f"{name}: planned {planned} B, board {board_arena} B")


@pytest.mark.parametrize("preset", ["experiment=digits_quick", "rounds=10"])  # digits_quick, the default
def test_the_audit_budget_and_every_candidate_of_the_real_models(firmware, tmp_path, cache_dir, preset):
    """The audit's case (digits_quick, budget.memory.sram_kb=[9.7] with float32 and int8: the
    planner picks head/int8 at 1,680 B; the board used 1,808 B) and the default IMU model: every
    candidate uses on the board exactly the planned arena, and sends the simulated bytes."""
    from fedtiny.client.context import RunContext
    from fedtiny.config import compose

    budget = ["budget.memory.sram_kb=[9.7]", "budget.memory.precisions=[float32,int8]"]
    cfg = compose([preset, f"cache_dir={cache_dir}"] + (budget if "digits" in preset else []))
    st = RunContext(cfg)
    c = st.task.clients[0]
    x = st.model.quantize_input(c.train.x[:48])
    rows = _every_candidate_on_the_board(st.model, x, c.train.y[:48].astype(np.uint8), firmware, tmp_path)
    if "digits" in preset:
        (scheme, need), = st.memory_schemes().values()
        assert (scheme.name, need) == ("head/int8", 1680)
        assert [r[2] for r in rows if r[0] == scheme.name] == [1680]  # measured on the board: 1,808 before
    for name, planned, board_arena, sim_arena in rows:
        assert board_arena == planned == sim_arena, name
        print(f"{preset} {name}: planned {planned} B, board {board_arena} B")
