"""Model updates to boards (issue 21, part 5): ``fedtiny deploy`` writes a run's model into the
inactive one of two slots of emulated Cortex-M4 boards, chunked and CRC-checked; the board
activates it only after it loaded and evaluated it, and rolls back otherwise; HELLO reports the
active model's version and CRC.

Oracles: the host's own evaluation of the same model file on the same local data (the board's
partition, as the fleet placed it); zlib's CRC-32 of the file."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.cortex_m import needs_cortex_m

pytestmark = needs_cortex_m

FEDTINY = [sys.executable, "-m", "fedtiny"]


def fedtiny(args, cwd, cache_dir, timeout=600):
    env = dict(os.environ, FEDTINY_CACHE=str(cache_dir), FLWR_TELEMETRY_ENABLED="0")
    return subprocess.run([*FEDTINY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def boards(tmp_path_factory, cache_dir):
    """A finished digits run (its directory) and two emulated boards holding partitions 0 and 1."""
    from fedtiny.client.context import RunContext
    from fedtiny.config import compose
    from fedtiny.devices.emulate import fleet_for_experiment

    cwd = tmp_path_factory.mktemp("run")
    r = fedtiny(["experiment=digits_quick", "hydra.run.dir=run", "progress=false"], cwd, cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = compose(["experiment=digits_quick", "devices.emulate=2", f"cache_dir={cache_dir}", "progress=false"])
    run = RunContext(cfg)
    fleet = fleet_for_experiment(run, tmp_path_factory.mktemp("fleet"), log=lambda *_: None)
    try:
        yield {"run_dir": cwd / "run", "cwd": cwd, "run": run, "urls": fleet.urls}
    finally:
        fleet.stop()


def host_eval(model_bytes: bytes, run, pid: int) -> tuple[int, int, float]:
    """(correct, count, loss) of a model file on partition `pid`'s local data, on the host."""
    from fedtiny.trainer import Model, TrainConfig, Trainer

    d = run.device(pid)
    res = Trainer(Model(model_bytes), TrainConfig()).evaluate(d.x_train, d.y_train)
    return int(round(res.accuracy * len(d.y_train))), len(d.y_train), res.loss


def client(url):
    from fedtiny.devices.link import BoardClient

    return BoardClient(url, timeout=10.0, retries=2)


@pytest.fixture(scope="module")
def models(boards):
    """The run's final model (model.ftny of fedtiny export) and the pretrained one (another head)."""
    e = fedtiny(["export", "run", "--format", "ftny"], boards["cwd"], boards["run"].cfg.cache_dir)
    assert e.returncode == 0, e.stderr
    final = (boards["run_dir"] / "export" / "model.ftny").read_bytes()
    return {"final": final, "pretrained": boards["run"].model.to_bytes()}


def test_fedtiny_deploy_activates_the_model_and_the_boards_evaluation_equals_the_hosts(boards, models, cache_dir):
    r = fedtiny(["deploy", "run", "--to", *boards["urls"], "--version", "7"], boards["cwd"], cache_dir)
    assert r.returncode == 0, r.stderr
    crc = zlib.crc32(models["final"])
    for pid, url in enumerate(boards["urls"]):
        c = client(url)
        try:
            h = c.hello()
            assert (h["deployed_version"], h["deployed_crc32"], h["model_crc32"]) == (7, crc, crc)
            ev = c.evaluate()
        finally:
            c.close()
        correct, count, loss = host_eval(models["final"], boards["run"], pid)
        assert (ev["correct"], ev["count"]) == (correct, count)
        assert ev["loss"] == pytest.approx(loss, rel=1e-5)
        assert f"board {url}: version 7" in r.stdout and f"{correct}/{count}" in r.stdout


def test_a_transfer_cut_at_random_points_leaves_the_old_model_working(boards, models):
    url = boards["urls"][0]
    old = host_eval(models["final"], boards["run"], 0)
    chunks = -(-len(models["pretrained"]) // 1020)
    rng = np.random.default_rng(5)
    c = client(url)
    try:
        before = c.deploy(models["final"], version=7)  # the state the other test leaves (or sets it)
        assert before["committed"]
        for cut in sorted(set(rng.integers(0, chunks, 3).tolist())):
            assert not c.deploy(models["pretrained"], version=8, stop_after=int(cut))["committed"]
            h = c.hello()
            assert h["deployed_version"] == 7, cut  # the transfer stopped: the old model is the active one
            ev = c.evaluate()
            assert (ev["correct"], ev["count"]) == old[:2] and ev["loss"] == pytest.approx(old[2], rel=1e-5)
        # a frame cut in the middle (the link goes silent): the board expires it and serves on
        from fedtiny.devices import protocol as P

        partial = P.frame(P.DEPLOY_DATA, 99, struct.pack("<I", 0) + models["pretrained"][:1000])
        c.send_raw(partial[: int(rng.integers(7, len(partial) - 1))])
        c.resync()
        assert c.hello()["deployed_version"] == 7
        # committing a transfer cut short is refused and changes nothing
        assert not c.deploy(models["pretrained"], version=8, stop_after=1)["committed"]
        with pytest.raises(Exception, match="TRUNCATED"):
            c.request(P.DEPLOY_COMMIT)
        assert c.hello()["deployed_version"] == 7 and c.evaluate()["correct"] == old[0]
        # and a complete transfer then takes over
        done = c.deploy(models["pretrained"], version=8)
        assert (done["correct"], done["count"]) == host_eval(models["pretrained"], boards["run"], 0)[:2]
        assert c.hello()["deployed_version"] == 8
    finally:
        c.close()


def test_a_model_that_fails_its_checks_is_rolled_back(boards, models):
    from fedtiny.devices import protocol as P
    from fedtiny.devices.link import BoardError
    from fedtiny.models.tflite import import_tflite
    from fedtiny.trainer.model_format import to_bytes

    url = boards["urls"][1]
    c = client(url)
    try:
        c.deploy(models["final"], version=21)
        good = c.evaluate()
        # a CRC that does not match the bytes sent
        data = models["pretrained"]
        c.request(P.DEPLOY, struct.pack("<III", 22, len(data), zlib.crc32(data) ^ 1))
        for off in range(0, len(data), 1020):
            c.request(P.DEPLOY_DATA, struct.pack("<I", off) + data[off : off + 1020])
        with pytest.raises(BoardError, match="BAD_CRC"):
            c.request(P.DEPLOY_COMMIT)
        # bytes that are not a model (their CRC right): the loader refuses them
        with pytest.raises(BoardError, match="BAD_MAGIC"):
            c.deploy(b"NOPE" + data[4:], version=23)
        # a model that loads but cannot evaluate on this board's data (another feature shape)
        other, _ = import_tflite(Path(__file__).parent / "data" / "digits_litert_int8.tflite", 4)
        with pytest.raises(BoardError, match="BAD_DATA"):
            c.deploy(to_bytes(other), version=24)
        h = c.hello()
        assert (h["deployed_version"], h["deployed_crc32"]) == (21, zlib.crc32(models["final"]))
        assert c.evaluate() == good  # rolled back: the previous model runs, as before
    finally:
        c.close()


def test_fedtiny_deploy_says_which_board_refused(boards, cache_dir, tmp_path):
    r = fedtiny(["deploy", str(tmp_path), "--to", boards["urls"][0]], tmp_path, cache_dir)
    assert r.returncode == 2 and "no checkpoint" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = fedtiny(["deploy", "run", "--to", "socket://127.0.0.1:9", "--version", "3"], boards["cwd"], cache_dir)
    assert r.returncode == 1 and "socket://127.0.0.1:9" in r.stderr and "Traceback" not in r.stderr, r.stderr
