"""Talking to a board over a serial link: real ports (``/dev/ttyACM0``) and QEMU's serial port
(``socket://127.0.0.1:<port>``), both through pyserial's ``serial_for_url``.

:class:`BoardClient` sends framed requests (``fedtiny.devices.protocol``) with sequence numbers,
waits for the matching reply, and retries on timeout; a board error reply raises
:class:`BoardError` with the board's status name.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib

import numpy as np

from fedtiny.devices import protocol as P


MAX_UPDATE_BYTES = 1 << 20  # far above any board's update buffer (24 KiB on mps2_an386)


class BoardError(RuntimeError):
    pass


class BoardClient:
    def __init__(self, url: str, timeout: float = 5.0, retries: int = 3, train_timeout: float = 300.0) -> None:
        import serial

        if "fedtiny.devices" not in serial.protocol_handler_packages:  # ble:// (fedtiny.devices.protocol_ble)
            serial.protocol_handler_packages.append("fedtiny.devices")
        self.port = serial.serial_for_url(url, baudrate=115200, timeout=0.05)
        self._wlock = threading.Lock()  # whole frames: a CANCEL may be written from another thread
        self.timeout, self.retries, self.train_timeout = timeout, retries, train_timeout
        self.rx = P.Receiver()
        self.seq = 0
        self._last_byte = time.monotonic()
        self.bytes_out = self.bytes_in = 0  # on the link, frames and all

    def close(self) -> None:
        self.port.close()

    def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the link (tests inject garbage this way)."""
        with self._wlock:
            self.port.write(data)
            self.bytes_out += len(data)

    def send_cancel(self) -> int:
        """Write a CANCEL frame without waiting for anything (safe while another thread is in
        :meth:`exchange` on this link: that exchange then gets the TRAIN's ERROR CANCELLED).
        Its sequence number (outside the exchanges' own) is returned."""
        seq = (self.seq + 0x80) & 0xFF
        self.send_raw(P.frame(P.CANCEL, seq))
        return seq

    def _frames(self) -> list[P.Frame]:
        """Frames completed by what the link has now; a partial frame followed by
        P.BYTE_TIMEOUT of silence is expired (a board reset or stray bytes mid-frame)."""
        data = self.port.read(4096)
        now = time.monotonic()
        if data:
            self.bytes_in += len(data)
            self._last_byte = now
            return self.rx.feed(data)
        if self.rx.pending and now - self._last_byte > P.BYTE_TIMEOUT:
            return self.rx.expire()
        return []

    def resync(self) -> None:
        """Leave the line idle long enough for the board to expire any partial frame (its
        inter-byte timeout), and drop whatever the host had half-received."""
        time.sleep(3 * P.BOARD_BYTE_TIMEOUT)
        self.port.read(65536)
        self.rx.buf.clear()

    def cancel(self) -> bool:
        """Ask the board to stop a TRAIN in progress (its reply becomes ERROR CANCELLED); True if
        the board (or bridge) answered. Sent outside any exchange: a separate sequence number."""
        seq = self.send_cancel()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for f in self._frames():
                if f.seq == seq and f.type in (P.CANCEL | P.REPLY, P.ERROR):
                    return True
        return False

    def exchange(self, type_: int, payload: bytes = b"", timeout: float | None = None,
                 seq: int | None = None) -> P.Frame:
        """Send a request and return the board's reply frame (its reply or an ERROR frame).
        Every try repeats the same frame (same seq): a board that already executed it resends
        its reply instead of executing it again. A SLOW request waits the short timeout for the
        board's ACK, then asks again every short timeout until the reply comes, at most
        `train_timeout` in all; raises BoardError after `retries` unanswered tries. `seq` repeats
        a request sent before under that number (over a link opened again)."""
        short = timeout or self.timeout
        self.seq = (self.seq + 1) & 0xFF if seq is None else seq
        request = P.frame(type_, self.seq, payload)
        tries = 0
        acked_until = 0.0
        while True:
            self.send_raw(request)
            tries += 1
            deadline = time.monotonic() + short
            while time.monotonic() < deadline:
                for f in self._frames():
                    if f.seq != self.seq:
                        continue  # a late reply to an earlier request
                    if f.type == P.ACK and type_ in P.SLOW:
                        if not acked_until:
                            acked_until = time.monotonic() + self.train_timeout
                    elif f.type in (P.ERROR, type_ | P.REPLY):
                        return f
            if acked_until and time.monotonic() < acked_until:
                tries = 0  # the board is working on it: keep asking (it resends the reply once done)
            elif tries >= self.retries:
                raise BoardError(f"no reply to request type {type_} after {self.retries} tries of {short:g} s"
                                 + (f" and {self.train_timeout:g} s of work" if acked_until else ""))

    def request(self, type_: int, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """The payload of the board's reply; an ERROR reply raises BoardError with its status."""
        f = self.exchange(type_, payload, timeout)
        if f.type == P.ERROR:
            raise BoardError(f"board error {P.error_text(f.payload)} for request type {type_}")
        return f.payload

    def _fields(self, fmt: str, payload: bytes, what: str) -> tuple:
        """A reply's fixed fields, or BoardError naming the malformed reply."""
        if len(payload) < struct.calcsize(fmt):
            raise BoardError(f"malformed {what} reply: {len(payload)} bytes, expected {struct.calcsize(fmt)}")
        return struct.unpack_from(fmt, payload)

    def hello(self) -> dict:
        p = self.request(P.HELLO)
        if len(p) < 28:
            raise BoardError(f"malformed HELLO reply: {len(p)} bytes, expected 28")
        if p[:4] != b"FTBD":
            raise BoardError(f"not a fedtiny board: {p[:4]!r}")
        proto, sram = struct.unpack_from("<II", p, 4)
        version = p[12:20].rstrip(b"\0").decode()
        model_crc, samples = struct.unpack_from("<II", p, 20)
        start = struct.unpack_from("<I", p, 28)[0] if len(p) >= 32 else 0  # older firmware: int8 features
        trains = struct.unpack_from("<I", p, 32)[0] if len(p) >= 36 else None  # older firmware: not counted
        deployed, deployed_crc = struct.unpack_from("<II", p, 36) if len(p) >= 44 else (None, None)
        return {"protocol": proto, "sram_kb": sram, "trainer_version": version, "model_crc32": model_crc,
                "samples": samples, "start_layer": start, "trains_run": trains, "deployed_version": deployed,
                "deployed_crc32": deployed_crc}

    def deploy(self, data: bytes, version: int, stop_after: int | None = None) -> dict:
        """Send a model file as the board's next deployed model (``fedtiny deploy``): DEPLOY
        (version, size, CRC-32) erases the inactive slot, DEPLOY_DATA chunks fill it,
        DEPLOY_COMMIT makes the board check the CRC, load and evaluate the model and only then
        activate it (else it rolls back and the reply is an error naming the failing step).
        Returns the board's evaluation of the new model. `stop_after` chunks: stop there
        without committing (tests: a transfer cut short)."""
        if not 0 < version < 2**32:
            raise ValueError(f"version must be in [1, 2^32), got {version}")
        crc = zlib.crc32(data) & 0xFFFFFFFF
        self._fields("<II", self.request(P.DEPLOY, struct.pack("<III", version, len(data), crc)), "DEPLOY")
        chunk = P.MAX_PAYLOAD - 4
        for k, off in enumerate(range(0, len(data), chunk)):
            if stop_after is not None and k >= stop_after:
                return {"committed": False, "bytes_sent": off}
            st, received = self._fields("<II", self.request(P.DEPLOY_DATA, struct.pack("<I", off)
                                                            + data[off : off + chunk]), "DEPLOY_DATA")
            if received != min(off + chunk, len(data)):
                raise BoardError(f"DEPLOY_DATA: the board holds {received} bytes after offset {off}")
        st, ver, crc_b, loss, correct, count = self._fields("<IIIfII", self.request(P.DEPLOY_COMMIT), "DEPLOY_COMMIT")
        if (ver, crc_b) != (version, crc):
            raise BoardError(f"DEPLOY_COMMIT: the board activated version {ver} CRC {crc_b:08x}, not {version} {crc:08x}")
        return {"committed": True, "version": ver, "crc32": crc_b, "loss": loss, "correct": correct, "count": count,
                "accuracy": correct / count if count else None}

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

    def train(self, tc, epochs: int, seed: int, bits: int, per_channel: bool, nearest: bool,
              key: tuple[int, int, int], clip: float = 0.0, noise_std: float = 0.0) -> dict:
        """Train on the board's local data from the global values it holds (LOAD, PARAMS) with the
        settings and update scheme of `tc` (a :class:`fedtiny.trainer.TrainConfig`), then encode the
        change; with clip > 0 the update is clipped (and gets local noise of std noise_std) as
        :func:`fedtiny.client.round.encode_private` does."""
        updates = [u._arg() for u in tc.update] if tc.update is not None else []
        payload = struct.pack("<IIffffIIIIIIIffIII", epochs, seed & 0xFFFFFFFF, tc.lr, tc.momentum, tc.weight_decay,
                              tc.prox_mu, tc.batch_size, bits, int(per_channel), int(nearest), *key, clip, noise_std,
                              tc._precision_arg(), tc._rounding_arg(), len(updates))
        payload += b"".join(struct.pack("<BBH", *u) for u in updates)
        st, loss, correct, count, size, arena = self._fields("<IfIIII", self.request(P.TRAIN, payload), "TRAIN")
        if not 4 <= size <= MAX_UPDATE_BYTES:
            raise BoardError(f"board reports an update of {size} bytes (allowed 4..{MAX_UPDATE_BYTES})")
        return {"loss": loss, "correct": correct, "count": count, "update_bytes": size, "arena_bytes": arena}

    def update(self, size: int) -> dict[str, np.ndarray]:
        """The encoded update of the last TRAIN: `size` bytes fetched in chunks and split into
        named blobs; a malformed layout raises BoardError (the server validates each blob)."""
        data = b""
        while len(data) < size:
            part = self.request(P.UPDATE, struct.pack("<I", len(data)))
            if not part:
                raise BoardError(f"board sent no update bytes at offset {len(data)} of {size}")
            data += part
        data = data[:size]
        (count,) = self._fields("<I", data, "UPDATE")
        out, at = {}, 4
        for _ in range(count):
            if at >= len(data) or at + 1 + data[at] + 4 > len(data):
                raise BoardError(f"malformed update: tensor entry at byte {at} runs past {len(data)} bytes")
            n = data[at]
            name = data[at + 1 : at + 1 + n].decode(errors="replace")
            at += 1 + n
            (blob_len,) = struct.unpack_from("<I", data, at)
            if at + 4 + blob_len > len(data):
                raise BoardError(f"malformed update: blob {name} of {blob_len} bytes runs past {len(data)} bytes")
            out[name] = np.frombuffer(data[at + 4 : at + 4 + blob_len], np.uint8)
            at += 4 + blob_len
        if at != len(data):
            raise BoardError(f"malformed update: {len(data) - at} bytes after the last tensor")
        return out

    def stats(self) -> dict:
        """RAM figures and the counter-tick profile of the last TRAIN or PROFILE (see board_main.c)."""
        p = self.request(P.STATS)
        names = ("status", "ram_budget", "static_ram", "stack_peak", "arena_used", "arena_size", "total", "samples",
                 "steps", "input", "loss", "apply", "other", "layers")
        out = dict(zip(names, self._fields(f"<{len(names)}I", p, "STATS")))
        per = self._fields(f"<{3 * out['layers']}I", p[4 * len(names):], "STATS")
        out["prefix"], out["forward"], out["backward"] = list(per[0::3]), list(per[1::3]), list(per[2::3])
        return out

    def profile(self, seed: int = 1) -> dict:
        """One profiled forward pass through the whole model (int8 prefix included); its stats."""
        self.request(P.PROFILE, struct.pack("<I", seed))
        return self.stats()

    def spin(self, n: int) -> int:
        """Counter ticks of a loop of 4n instructions on the board."""
        return self._fields("<II", self.request(P.SPIN, struct.pack("<I", n)), "SPIN")[1]

    def evaluate(self) -> dict:
        st, loss, correct, count = self._fields("<IfII", self.request(P.EVALUATE), "EVALUATE")
        return {"loss": loss, "correct": correct, "count": count}


def bridge_stats(url: str, timeout: float = 2.0) -> dict | None:
    """A bridge's counters (requests, link_failures, reconnects, cancels), or None when `url`
    is not a bridge that answers (a board's own port says UNSUPPORTED)."""
    import json

    try:
        client = BoardClient(url, timeout=timeout, retries=1)
    except (OSError, ValueError):
        return None
    try:
        f = client.exchange(P.BRIDGE)
        return json.loads(f.payload) if f.type == P.BRIDGE | P.REPLY else None
    except (BoardError, OSError, ValueError):
        return None
    finally:
        client.close()


def data_block(x: np.ndarray, y: np.ndarray, start_layer: int = 0) -> bytes:
    """Local data as a board's flash holds it (an "FTDS" block, board_main.c): int8 features at
    the model boundary (version 1), or with `start_layer` k > 0 float32 features entering
    trainable layer k (version 2: cached below the layers the device's scheme updates)."""
    if start_layer > 0:
        x = np.ascontiguousarray(x, "<f4").reshape(len(y), -1)
        head = 32
    else:
        x = np.ascontiguousarray(x, np.int8).reshape(len(y), -1)
        head = 24
    x_off = head
    y_off = (x_off + x.nbytes + 7) & ~7
    out = bytearray(y_off + len(y))
    if start_layer > 0:
        struct.pack_into("<4sIIIIII", out, 0, b"FTDS", 2, len(y), x.shape[1], x_off, y_off, start_layer)
    else:
        struct.pack_into("<4sIIIII", out, 0, b"FTDS", 1, len(y), x.shape[1], x_off, y_off)
    out[x_off : x_off + x.nbytes] = x.tobytes()
    out[y_off:] = np.asarray(y, np.uint8).tobytes()
    return bytes(out)
