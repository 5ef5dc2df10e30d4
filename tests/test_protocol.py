"""Serial protocol: the board's receiver (C, ft_proto_feed) and the host's (Python) agree with
each other and with the frames written, on streams with garbage, truncated and corrupted frames."""

from __future__ import annotations

import numpy as np
import pytest

from fedtiny import _core
from fedtiny.devices.protocol import MAX_PAYLOAD, Frame, Receiver, frame


def _stream(seed: int):
    rng = np.random.default_rng(seed)
    out, intact = bytearray(), []
    for i in range(300):
        if rng.random() < 0.15:  # garbage, with sync bytes in it
            junk = rng.integers(0, 256, int(rng.integers(1, 60)), dtype=np.uint8)
            junk[::4] = 0xA5
            junk[1::4] = 0x5A
            out += junk.tobytes()
        payload = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        f = frame(int(rng.integers(1, 7)), i % 256, payload)
        fate = rng.random()
        if fate < 0.1:
            b = bytearray(f)
            b[int(rng.integers(2, len(b)))] ^= 1 << int(rng.integers(0, 8))
            f = bytes(b)
        elif fate < 0.2:
            f = f[: int(rng.integers(1, len(f)))]
        else:
            intact.append(Frame(f[2], f[3], payload))
        out += f
    return bytes(out), intact


@pytest.mark.parametrize("seed", range(6))
def test_both_receivers_recover_every_intact_frame(seed):
    data, intact = _stream(seed)
    py = Receiver().feed(data)
    frames, dropped, skipped = _core.proto_parse(data)
    assert py == intact
    assert [Frame(t, s, p) for t, s, p in frames] == intact
    assert dropped > 0 and skipped > 0


def test_c_and_python_write_identical_frames():
    rng = np.random.default_rng(1)
    for _ in range(200):
        payload = rng.integers(0, 256, int(rng.integers(0, MAX_PAYLOAD + 1)), dtype=np.uint8).tobytes()
        t, s = int(rng.integers(0, 256)), int(rng.integers(0, 256))
        assert _core.proto_write(t, s, payload) == frame(t, s, payload)
    assert _core.proto_write(1, 0, bytes(MAX_PAYLOAD + 1)) == b""
    with pytest.raises(ValueError, match="exceeds"):
        frame(1, 0, bytes(MAX_PAYLOAD + 1))


def test_byte_at_a_time_and_oversized_lengths():
    rx = Receiver()
    f = frame(3, 9, b"hello")
    got = [g for b in f for g in rx.feed(bytes([b]))]
    assert got == [Frame(3, 9, b"hello")]
    bad = b"\xa5\x5a\x01\x00\xff\xff" + frame(2, 1, b"x")  # length 65535 > MAX: rescanned, next frame kept
    assert Receiver().feed(bad) == [Frame(2, 1, b"x")]
    assert [Frame(*t) for t in _core.proto_parse(bad)[0]] == [Frame(2, 1, b"x")]


def test_board_url_from_node_config_or_the_experiment():
    """A deployed SuperNode names its board in its node config; in simulation devices.urls maps
    boards to partitions; every other partition is simulated."""
    from flwr.app import Context, RecordDict

    from fedtiny.config import compose
    from fedtiny.client.round import board_url

    cfg = compose(['devices.urls=["socket://127.0.0.1:7001","socket://127.0.0.1:7002"]', "devices.partitions=[4,7]"])
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 4}, state=RecordDict(), run_config={})
    assert board_url(cfg, 4, ctx) == "socket://127.0.0.1:7001" and board_url(cfg, 7, None) == "socket://127.0.0.1:7002"
    assert board_url(cfg, 5, ctx) is None
    node = Context(run_id=1, node_id=2, node_config={"partition-id": 5, "board-url": "/dev/ttyACM0"},
                   state=RecordDict(), run_config={})
    assert board_url(cfg, 5, node) == "/dev/ttyACM0"
    assert board_url(compose([]), 0, None) is None


@pytest.mark.parametrize("overrides,message", [
    (["devices.emulate=2", 'devices.urls=["socket://x:1"]'], "not both"),
    (["devices.emulate=2", "devices.partitions=[0]"], "one per board"),
    (["devices.emulate=2", "devices.partitions=[3,3]"], "distinct"),
    (["devices.emulate=1", "devices.partitions=[99]"], "partition ids"),
    (["devices.emulate=1", "codec=q1_ef"], "error-feedback"),
    (["devices.emulate=-1"], "devices"),
    (["devices.damage=0.7"], "damage"),
    (["devices.serial=usb"], r"devices.serial must be one of \['tcp', 'pty'\]"),
    (["devices.serial=pty", "devices.damage=0.01"], "TCP proxy"),
])
def test_bad_device_settings_fail_before_anything_starts(overrides, message):
    from fedtiny.config import compose
    from fedtiny.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        compose(overrides)


def test_malformed_board_replies_are_rejected_with_a_reason():
    """CRC-valid replies with bad contents (a board with a bug, or a hostile one) raise
    BoardError naming the problem, and never loop or crash the client."""
    import socket
    import struct
    import threading

    from fedtiny.devices import protocol as P
    from fedtiny.devices.link import BoardClient, BoardError

    replies = {}

    def serve(listener):
        conn, _ = listener.accept()
        rx = Receiver()
        with conn:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                for f in rx.feed(data):
                    key = f.type if f.type != P.UPDATE else (P.UPDATE, struct.unpack("<I", f.payload)[0])
                    conn.sendall(frame(f.type | P.REPLY, f.seq, replies.get(key, b"")))

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    client = BoardClient(f"socket://127.0.0.1:{listener.getsockname()[1]}", timeout=2.0, retries=1)
    try:
        replies[P.HELLO] = b"FTBD" + bytes(8)
        with pytest.raises(BoardError, match="malformed HELLO reply: 12 bytes"):
            client.hello()
        with pytest.raises(BoardError, match="no update bytes at offset 0"):
            client.update(100)  # the board answers UPDATE with nothing
        blob = struct.pack("<I", 1) + bytes([6]) + b"layer0" + struct.pack("<I", 500) + bytes(10)
        replies[(P.UPDATE, 0)] = blob
        with pytest.raises(BoardError, match="blob layer0 of 500 bytes runs past"):
            client.update(len(blob))
        replies[P.EVALUATE] = bytes(3)
        with pytest.raises(BoardError, match="malformed EVALUATE reply"):
            client.evaluate()
    finally:
        client.close()
        listener.close()


def _partials():
    """Stale starts a real line produces: a header cut after 1..6 bytes (the audit's six bytes
    announce 1,024 bytes that never come), and frames cut inside their payload or CRC."""
    long = frame(9, 4, bytes(range(256)) * 4)  # 1,024-byte payload
    yield from (("header", n, long[:n]) for n in range(1, 7))
    yield "audit", 6, bytes.fromhex("a55a01090004")
    for cut in (7, 100, 700, len(long) - 4, len(long) - 1):
        yield "payload", cut, long[:cut]


@pytest.mark.parametrize("kind,n,stale", list(_partials()), ids=lambda v: str(v)[:12])
def test_a_partial_frame_expires_after_an_idle_line(kind, n, stale):
    """Both receivers: a stale partial frame, then (a) the next requests right behind it, swallowed
    as its payload, found when the line goes idle; (b) an idle line, then the next frame."""
    nxt = [frame(1, 7), frame(5, 8, b"abc")]
    data = stale + b"".join(nxt)
    want = [Frame(1, 7, b""), Frame(5, 8, b"abc")]
    rx = Receiver()
    got = rx.feed(data) + rx.expire()
    assert got == want and rx.pending == 0
    assert [Frame(*t) for t in _core.proto_parse(data, [len(data)])[0]] == want
    rx = Receiver()
    assert rx.feed(stale) == [] and rx.expire() == [] and rx.pending == 0
    assert rx.feed(b"".join(nxt)) == want
    assert [Frame(*t) for t in _core.proto_parse(data, [len(stale), len(data)])[0]] == want
    # without the idle line a stale start that still awaits many bytes swallows the next
    # request: the deafness the timeout cures
    if kind == "audit" or (kind == "header" and n == 6) or (kind == "payload" and n <= 700):
        assert _core.proto_parse(stale + frame(1, 7))[0] == []
