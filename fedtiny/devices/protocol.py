"""The host side of fedtiny's serial protocol (``device_trainer_c/include/fedtiny/ft_proto.h``).

    frame = A5 5A | type | seq | length (u16 LE) | payload | CRC-32 (u32 LE) of type..payload

:func:`frame` writes one; :class:`Receiver` is the same resynchronising byte-at-a-time state
machine as the board's (``ft_proto_feed``): after a bad length or CRC it drops one byte and
rescans what it had buffered, so garbage, truncated and corrupted frames cost only themselves.
When the line has been idle for ``BYTE_TIMEOUT`` with part of a frame buffered, :meth:`Receiver.expire`
drops the stale start and rescans the rest, as the board's ``ft_proto_expire`` does after
``FT_PROTO_BYTE_TIMEOUT_MS``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

SYNC = b"\xa5\x5a"
HEADER = 6
MAX_PAYLOAD = 1024
REPLY = 0x80
HELLO, LOAD, TRAIN, UPDATE, EVALUATE, RESET, PARAMS, STATS, PROFILE, SPIN, CANCEL, ERROR = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x7F)

BRIDGE = 12  # answered by a bridge itself, never by a board: its counters as JSON (a board says UNSUPPORTED)
DEPLOY, DEPLOY_DATA, DEPLOY_COMMIT = 13, 14, 15  # a model update into the board's inactive slot (fedtiny deploy)
ACK = 0x7E  # a board's "working on it" for a SLOW request (same seq, empty payload)
SLOW = frozenset({TRAIN, PROFILE, SPIN})  # requests that run for seconds on a board; acknowledged first
BOARD_BYTE_TIMEOUT = 0.050  # FT_PROTO_BYTE_TIMEOUT_MS: the board expires a partial frame after this silence
BYTE_TIMEOUT = 0.25  # the host's: larger, as a loaded host may read late
# ERROR status a bridge sends when it cannot reach its board (not a board status)
LINK_DOWN = 0xB0A4D000


def error_text(payload: bytes) -> str:
    """An ERROR payload as text: the board's status name (or the bridge's LINK_DOWN) and any text."""
    from fedtiny import _core

    if len(payload) < 4:
        return "malformed error reply"
    status = struct.unpack_from("<I", payload)[0]
    name = "LINK_DOWN" if status == LINK_DOWN else _core.status_name(status)
    text = payload[4:].decode(errors="replace")
    return f"{name}: {text}" if text else name


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes


def frame(type_: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = struct.pack("<BBH", type_ & 0xFF, seq & 0xFF, len(payload)) + payload
    return SYNC + body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


class Receiver:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.frames = self.dropped = self.skipped = self.expired = 0

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet complete (the inter-byte timeout applies when nonzero)."""
        return len(self.buf)

    def expire(self) -> list[Frame]:
        """The line has been idle: drop the partial frame at the start and rescan the rest
        (whole frames it had swallowed as payload are returned)."""
        out = []
        if self.buf:
            self.expired += 1
        while self.buf:
            del self.buf[0]
            self.dropped += 1
            f = self._scan()
            while f is not None:
                out.append(f)
                f = self._scan()
        return out

    def feed(self, data: bytes) -> list[Frame]:
        out = []
        for b in data:
            self.buf.append(b)
            f = self._scan()
            if f is not None:
                out.append(f)
        return out

    def _scan(self) -> Frame | None:
        buf = self.buf
        while True:
            if len(buf) >= 1 and buf[0] != SYNC[0] or len(buf) >= 2 and buf[1] != SYNC[1]:
                del buf[0]
                self.skipped += 1
                continue
            if len(buf) < HEADER:
                return None
            length = buf[4] | (buf[5] << 8)
            if length > MAX_PAYLOAD:
                del buf[0]
                self.dropped += 1
                continue
            total = HEADER + length + 4
            if len(buf) < total:
                return None
            if zlib.crc32(bytes(buf[2 : HEADER + length])) & 0xFFFFFFFF != struct.unpack_from("<I", buf, HEADER + length)[0]:
                del buf[0]
                self.dropped += 1
                continue
            f = Frame(buf[2], buf[3], bytes(buf[HEADER : HEADER + length]))
            del buf[:total]
            self.frames += 1
            return f
