"""A fault campaign on one run, as a long lab run meets them: 2 emulated boards beside 8 simulated
devices, 6 rounds, links that damage bytes both ways (``devices.damage``). During the run a
board's emulator is killed (SIGKILL, from outside, after round 1), the worker process running
partition 5 dies in round 2 (``faults.crash_*``), and the server itself is killed (SIGKILL) while
round 4 trains. ``fedtiny resume`` finishes the run: every round appears once, each failure is
counted once with its reason, and the restarts and reconnects are in the summary."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cortex_m import needs_cortex_m
from tests.test_shutdown import descendants

pytestmark = needs_cortex_m

RUN = ["experiment=digits_quick", "rounds=6", "codec.bits=8", "devices.emulate=2", "devices.damage=0.00005",
       "faults.crash_partitions=[5]", "faults.crash_rounds=[2]", "simulation.workers=2", "progress=false"]


def test_fault_campaign_then_resume(tmp_path, cache_dir):
    d = tmp_path / "run"
    env = dict(os.environ, FEDTINY_CACHE=str(cache_dir), FLWR_TELEMETRY_ENABLED="0", FEDTINY_KILL_AT="train:4")
    proc = subprocess.Popen([sys.executable, "-m", "fedtiny", *RUN, f"hydra.run.dir={d}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    events = []
    try:
        deadline = time.monotonic() + 900
        metrics = d / "metrics.csv"
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the campaign's run did not end"
            if not events and metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # round 1 done
                qemu = sorted(p for p in descendants(proc.pid)
                              if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"qemu-system-arm"))
                os.kill(qemu[0], signal.SIGKILL)  # the first board started: partition 0's
                events.append("board 0 killed")
            time.sleep(0.02)
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events and proc.returncode == -signal.SIGKILL, out[-3000:]  # the server died in round 4
    assert not (d / "summary.json").exists()

    env.pop("FEDTINY_KILL_AT")
    r = subprocess.run([sys.executable, "-m", "fedtiny", "resume", str(d)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed after round 3" in r.stdout

    rows = list(csv.DictReader(open(d / "metrics.csv")))
    assert [int(x["round"]) for x in rows] == list(range(7))  # every round once
    summary = json.loads((d / "summary.json").read_text())
    train = sorted((f["round"], f["partition"], f["reason"]) for f in summary["failures"] if f["stage"] == "train")
    assert [(rnd, pid) for rnd, pid, _ in train] == [(2, 0), (2, 5)], train
    assert "LINK_DOWN" in train[0][2]  # the dead board's bridge said so
    assert "the simulation worker died (exit code -9)" in train[1][2]
    assert summary["failed_total"] == 2 == sum(int(x["failed"]) for x in rows)
    assert int(rows[2]["on_board"]) == 1 and all(int(x["on_board"]) == 2 for x in rows[3:])  # the board is back
    assert all(int(x["participating"]) == 10 for x in rows[1:] if x["round"] != "2")
    restarts = summary["restarts"]
    assert restarts["board_restarts"] == 1 and restarts["worker_restarts"] == 1, restarts
    assert restarts["link_reconnects"] >= 1 and restarts["bridge_restarts"] == 0, restarts
    print(f"campaign: {events + ['partition 5 worker crashed in round 2', 'server killed in round 4']}; "
          f"after resume: {summary['rounds']} rounds, failures {[(a, b) for a, b, _ in train]}, restarts {restarts}")
