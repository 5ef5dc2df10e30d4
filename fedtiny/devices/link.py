"""Talking to a board over a serial link: real ports (``/dev/ttyACM0``) and QEMU's serial port
(``socket://127.0.0.1:<port>``), both through pyserial's ``serial_for_url``.

:class:`BoardClient` sends framed requests (``fedtiny.devices.protocol``) with sequence numbers,
waits for the matching reply, and retries on timeout; a board error reply raises
:class:`BoardError` with the board's status name.
"""

from __future__ import annotations

import struct
import time

import numpy as np

from fedtiny import _core
from fedtiny.devices import protocol as P


class BoardError(RuntimeError):
    pass


class BoardClient:
    def __init__(self, url: str, timeout: float = 5.0, retries: int = 3) -> None:
        import serial

        self.port = serial.serial_for_url(url, baudrate=115200, timeout=0.05)
        self.timeout, self.retries = timeout, retries
        self.rx = P.Receiver()
        self.seq = 0

    def close(self) -> None:
        self.port.close()

    def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the link (tests inject garbage this way)."""
        self.port.write(data)

    def request(self, type_: int, payload: bytes = b"", timeout: float | None = None) -> bytes:
        for _ in range(self.retries):
            self.seq = (self.seq + 1) & 0xFF
            self.port.write(P.frame(type_, self.seq, payload))
            deadline = time.monotonic() + (timeout or self.timeout)
            while time.monotonic() < deadline:
                for f in self.rx.feed(self.port.read(4096)):
                    if f.seq != self.seq:
                        continue  # a late reply to an earlier, retried request
                    if f.type == P.ERROR:
                        status = struct.unpack_from("<I", f.payload)[0] if len(f.payload) >= 4 else -1
                        raise BoardError(f"board error {_core.status_name(status)} for request type {type_}")
                    if f.type == (type_ | P.REPLY):
                        return f.payload
        raise BoardError(f"no reply to request type {type_} after {self.retries} tries of {timeout or self.timeout:g} s")

    def hello(self) -> dict:
        p = self.request(P.HELLO)
        if p[:4] != b"FTBD":
            raise BoardError(f"not a fedtiny board: {p[:4]!r}")
        proto, sram = struct.unpack_from("<II", p, 4)
        version = p[12:20].rstrip(b"\0").decode()
        model_crc, samples = struct.unpack_from("<II", p, 20)
        return {"protocol": proto, "sram_kb": sram, "trainer_version": version, "model_crc32": model_crc,
                "samples": samples}

    def load_model(self, data: bytes) -> None:
        chunk = P.MAX_PAYLOAD - 8
        for off in range(0, len(data), chunk):
            part = data[off : off + chunk]
            self.request(P.LOAD, struct.pack("<II", off, len(data)) + part)

    def set_params(self, params: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """The global model's trainable values (per layer: weights, then bias), in chunks."""
        flat = np.concatenate([np.concatenate([np.ravel(w), np.ravel(b)]).astype("<f4") for w, b in params])
        per = (P.MAX_PAYLOAD - 4) // 4
        for off in range(0, flat.size, per):
            self.request(P.PARAMS, struct.pack("<I", off) + flat[off : off + per].tobytes())

    def train(self, epochs: int, seed: int, lr: float, momentum: float, batch: int, bits: int, per_channel: bool,
              nearest: bool, key: tuple[int, int, int]) -> dict:
        payload = struct.pack("<IIffIIIIIII", epochs, seed, lr, momentum, batch, bits, int(per_channel), int(nearest),
                              *key)
        st, loss, correct, count, size = struct.unpack("<IfIII", self.request(P.TRAIN, payload, timeout=120.0))
        return {"loss": loss, "correct": correct, "count": count, "update_bytes": size}

    def update(self, size: int) -> dict[str, np.ndarray]:
        data = b""
        while len(data) < size:
            data += self.request(P.UPDATE, struct.pack("<I", len(data)))
        (count,) = struct.unpack_from("<I", data)
        out, at = {}, 4
        for _ in range(count):
            n = data[at]
            name = data[at + 1 : at + 1 + n].decode()
            at += 1 + n
            (blob_len,) = struct.unpack_from("<I", data, at)
            out[name] = np.frombuffer(data[at + 4 : at + 4 + blob_len], np.uint8)
            at += 4 + blob_len
        return out

    def evaluate(self) -> dict:
        st, loss, correct, count = struct.unpack("<IfII", self.request(P.EVALUATE))
        return {"loss": loss, "correct": correct, "count": count}


def data_block(x: np.ndarray, y: np.ndarray) -> bytes:
    """Local data as a board's flash holds it: "FTDS" block of int8 features and labels."""
    x = np.ascontiguousarray(x, np.int8).reshape(len(y), -1)
    head = 24
    x_off = head
    y_off = (x_off + x.nbytes + 7) & ~7
    out = bytearray(y_off + len(y))
    struct.pack_into("<4sIIIII", out, 0, b"FTDS", 1, len(y), x.shape[1], x_off, y_off)
    out[x_off : x_off + x.nbytes] = x.tobytes()
    out[y_off:] = np.asarray(y, np.uint8).tobytes()
    return bytes(out)
