"""`flwr run .` exactly as the user guide (docs/user-guide.md) writes it, on a fresh FLWR_HOME: the run completes, a
federation too small for the experiment fails at once naming the fix, and `fedtiny flower stop`
stops the local SuperLink that flwr started and no other process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "docs" / "user-guide.md").read_text()
    section = text[text.index("## With Flower's CLI"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [ln for ln in block.splitlines() if ln.strip()]


def _decoy(home: Path) -> subprocess.Popen:
    """A process that looks like a local SuperLink of another FLWR_HOME."""
    log = home / "local-superlink" / "superlink.log"
    return subprocess.Popen(["bash", "-c", f'exec -a flower-superlink {sys.executable} -c "import time; '
                             f'time.sleep(600)" --simulation --log-file {log}'])


@pytest.fixture(scope="module")
def flwr_env(tmp_path_factory, cache_dir):
    """A fresh FLWR_HOME; the plugin example installed (pip) into a directory on PYTHONPATH
    before the first `flwr run` starts the local SuperLink, whose SuperNodes inherit it."""
    home = tmp_path_factory.mktemp("flwr-home")
    site = tmp_path_factory.mktemp("flwr-site")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                          str(site), str(ROOT / "examples" / "csv_timeseries")], capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, pip.stderr
    env = dict(os.environ, FLWR_HOME=str(home), FEDTINY_CACHE=str(cache_dir), FLWR_TELEMETRY_ENABLED="0",
               PYTHONPATH=str(site))
    env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)  # the guide's export sets it
    yield home, env
    from fedtiny.engine.flower_local import stop

    stop(home)


def _runs(env) -> list[dict]:
    out = subprocess.run(["flwr", "ls", "--format", "json"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60).stdout
    return json.loads(out[out.index("{"):])["runs"]


def test_flwr_run_as_the_user_guide_writes_it(flwr_env, tmp_path_factory):
    from fedtiny.engine.flower_local import local_superlink_pids

    home, env = flwr_env
    export, run, stop = readme_commands()
    assert export.startswith("export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1")
    assert run.startswith("flwr run . ") and "num-supernodes=12" in run and stop == "fedtiny flower stop"
    before = {p.name for p in (ROOT / "outputs" / "flwr-run").glob("*")} if (ROOT / "outputs").exists() else set()
    r = subprocess.run(["bash", "-c", f"{export}\n{run}"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = _runs(env)
    assert [x["status"] for x in runs] == ["finished:completed"], runs
    new = sorted({p.name for p in (ROOT / "outputs" / "flwr-run").glob("*")} - before)
    summary = json.loads((ROOT / "outputs" / "flwr-run" / new[-1] / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds"] == 5 and summary["clients_answering"] == 12

    # a plugin (examples/csv_timeseries) through --config-dir in the overrides: the SuperNodes import it
    data = tmp_path_factory.mktemp("flwr-data") / "sensors.csv"
    subprocess.run([sys.executable, "-m", "fedtiny_csv.demo", str(data)], env=env, check=True, capture_output=True)
    conf = ROOT / "examples" / "csv_timeseries" / "conf"
    overrides = f"--config-dir {conf} experiment=csv_quick dataset.path={data} rounds=2"
    r = subprocess.run(["bash", "-c", f"{export}\nflwr run . --stream --federation-config 'num-supernodes=8' "
                        f"--run-config 'overrides=\"{overrides}\"'"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    newest = sorted((ROOT / "outputs" / "flwr-run").glob("*"))[-1]
    summary = json.loads((newest / "summary.json").read_text())
    assert summary["dataset"] == "csv_ts" and summary["model"] == "fedtiny_csv.nets.tcn"
    assert summary["status"] == "ok" and summary["failed_total"] == 0 and summary["clients_answering"] == 8

    # too few simulated SuperNodes: the run fails at once and says what to pass
    t0 = time.monotonic()
    r = subprocess.run(["bash", "-c", f"{export}\nflwr run . --stream --run-config 'overrides=\"rounds=1\"'"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert time.monotonic() - t0 < 120
    assert 'the federation has 2 simulated SuperNodes but the experiment has 12 devices' in r.stdout + r.stderr
    assert 'num-supernodes=12' in r.stdout + r.stderr
    assert sorted(x["status"] for x in _runs(env)) == ["finished:completed"] * 2 + ["finished:failed"]

    # `fedtiny flower stop` stops this FLWR_HOME's SuperLink and SuperExec, not a look-alike
    other = tmp_path_factory.mktemp("other-flwr-home")
    decoy = _decoy(other)
    try:
        for _ in range(100):  # until bash has exec'd the look-alike
            if local_superlink_pids(other):
                break
            time.sleep(0.05)
        assert len(local_superlink_pids(home)) == 2 and local_superlink_pids(other) == [decoy.pid]
        r = subprocess.run(["bash", "-c", stop], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "stopped the local SuperLink" in r.stdout
        assert local_superlink_pids(home) == [] and decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
