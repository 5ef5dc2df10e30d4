"""A watchdog for processes a run starts that would outlive it if the run were killed outright.

SIGTERM and Ctrl-C stop a run in order (its engine's workers, Ray through ``ray.shutdown()``,
emulated boards). SIGKILL leaves no chance to: the in-process engine's workers still leave (they
live by their pipe) and QEMU boards and bridges get the parent-death signal, but a local Ray
instance (GCS, raylet, dashboard and runtime-env agents, actors) is reparented and stayed for
minutes. :class:`Reaper` forks a small watchdog before such processes start; the run tells it
every second which processes descend from it (pid and start time), and when the run's process
is gone without saying it stopped them itself, the watchdog kills those that still run (the
start time guards against a reused pid).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        kids = children(todo.pop())
        out.update(kids)
        todo += kids
    return out


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _watch(conn, inherited) -> None:
    """The watchdog: collect (pid, start time) pairs until the run says it is done (return) or
    its end of the pipe closes (the run died): then kill what is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the run handles it
    for other in inherited:
        other.close()
    watched: dict[int, int] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message == "done":
            return
        watched.update(message)
    for pid, started in watched.items():
        if start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class Reaper:
    """Use as a context manager around the part of a run that starts the processes to watch;
    leaving it normally (after they were stopped) ends the watchdog without killing anything."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._sent: dict[int, int] = {}

    def __enter__(self) -> Reaper:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_watch, args=(child, [self._conn]), daemon=True, name="fedtiny-reaper")
        self._process.start()
        child.close()
        self._thread = threading.Thread(target=self._report, daemon=True, name="fedtiny-reaper-report")
        self._thread.start()
        return self

    def _report(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def report(self) -> None:
        """Tell the watchdog about the processes that descend from this one now."""
        new = {}
        for pid in descendants(os.getpid()) - {self._process.pid}:
            started = start_time(pid)
            if started is not None and self._sent.get(pid) != started:
                new[pid] = started
        if new:
            try:
                self._conn.send(new)
            except OSError:
                return
            self._sent.update(new)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._conn.send("done")
        except OSError:
            pass
        self._conn.close()
        self._process.join(timeout=5)
