"""The in-process simulation engine: a Flower ``Grid`` that hands each message straight to the
ClientApp, in this process or in a pool of forked worker processes. No Ray, no polling.

Why: a simulated device's round is milliseconds of C; Ray's start-up (10–20 s), a run context
rebuilt in every worker, and Flower's 0.1 s poll interval cost more than the federation. Here
the run context is built once, before the workers fork, so they inherit it (copy on write),
and a reply is read the moment it is written.

* **Same apps.** The ServerApp runs unchanged on this Grid; the ClientApp is the one every
  engine runs (:func:`fedtiny.engine.apps.simulation_client_app`).
* **Pinned nodes.** Node ``k`` lives in worker ``k mod W`` for the whole run, so its node state
  (error-feedback residual, battery) stays where the ClientApp wrote it, as on a SuperNode.
* **Same results.** A device's round depends only on its message, its data and its node state;
  the strategy sorts replies by partition id. So any worker count gives the same metrics
  (tested), and so does Ray.
* **Failures.** A ClientApp that raises gives an error reply (Flower's
  ``CLIENT_APP_RAISED_EXCEPTION``); the strategy counts it. A worker that dies fails the message
  it was running and is started again (its nodes start with empty node state) for the rest of
  its queue. A reply later than the round's timeout is dropped.

Each worker takes one message at a time (the next is sent when it answers), so neither side can
block the other on a full pipe. Messages cross the pipe serialized by Flower's own protobuf code.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as MessageProto  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid
from flwr.supercore.run import Run

FIRST_NODE_ID = 1_000  # node ids are 1000, 1001, ... (Flower's SuperLink is node 1)


def _encode(msg: Message) -> bytes:
    return message_to_proto(msg).SerializeToString()


def _decode(data: bytes) -> Message:
    return message_from_proto(MessageProto.FromString(data))


def handle(app: ClientApp, msg: Message, context: Context) -> Message:
    """The ClientApp's reply to `msg`, or an error reply naming the exception it raised."""
    try:
        return app(msg, context)
    except Exception as err:  # noqa: BLE001  (any failure of a device is its reply)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(err)}:<'{err}'>"),
                       reply_to=msg)


def _serve(conn: Connection, app: ClientApp, contexts: dict[int, Context], inherited: list[Connection]) -> None:
    """A worker's loop: one message in, its reply out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the parent's to handle: it stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the workers by closing their pipes (and so does its death)
    for other in inherited:  # the parent's ends of the other workers' pipes: only the parent may hold them,
        other.close()  # or those workers would never see their pipe close
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        msg = _decode(data)
        reply = handle(app, msg, contexts[msg.metadata.dst_node_id])
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        try:
            conn.send_bytes(_encode(reply))
        except OSError:  # the parent is gone (stopped or killed): so is the run
            return


class _Worker:
    def __init__(self, index: int, nodes: list[int], grid: InProcessGrid):
        self.index, self.nodes, self.grid = index, nodes, grid
        self.queue: deque[Message] = deque()
        self.busy: Message | None = None
        self.process: mp.Process | None = None
        self.conn: Connection | None = None
        self.restarts = 0

    def start(self) -> None:
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        contexts = {n: self.grid.node_context(n) for n in self.nodes}
        inherited = [w.conn for w in self.grid.workers if w.conn is not None] + [parent]
        self.process = ctx.Process(target=_serve, args=(child, self.grid.app, contexts, inherited), daemon=True,
                                   name=f"fedtiny-worker-{self.index}")
        self.process.start()
        child.close()
        self.conn = parent

    def feed(self) -> None:
        """Send the next queued message if the worker is idle."""
        while self.busy is None and self.queue:
            msg = self.queue.popleft()
            try:
                self.conn.send_bytes(_encode(msg))
                self.busy = msg
            except (BrokenPipeError, OSError):
                self.queue.appendleft(msg)
                self.died()

    def died(self) -> None:
        """The worker is gone: fail the message it was running, start it again and send it the
        rest of its queue (its nodes start again with empty node state)."""
        code = None
        if self.process is not None:
            self.process.join(timeout=2.0)
            code = self.process.exitcode
        if self.busy is not None:
            self.grid.deliver(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                            reason=f"the simulation worker died (exit code {code})"),
                                      reply_to=self.busy))
            self.busy = None
        self.stop()
        self.restarts += 1
        self.start()
        self.feed()

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.process is not None:
            self.process.join(timeout=2.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=2.0)
            self.process = None


class InProcessGrid(Grid):
    """A Grid over `num_nodes` simulated nodes whose ClientApp is `app`; `workers` forked worker
    processes run it (0: this process runs it, one message at a time). Node ``k`` gets
    ``node_config(k)``; use it as a context manager (or call :meth:`stop`)."""

    def __init__(self, app: ClientApp, num_nodes: int, workers: int,
                 node_config: Callable[[int], dict], run_config: dict | None = None, run_id: int = 1):
        self.app, self.workers_wanted = app, int(workers)
        self.node_ids = [FIRST_NODE_ID + k for k in range(num_nodes)]
        self._known = set(self.node_ids)
        self._node_config, self._run_config = node_config, dict(run_config or {})
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self._late: set[str] = set()  # sent, but past their round's timeout: replies are dropped
        self._contexts: dict[int, Context] = {}
        self.workers: list[_Worker] = []
        self.messages = 0

    def node_context(self, node_id: int) -> Context:
        return Context(run_id=self._run.run_id, node_id=node_id,
                       node_config=self._node_config(node_id - FIRST_NODE_ID), state=RecordDict(),
                       run_config=self._run_config)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> InProcessGrid:
        """Fork the workers (after the run context exists, so they inherit it)."""
        n = min(self.workers_wanted, len(self.node_ids))
        self.workers = [_Worker(i, self.node_ids[i::n], self) for i in range(n)] if n > 0 else []
        for w in self.workers:
            w.start()
        if not self.workers:
            self._contexts = {nid: self.node_context(nid) for nid in self.node_ids}
        return self

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []

    def __enter__(self) -> InProcessGrid:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    # -- Grid ------------------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def deliver(self, reply: Message) -> None:
        if reply.metadata.reply_to_message_id not in self._late:
            self._replies[reply.metadata.reply_to_message_id] = reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            ids.append(msg.metadata.message_id)
            self.messages += 1
            node = msg.metadata.dst_node_id
            if node not in self._known:
                self.deliver(Message(Error(code=ErrorCode.UNKNOWN, reason=f"no node {node}"), reply_to=msg))
            elif not self.workers:
                reply = handle(self.app, msg, self._contexts[node])
                reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
                self.deliver(reply)
            else:
                worker = self.workers[(node - FIRST_NODE_ID) % len(self.workers)]
                worker.queue.append(msg)
                worker.feed()
        return ids

    def _collect(self, timeout: float | None) -> None:
        """Read the replies that are ready (waiting up to `timeout` s for one), feeding each
        worker its next message."""
        busy = {w.conn: w for w in self.workers if w.busy is not None}
        if not busy:
            return
        for conn in wait(list(busy), timeout):
            w = busy[conn]
            try:
                reply = _decode(conn.recv_bytes())
            except (EOFError, OSError):
                w.died()
                continue
            answered = reply.metadata.reply_to_message_id
            if w.busy is not None and answered == w.busy.metadata.message_id:
                w.busy = None
                if answered in self._late:
                    self._late.discard(answered)
                else:
                    self.deliver(reply)
            w.feed()

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._collect(0)
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[Message] = []
        while True:
            out += [self._replies.pop(i) for i in list(pending) if i in self._replies]
            pending -= {m.metadata.reply_to_message_id for m in out}
            if not pending:
                return out
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._abandon(pending)
                return out
            self._collect(left)

    def _abandon(self, ids: set[str]) -> None:
        """Forget messages past their round's timeout: queued ones are not sent; a busy worker's
        late reply will be dropped."""
        for w in self.workers:
            w.queue = deque(m for m in w.queue if m.metadata.message_id not in ids)
            if w.busy is not None and w.busy.metadata.message_id in ids:
                self._late.add(w.busy.metadata.message_id)


def default_workers() -> int:
    """One worker per CPU this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
