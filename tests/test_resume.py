"""Checkpoints and ``fedtiny resume``: a run killed with SIGKILL at any point (while devices
train, while the server aggregates, in the middle of writing a checkpoint, or at a random
moment) and resumed ends with the same ``metrics.csv``, ``summary.json``, ``traffic.csv`` and
``contributors.csv`` as the same run never interrupted (wall-time fields aside). The oracle is
that uninterrupted run, started separately. Runs keep node state (error feedback, a battery),
a server optimiser (FedAdam), sampling and central DP, so each part of a checkpoint matters;
one test shows that a resume without the node state gives other numbers."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedtiny.server import checkpoint as ckpt

BASE = ["experiment=digits_quick", "rounds=6", "clients_per_round=5", "simulation.workers=2", "progress=false"]
STATEFUL = ["strategy=fedadam", "codec=q1_ef", "energy.battery_mj=200"]
CASES = {  # seed: (extra overrides, where the run is killed)
    0: (STATEFUL, "train:3"),
    1: (STATEFUL, "aggregate:2"),
    2: (["privacy=central", "codec=q8"], "checkpoint:4"),
}
WALL = {"wall_s", "client_rounds_per_s", "total_wall_s"}


def fedtiny(args: list[str], cwd: Path, cache_dir: Path, kill_at: str | None = None, wait: bool = True):
    env = dict(os.environ, FEDTINY_CACHE=str(cache_dir), FLWR_TELEMETRY_ENABLED="0")
    env.pop(ckpt.KILL_ENV, None)
    if kill_at:
        env[ckpt.KILL_ENV] = kill_at
    proc = subprocess.Popen([sys.executable, "-m", "fedtiny", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def outcome(d: Path) -> dict:
    rows = [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(open(d / "metrics.csv"))]
    summary = {k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k not in WALL}
    return {"rows": rows, "summary": summary, "traffic": (d / "traffic.csv").read_bytes(),
            "contributors": (d / "contributors.csv").read_bytes()}


def assert_same(resumed: Path, reference: Path) -> None:
    a, b = outcome(resumed), outcome(reference)
    assert [r["round"] for r in a["rows"]] == [str(k) for k in range(7)]  # every round once
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra == rb, (ra, rb)
    assert a["summary"] == b["summary"]
    assert a["traffic"] == b["traffic"] and a["contributors"] == b["contributors"]


@pytest.fixture(scope="module")
def references(tmp_path_factory, cache_dir) -> dict[int, Path]:
    """Each case's uninterrupted run."""
    out = {}
    for seed, (extra, _) in CASES.items():
        d = tmp_path_factory.mktemp(f"reference{seed}")
        r = fedtiny([*BASE, *extra, f"seed={seed}", f"hydra.run.dir={d}"], d, cache_dir)
        assert r.returncode == 0, r.stderr[-3000:]
        out[seed] = d
    return out


def kill_at_random(args: list[str], cwd: Path, cache_dir: Path, rng: random.Random, span: float) -> int:
    """Start `args` and SIGKILL it after a random time in (0.5 s, span); its exit status."""
    proc = fedtiny(args, cwd, cache_dir, wait=False)
    delay = rng.uniform(0.5, span)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    proc.communicate()
    return proc.returncode


@pytest.mark.parametrize("seed", sorted(CASES))
def test_a_run_killed_anywhere_and_resumed_equals_the_uninterrupted_run(seed, references, tmp_path, cache_dir):
    extra, point = CASES[seed]
    d = tmp_path / "run"
    killed = fedtiny([*BASE, *extra, f"seed={seed}", f"hydra.run.dir={d}"], tmp_path, cache_dir, kill_at=point)
    assert killed.returncode == -signal.SIGKILL and not (d / "summary.json").exists()
    kinds = sorted(p.name for p in (d / "checkpoints").iterdir())
    if point.startswith("checkpoint"):  # the write was cut: its temporary file is there, not the checkpoint
        assert f".round-{int(point.split(':')[1]):04d}.ckpt.tmp" in kinds
        if seed == 2:  # and the newest complete one is damaged too: the one before it is used
            newest = d / "checkpoints" / "round-0003.ckpt"
            data = bytearray(newest.read_bytes())
            data[len(data) // 2] ^= 0xFF
            newest.write_bytes(bytes(data))
    # a second kill, at a random moment of the resumed run (seeded), then the resume that finishes
    rng = random.Random(seed)
    kill_at_random(["resume", str(d)], tmp_path, cache_dir, rng, span=6.0)
    r = fedtiny(["resume", str(d)], tmp_path, cache_dir)
    if (d / "summary.json").exists() and r.returncode == 1 and "finished already" in r.stderr:
        pass  # the random kill came after the run's end
    else:
        assert r.returncode == 0, r.stderr[-3000:]
    assert_same(d, references[seed])
    if seed == 2:  # said once by whichever resume read the damaged file
        log = (d / "run.log").read_text()
        assert "checkpoint round-0003.ckpt: checksum mismatch (the file is damaged); trying the previous one" in log
        assert "resumed after round 2 from" in log


def test_a_resume_without_node_state_would_differ(references, tmp_path, cache_dir, monkeypatch):
    """The oracle can fail: the same resume with the devices' state dropped gives other rows."""
    d = tmp_path / "run"
    fedtiny([*BASE, *STATEFUL, "seed=0", f"hydra.run.dir={d}"], tmp_path, cache_dir, kill_at="train:3")
    c = ckpt.latest(d)
    kept = {k: v for k, v in c.arrays.items() if not k.startswith("node/")}
    assert len(kept) < len(c.arrays)  # the checkpoint holds node state
    ckpt.write(d, {**c.meta, "nodes": []}, kept)
    assert fedtiny(["resume", str(d)], tmp_path, cache_dir).returncode == 0
    with pytest.raises(AssertionError):
        assert_same(d, references[0])


def test_resuming_with_a_changed_config_is_refused_naming_the_keys(tmp_path, cache_dir):
    d = tmp_path / "run"
    fedtiny([*BASE, "seed=0", f"hydra.run.dir={d}"], tmp_path, cache_dir, kill_at="train:2")
    r = fedtiny(["resume", str(d), "rounds=9", "client.lr=0.5"], tmp_path, cache_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("fedtiny: config error:") and "refused" in line
    assert "rounds (6 -> 9)" in line and "client.lr (" in line
    r = fedtiny(["resume", str(d), "progress=false", "simulation.workers=1"], tmp_path, cache_dir)  # no result changes
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed after round 1" in r.stdout
    r = fedtiny(["resume", str(d)], tmp_path, cache_dir)
    assert r.returncode == 1 and "finished already" in r.stderr.strip().splitlines()[-1]
    r = fedtiny(["resume", str(tmp_path / "nothing")], tmp_path, cache_dir)
    assert r.returncode == 2 and "neither a run directory" in r.stderr


def test_a_killed_sweep_resumes_every_unfinished_run(references, tmp_path, cache_dir):
    """Seeds 0 and 1 as a sweep, killed while its second run trains: the resume leaves the first
    run as it was, continues the second, and both equal their uninterrupted runs."""
    sweep = tmp_path / "sweep"
    args = ["-m", *BASE, *STATEFUL, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = fedtiny(args, tmp_path, cache_dir, wait=False)
    try:
        deadline = time.monotonic() + 300
        metrics = sweep / "1" / "metrics.csv"
        while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (sweep / "0" / "summary.json").exists() and not (sweep / "1" / "summary.json").exists()
    first = (sweep / "0" / "summary.json").stat().st_mtime_ns
    r = fedtiny(["resume", str(sweep)], tmp_path, cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{sweep / '0'} finished already (ok)" in r.stderr
    assert (sweep / "0" / "summary.json").stat().st_mtime_ns == first
    assert_same(sweep / "0", references[0])
    assert_same(sweep / "1", references[1])


# -- the checkpoint file itself -------------------------------------------------------------------


def test_checkpoint_round_trip_and_damage(tmp_path):
    arrays = {"global/layer0.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
              "node/3": np.frombuffer(b"state", np.uint8), "server/m_t/layer0.bias": np.ones(3, np.float64)}
    for rnd in range(4):
        path, size, seconds = ckpt.write(tmp_path, {"round": rnd, "x": [1.5, "a"]}, arrays)
        assert path.stat().st_size == size and seconds >= 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["round-0002.ckpt", "round-0003.ckpt"]
    c = ckpt.latest(tmp_path)
    assert c.round == 3 and c.meta["x"] == [1.5, "a"]
    for k, v in arrays.items():
        assert c.arrays[k].dtype == v.dtype and np.array_equal(c.arrays[k], v)
    assert list(c.group("server")) == ["m_t/layer0.bias"] and list(c.group("node")) == ["3"]
    newest = tmp_path / "checkpoints" / "round-0003.ckpt"
    data = newest.read_bytes()
    said: list[str] = []
    newest.write_bytes(data[:-10])  # truncated
    assert ckpt.latest(tmp_path, said.append).round == 2 and "truncated" in said[-1]
    newest.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # one bit flipped
    assert ckpt.latest(tmp_path, said.append).round == 2 and "checksum mismatch" in said[-1]
    newest.write_bytes(b"PK" + data[2:])
    assert ckpt.latest(tmp_path, said.append).round == 2 and "not a fedtiny checkpoint" in said[-1]
    (tmp_path / "checkpoints" / "round-0002.ckpt").write_bytes(b"")
    assert ckpt.latest(tmp_path, said.append) is None


def test_config_diff_names_changed_added_and_removed_keys():
    a = {"rounds": 6, "client": {"lr": 0.1, "epochs": 1}, "progress": True, "simulation": {"workers": 2}}
    b = {"rounds": 7, "client": {"lr": 0.1}, "progress": False, "simulation": {"workers": 0}, "new": 1}
    assert ckpt.config_diff(a, b) == ["client.epochs (1 -> \"<missing>\")", "new (\"<missing>\" -> 1)",
                                      "rounds (6 -> 7)"]
