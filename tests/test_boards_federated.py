"""End to end: a federated experiment with emulated boards (QEMU mps2-an386 running fedtiny's
firmware, each behind its bridge process) beside simulated clients, in Flower's simulation.

* `fedtiny devices.emulate=3 ...` (the README's command) runs with 3 boards and 7 simulated
  devices, and since every board's update equals its simulated twin's byte for byte, the run's
  global accuracy equals that of the same experiment fully simulated, round by round.
* Killing a board's emulator while it trains (round 2): that client is counted as failed in that
  round; the board boots again, its bridge reconnects, and it trains round 3.
* The same experiment as a Flower deployment (`scripts/deploy.sh`: a SuperLink, 10 SuperNodes, 2
  of them with `board-url` in their node config, a fresh ClientApp process per message) equals
  the simulated run round by round too.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from fedtiny.devices import protocol as P
from tests.conftest import run
from tests.cortex_m import ROOT, needs_cortex_m

pytestmark = needs_cortex_m

BASE = ["experiment=digits_quick", "rounds=3", "codec.bits=8"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, cache_dir):
    return run(BASE, tmp_path_factory.mktemp("simulated"), cache_dir)


@pytest.fixture(scope="module")
def with_boards(tmp_path_factory, cache_dir, simulated):
    out = tmp_path_factory.mktemp("boards")
    proc = subprocess.run([sys.executable, "-m", "fedtiny", *BASE, "devices.emulate=3", f"cache_dir={cache_dir}",
                           "progress=false", f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"rows": list(csv.DictReader(open(out / "metrics.csv"))), "log": proc.stdout,
            "summary": json.loads((out / "summary.json").read_text())}


def test_boards_and_simulated_clients_federate(with_boards):
    rows = [r for r in with_boards["rows"] if int(r["round"]) >= 1]
    assert len(rows) == 3
    for r in rows:
        assert int(r["participating"]) == 10 and int(r["on_board"]) == 3 and int(r["failed"]) == 0, r
    assert "emulating 3 mps2-an386 boards" in with_boards["log"]


def test_a_run_with_boards_equals_the_simulated_run(with_boards, simulated):
    """Board updates are their twins' bytes, so the global model (and its accuracy) is the same."""
    for b, s in zip(with_boards["rows"], simulated["rows"]):
        assert b["accuracy"] == s["accuracy"] and b["loss"] == s["loss"], (b, s)
        assert b["bytes_up_payload"] == s["bytes_up_payload"]
    assert with_boards["summary"]["final_accuracy"] == simulated["summary"]["final_accuracy"]


@pytest.fixture(scope="module")
def killed(tmp_path_factory, cache_dir):
    """3 boards; board 2's emulator is killed as it acknowledges its second TRAIN request (round 2),
    i.e. while it trains."""
    from fedtiny.client.context import RunContext
    from fedtiny.config import compose
    from fedtiny.devices.emulate import fleet_for_experiment

    cfg = compose([*BASE, "devices.emulate=3", f"cache_dir={cache_dir}", "progress=false"])
    rx = {"to_board": P.Receiver(), "to_host": P.Receiver()}
    trains: list[int] = []
    holder: dict = {}

    def watch(i: int, way: str, data: bytes) -> None:
        if i != 2 or "killed" in holder:
            return
        for f in rx[way].feed(data):
            if way == "to_board" and f.type == P.TRAIN and f.seq not in trains:
                trains.append(f.seq)
            if way == "to_host" and f.type == P.ACK and len(trains) == 2 and f.seq == trains[1]:
                holder["fleet"].kill_board(2)  # before the ACK is passed on: the board is training
                holder["killed"] = True

    # the boards are the run's as real boards are: behind bridge processes it did not start, their
    # URLs given in devices.urls; the fleet (like a lab's power supply) brings a dead board back
    holder["fleet"] = fleet = fleet_for_experiment(RunContext(cfg), tmp_path_factory.mktemp("fleet"), log=lambda *_: None,
                                                   watch=watch, supervise=True)
    try:
        urls = ",".join(f'"{u}"' for u in fleet.urls)
        result = run([*BASE, f"devices.urls=[{urls}]"], tmp_path_factory.mktemp("killed"), cache_dir)
        result["restarts"] = fleet.restarts()
    finally:
        fleet.stop()
    return result


def test_a_board_killed_mid_round_fails_that_round_and_rejoins_through_its_bridge(killed):
    """Board 2's emulator dies while it trains in round 2: that client alone fails round 2 (its
    bridge answers LINK_DOWN); the board boots again, the bridge reopens the link at the next
    request (a reconnect, counted in the summary through the bridge), the board gets its model
    again and trains round 3."""
    rows, summary = [r for r in killed["rows"] if int(r["round"]) >= 1], killed["summary"]
    assert killed["restarts"] == {"board_restarts": 1, "bridge_restarts": 0}  # the emulator really died
    assert [int(r["round"]) for r in rows] == [1, 2, 3] and summary["rounds"] == 3
    assert int(rows[0]["failed"]) == 0 and int(rows[0]["on_board"]) == 3
    assert int(rows[1]["failed"]) == 1 and int(rows[1]["participating"]) == 9 and int(rows[1]["on_board"]) == 2
    assert int(rows[2]["failed"]) == 0 and int(rows[2]["participating"]) == 10 and int(rows[2]["on_board"]) == 3
    train_failures = [f for f in summary["failures"] if f["stage"] == "train"]
    assert [(f["round"], f["partition"]) for f in train_failures] == [(2, 2)]
    assert "LINK_DOWN" in train_failures[0]["reason"], train_failures
    assert summary["restarts"]["link_reconnects"] == 1 and summary["restarts"]["worker_restarts"] == 0


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("deployed")
    env = {**os.environ, "PYTHON": sys.executable, "FEDTINY_DEPLOY_OUT": str(out)}
    proc = subprocess.run(["bash", "scripts/deploy.sh", "--boards", "2", *BASE, f"cache_dir={cache_dir}",
                           "progress=false"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = out.iterdir()
    return {"rows": list(csv.DictReader(open(result / "metrics.csv"))), "log": proc.stdout}


def test_a_deployment_with_boards_equals_the_simulated_run(deployed, simulated):
    rows = [r for r in deployed["rows"] if int(r["round"]) >= 1]
    assert len(rows) == 3
    for r in rows:
        assert int(r["participating"]) == 10 and int(r["on_board"]) == 2 and int(r["failed"]) == 0, r
    for d, s in zip(deployed["rows"], simulated["rows"]):
        assert d["accuracy"] == s["accuracy"] and d["fed_accuracy"] == s["fed_accuracy"], (d, s)
        assert d["bytes_up_payload"] == s["bytes_up_payload"]
    assert "finished:completed" in deployed["log"] and "deploy: stopped" in deployed["log"]
