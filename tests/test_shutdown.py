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

from tests.cortex_m import needs_cortex_m


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


@pytest.mark.parametrize("sig,code,how,engine", [(signal.SIGTERM, 143, "SIGTERM", "simulation.workers=2"),
                                                 (signal.SIGINT, 130, "Ctrl-C", "simulation.workers=2"),
                                                 (signal.SIGTERM, 143, "SIGTERM", "simulation.backend=ray")],
                         ids=["SIGTERM", "Ctrl-C", "SIGTERM-ray"])
def test_a_signal_stops_the_run_and_every_process_it_started(tmp_path, cache_dir, sig, code, how, engine):
    """Also with Ray: its driver would abort on SIGTERM and leave its agents behind."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen([sys.executable, "-m", "fedtiny", "experiment=digits_quick", "rounds=5000",
                             engine, f"cache_dir={cache_dir}", "progress=false",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.csv").exists() or len((run_dir / "metrics.csv").read_text().splitlines()) < 4:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run wrote no round"
            time.sleep(0.1)
        started = descendants(proc.pid)
        assert len(started) >= 2  # the engine's workers (Ray's: GCS, raylet, agents, actors)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C in a terminal reaches the whole process group
        else:
            proc.send_signal(sig)
        _, err = stopped(proc, 60)
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


def stopped(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The output of a signalled run once it exits; if it does not within `timeout` s, every
    thread's stack (faulthandler, on SIGABRT) and the processes left, in the failure."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        left = {p: _cmdline(p).replace(b"\0", b" ")[:120] for p in descendants(proc.pid) if alive(p)}
        main_alive = alive(proc.pid)
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = "(no traceback: the run did not answer SIGABRT)"
        pytest.fail(f"no exit {timeout:g} s after the signal (main process alive: {main_alive}; left: {left})\n"
                    f"{err[-6000:]}")


def _wait_for(predicate, proc, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.1)


def _gone(started: set[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in started if alive(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@needs_cortex_m
def test_emulate_brings_a_killed_board_back_and_stops_everything_on_sigterm(tmp_path, cache_dir):
    """`fedtiny emulate` supervises its boards: a QEMU killed outright boots again on the same
    port (its bridge URL unchanged), and SIGTERM stops every emulator and bridge it started."""
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FEDTINY_CACHE=str(cache_dir))
    log = tmp_path / "emulate.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fedtiny", "emulate", "--boards", "2", "experiment=digits_quick"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: "ready:" in log.read_text(), proc, "ready line", 600)
        started = descendants(proc.pid)
        boards = [p for p in started if _cmdline(p).startswith(b"qemu-system-arm")]
        assert len(boards) == 2 and len(started) == 4  # two emulators, two bridges
        os.kill(boards[0], signal.SIGKILL)
        _wait_for(lambda: len([p for p in descendants(proc.pid) if _cmdline(p).startswith(b"qemu-system-arm")
                               and p not in boards]) == 1, proc, "restarted board", 60)
        from fedtiny.devices.link import BoardClient, BoardError

        url = next(ln.split(": ")[1].split(" ")[0] for ln in log.read_text().splitlines() if ln.startswith("partition 0"))
        client = BoardClient(url, timeout=5.0, retries=3)  # the same bridge URL reaches the new board
        deadline = time.monotonic() + 30
        while True:  # as a host's next round would: LINK_DOWN until the new emulator listens
            try:
                info = client.hello()
                break
            except BoardError as err:
                assert "LINK_DOWN" in str(err) and time.monotonic() < deadline, err
                time.sleep(0.5)
        assert info["model_crc32"] == 0  # booted again: no model until the host loads one
        client.close()
        started |= descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert log.read_text().strip().splitlines()[-1] == "stopped (1 board and 0 bridge restarts)"
    assert not _gone(started), "processes of `fedtiny emulate` outlived it"


@needs_cortex_m
def test_deploy_script_stops_every_process_on_sigterm(tmp_path, cache_dir):
    """scripts/deploy.sh (SuperLink, SuperNodes, emulated boards, `flwr run`) stopped by SIGTERM
    in the middle of its run: nothing it started is left."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, FEDTINY_DEPLOY_OUT=str(out), FEDTINY_CACHE=str(cache_dir))
    log = tmp_path / "deploy.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(["bash", "scripts/deploy.sh", "--boards", "1", "experiment=digits_quick", "rounds=500",
                                 "codec.bits=8", "progress=false"], cwd=root, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for(lambda: any(len(p.read_text().splitlines()) >= 3 for p in out.glob("*/metrics.csv")), proc,
                  "round of the deployment", 600)
        started = descendants(proc.pid)
        assert any(b"flower-superlink" in _cmdline(p) for p in started)
        assert any(_cmdline(p).startswith(b"qemu-system-arm") for p in started)
        started |= {p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                    if b"--parent-pid" in _cmdline(p) and any(str(q).encode() in _cmdline(p) for q in started)}
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, log.read_text()[-2000:]
    assert log.read_text().strip().splitlines()[-1].startswith("deploy: stopped (logs in ")
    assert not _gone(started, 60), "processes of scripts/deploy.sh outlived it"


def test_a_ray_run_killed_outright_leaves_no_process(tmp_path, cache_dir):
    """SIGKILL leaves a run no chance to stop Ray; its watchdog (fedtiny.engine.reaper) does.
    Without it Ray's GCS, raylet and agents stayed for minutes."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "fedtiny", "experiment=digits_quick", "rounds=5000",
                             "simulation.backend=ray", f"cache_dir={cache_dir}", "progress=false",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        metrics = run_dir / "metrics.csv"
        _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 4, proc, "round")
        time.sleep(1.5)  # the watchdog hears about new processes every second
        started = descendants(proc.pid)
        ray = [p for p in started if b"ray" in _cmdline(p)]
        assert len(ray) >= 4, [_cmdline(p)[:80] for p in started]  # GCS, raylet, agents, actors
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    left = _gone(started, 20)
    assert not left, f"outlived the run: {[_cmdline(p)[:80] for p in left]}"
    assert (run_dir / "checkpoints").is_dir()  # and the run can be resumed
