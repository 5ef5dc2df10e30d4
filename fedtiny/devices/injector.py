"""A damaging TCP proxy for a board's serial link (tests and ``fedtiny emulate --damage``).

The injector sits between a host (a bridge) and a board's TCP serial port (QEMU's UART0) and
damages a fraction `rate` of the bytes in both directions (and, with `every` = n, one byte at a
random place in every n bytes, so a test knows how much damage happened), from a seeded generator: a damaged
byte is flipped, dropped (the frame arrives truncated), or followed by a burst of garbage. A
frame that loses a byte never completes; the receivers resynchronise and the host's retry
gets through. `watch(direction, data)` (optional) sees every chunk before damage and before it
is passed on, so a test can act at a chosen moment (e.g. kill the board as it starts training).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import numpy as np


class Injector:
    def __init__(self, upstream: tuple[str, int], rate: float, seed: int = 0,
                 watch: Callable[[str, bytes], None] | None = None, every: int = 0) -> None:
        if not 0.0 <= rate < 0.5 or every < 0:
            raise ValueError(f"damage rate must be in [0, 0.5) and every >= 0, got {rate} and {every}")
        self.upstream, self.rate, self.watch, self.every = upstream, rate, watch, every
        self.rng = np.random.default_rng(seed)
        self.next_hit = {d: int(self.rng.integers(every)) if every else -1 for d in ("to_board", "to_host")}
        self.lock = threading.Lock()
        self.damaged = {"to_board": 0, "to_host": 0}
        self.passed = {"to_board": 0, "to_host": 0}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = False
        self.conns: list[socket.socket] = []

    def start(self) -> Injector:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self.closed:
            try:
                host, _ = self.listener.accept()
            except OSError:
                return
            try:
                board = socket.create_connection(self.upstream, timeout=5)
                board.settimeout(None)
            except OSError:
                host.close()
                continue
            self.conns += [host, board]
            threading.Thread(target=self._pump, args=(host, board, "to_board"), daemon=True).start()
            threading.Thread(target=self._pump, args=(board, host, "to_host"), daemon=True).start()

    def damage(self, data: bytes, direction: str) -> bytes:
        start = self.passed[direction]
        self.passed[direction] += len(data)
        if self.rate <= 0 and not self.every:
            return data
        with self.lock:
            hits = np.flatnonzero(self.rng.random(len(data)) < self.rate)
            while self.every and self.next_hit[direction] < start + len(data):  # one byte in every window
                hits = np.union1d(hits, [self.next_hit[direction] - start])
                window = self.next_hit[direction] // self.every + 1
                self.next_hit[direction] = window * self.every + int(self.rng.integers(self.every))
            if hits.size == 0:
                return data
            out, last = bytearray(), 0
            for i in hits:
                out += data[last:i]
                kind = self.rng.integers(3)
                if kind == 0:  # flip
                    out.append(data[i] ^ int(self.rng.integers(1, 256)))
                elif kind == 2:  # the byte, then garbage (sometimes a stray sync pair)
                    out.append(data[i])
                    out += self.rng.integers(0, 256, int(self.rng.integers(1, 12))).astype(np.uint8).tobytes()
                    if self.rng.random() < 0.3:
                        out += b"\xa5\x5a"
                # kind 1: dropped
                last = i + 1
            out += data[last:]
            self.damaged[direction] += int(hits.size)
            return bytes(out)

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(4096)
                if not data:
                    break
                if self.watch is not None:
                    self.watch(direction, data)
                dst.sendall(self.damage(data, direction))
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass
