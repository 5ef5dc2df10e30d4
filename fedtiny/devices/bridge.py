"""A bridge: the one long-lived process that owns a board's serial link.

Flower runs every message of a deployed ClientApp in a fresh process, and reopening a serial
port resets many boards (the DTR line of USB CDC ports), so nothing but the bridge opens the
board's port. The bridge serves the same framed protocol on a local TCP port
(``socket://127.0.0.1:<port>``, reachable with the same :class:`~fedtiny.devices.link.BoardClient`):

* each request frame from a client is checked (CRC) and forwarded to the board with the bridge's
  own sequence numbers, timeouts and retries (every command is idempotent, so a retry after a
  lost reply is safe); the board's reply goes back under the client's sequence number;
* a SLOW request (TRAIN, PROFILE) is acknowledged at once, as the board itself does, and a
  client's repeat of its last request (the same frame) gets the same reply without reaching the
  board again, as the board itself does;
* one request at a time reaches the board (a lock), whatever the number of clients;
* when the board's link fails (port gone, emulator killed), the client gets an ERROR frame with
  status LINK_DOWN and the reason, and the bridge reopens the link at the next request; after
  (re)opening it leaves the line idle past the board's inter-byte timeout, so a partial frame a
  dead host left behind is expired before the first request (resynchronisation);
* a CANCEL from any client reaches the board at once, past the lock, and stops a TRAIN in
  progress (whose client then gets ERROR CANCELLED); the bridge answers the CANCEL itself;
* a BRIDGE request is answered by the bridge itself with its counters (JSON: requests, link
  failures, reconnects, cancels, bytes to and from the board on its link; over BLE also
  ``air``, the link's exact air counts, and ``air_link``, its parameters): how a run counts
  its boards' reconnects and what their links carried;
* over a link that can drop without resetting the board (BLE, ``port.reconnectable``), a request
  whose link is lost is repeated, same seq, over the link opened again (up to 3 times): the
  board resends a reply it already sent instead of running the request twice.

Run it as ``fedtiny board serve URL [--port P] [--host H]``; it prints
``bridge <board url> on socket://<host>:<port>`` when it is ready and stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import json
import signal
import socketserver
import struct
import sys
import threading
import time

from serial import SerialException

from fedtiny.devices import protocol as P
from fedtiny.devices.link import BoardClient, BoardError


class Bridge:
    def __init__(self, board_url: str, host: str = "127.0.0.1", port: int = 0, timeout: float = 5.0,
                 retries: int = 3, train_timeout: float = 600.0) -> None:
        self.board_url, self.timeout, self.retries, self.train_timeout = board_url, timeout, retries, train_timeout
        self.board: BoardClient | None = None
        self.lock = threading.Lock()
        self.requests = self.link_failures = self.cancels = self.opens = 0
        self.reconnects_per_request = 3  # over a link that can come back (BLE)
        self.air_closed: dict = {}  # a BLE link's air counts of the connections closed so far
        self.air_link: dict = {}  # and the parameters of the last one
        self.bytes_closed = [0, 0]  # bytes to and from the board on the links closed so far
        bridge = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                rx = P.Receiver()
                last: tuple | None = None  # (type, seq, payload) of the last request and its reply
                while True:
                    # a client silent in the middle of a frame: its stale start is dropped (as a board does)
                    self.request.settimeout(P.BYTE_TIMEOUT if rx.pending else None)
                    try:
                        data = self.request.recv(4096)
                    except TimeoutError:
                        data = None
                    except OSError:
                        return
                    if data == b"":
                        return
                    for f in (rx.feed(data) if data is not None else rx.expire()):
                        if f.type == P.CANCEL:  # not behind the lock: it must reach a busy board
                            self.request.sendall(bridge.cancel(f))
                            continue
                        if f.type == P.BRIDGE:
                            self.request.sendall(P.frame(P.BRIDGE | P.REPLY, f.seq, json.dumps(bridge.stats()).encode()))
                            continue
                        if last is not None and last[0] == (f.type, f.seq, f.payload):
                            self.request.sendall(last[1])  # a client's repeat (it polls or lost the reply)
                            continue
                        if f.type in P.SLOW:  # the client may wait long once its request is here
                            self.request.sendall(P.frame(P.ACK, f.seq))
                        reply = bridge.forward(f)
                        last = ((f.type, f.seq, f.payload), reply)
                        self.request.sendall(reply)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((host, port), Handler)
        self.host, self.port = self.server.server_address[:2]
        self.url = f"socket://{self.host}:{self.port}"

    def forward(self, f: P.Frame) -> bytes:
        """The reply frame (under the client's seq) to one request frame."""
        with self.lock:
            self.requests += 1
            seq = None  # the board-side seq of a request to repeat over a reopened link
            again = False  # the link was lost in a way it comes back from: opening it may take tries
            for attempt in range(self.reconnects_per_request + 1):
                try:
                    self._open()
                    reply = self.board.exchange(f.type, f.payload, seq=seq)
                    return P.frame(reply.type, f.seq, reply.payload)
                except Exception as err:  # noqa: BLE001 - any link failure becomes the client's error reply
                    self.link_failures += 1
                    board, lost_seq = self.board, self.board.seq if self.board is not None else None
                    self._drop()
                    reason = str(err) if isinstance(err, BoardError) else f"{type(err).__name__}: {err}"
                    print(f"fedtiny bridge {self.board_url}: {reason}", file=sys.stderr, flush=True)
                    # a link that comes back without resetting the board (BLE): open it again and
                    # repeat the same request (same seq), which the board answers without running it twice
                    if board is not None and getattr(board.port, "reconnectable", False) \
                            and isinstance(err, SerialException):
                        again, seq = True, lost_seq
                    if again and isinstance(err, SerialException) and attempt < self.reconnects_per_request:
                        time.sleep(0.2 if board is not None else 1.0)
                        continue
                    return P.frame(P.ERROR, f.seq, struct.pack("<I", P.LINK_DOWN) + reason.encode()[:512])
            raise AssertionError("unreachable")

    def _open(self) -> None:
        if self.board is not None:
            return
        self.board = BoardClient(self.board_url, timeout=self.timeout, retries=self.retries,
                                 train_timeout=self.train_timeout)
        self.board.resync()
        self.opens += 1
        if self.opens > 1:
            print(f"fedtiny bridge {self.board_url}: link reopened (reconnect {self.opens - 1})",
                  file=sys.stderr, flush=True)

    def _drop(self) -> None:
        """Close the board's link, keeping what it counted."""
        if self.board is None:
            return
        self._keep_air(self.board)
        try:
            self.board.close()
        except Exception:  # noqa: BLE001 - the port may already be gone
            pass
        self.board = None

    def _keep_air(self, board: BoardClient) -> None:
        self.bytes_closed[0] += board.bytes_out
        self.bytes_closed[1] += board.bytes_in
        air = getattr(board.port, "air", None)
        if air is not None:
            for k, v in air().items():
                self.air_closed[k] = self.air_closed.get(k, 0) + v
            self.air_link = dict(vars(board.port.link_params()))

    def stats(self) -> dict:
        board = self.board
        out = {"requests": self.requests, "link_failures": self.link_failures,
               "reconnects": max(0, self.opens - 1), "cancels": self.cancels,
               "bytes_to_board": self.bytes_closed[0] + (board.bytes_out if board is not None else 0),
               "bytes_from_board": self.bytes_closed[1] + (board.bytes_in if board is not None else 0)}
        air = getattr(board.port, "air", None) if board is not None else None
        if air is not None or self.air_closed:  # a BLE link: its counts over every connection so far
            total = dict(self.air_closed)
            for k, v in (air() if air is not None else {}).items():
                total[k] = total.get(k, 0) + v
            out["air"] = total
            out["air_link"] = dict(vars(board.port.link_params())) if air is not None else self.air_link
        return out

    def cancel(self, f: P.Frame) -> bytes:
        """Pass a CANCEL to the board now (a TRAIN may hold the lock) and answer it."""
        board = self.board
        self.cancels += 1
        if board is not None:
            try:
                board.send_cancel()
            except Exception:  # noqa: BLE001 - a dead link: nothing runs there to cancel
                pass
        return P.frame(P.CANCEL | P.REPLY, f.seq, struct.pack("<I", 0))

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def start(self) -> Bridge:
        """Serve from a daemon thread (tests, and `fedtiny emulate` in one process)."""
        threading.Thread(target=self.serve_forever, daemon=True, name=f"bridge-{self.port}").start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            if self.board is not None:
                self.board.close()
                self.board = None


def serve_main(argv: list[str]) -> int:
    """``fedtiny board serve URL [--port P] [--host H] [--timeout S]``"""
    import argparse

    ap = argparse.ArgumentParser(prog="fedtiny board serve", description="own a board's serial link and serve it "
                                 "on a local TCP port (the protocol of fedtiny.devices.protocol)")
    ap.add_argument("url", help="the board: /dev/ttyACM0, socket://127.0.0.1:4000 (QEMU), ...")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="TCP port to serve on (0: any free port)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds before a request to the board is retried")
    ap.add_argument("--retries", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        bridge = Bridge(args.url, args.host, args.port, args.timeout, args.retries)
    except OSError as err:
        print(f"fedtiny board serve: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1

    def stop(*_):
        threading.Thread(target=bridge.server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"bridge {args.url} on {bridge.url}", flush=True)
    bridge.serve_forever()
    bridge.server.server_close()
    if bridge.board is not None:
        bridge.board.close()
    print(f"bridge {args.url}: stopped after {bridge.requests} requests, {bridge.link_failures} link failures, "
          f"{max(0, bridge.opens - 1)} reconnects", flush=True)
    return 0
