"""Stopping a run from outside, as a user does: SIGTERM (a scheduler, `kill`) or Ctrl-C (SIGINT to
the process group) ends `fedtiny` with one line and exit status 143 or 130, after the rounds it
finished were written, and every process the run started (the in-process engine's workers) is
gone: the process tree is read from /proc before the signal and checked after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out.update(kids)
            todo += kids
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig,code,how", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_stops_the_run_and_every_process_it_started(tmp_path, cache_dir, sig, code, how):
    run_dir = tmp_path / "run"
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "fedtiny", "experiment=digits_quick", "rounds=5000",
                             "simulation.workers=2", f"cache_dir={cache_dir}", "progress=false",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.csv").exists() or len((run_dir / "metrics.csv").read_text().splitlines()) < 4:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run wrote no round"
            time.sleep(0.1)
        started = descendants(proc.pid)
        assert len(started) >= 2  # the engine's workers
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C in a terminal reaches the whole process group
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == f"fedtiny: stopped by {how}; fedtiny resume {run_dir} continues it", err
    deadline = time.monotonic() + 10
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in started if alive(p)], "processes of the run outlived it"
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 4 and all(r.count(",") == rows[0].count(",") for r in rows)  # whole rows only
    from fedtiny.server.checkpoint import latest

    kept = latest(run_dir)  # the checkpoint of the last complete round (or of the one before, if
    assert kept is not None and kept.round in (len(rows) - 2, len(rows) - 3)  # the signal cut its write)
