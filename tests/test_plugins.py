"""Plugins from outside the package (issue 21, part 1): the worked example in
``examples/csv_timeseries`` (a CSV time-series data set and a backbone, named by ``_target_``)
installed as its own package into a directory of its own, and run as a user runs it: the
``fedtiny`` command in a directory outside the source tree, with ``--config-dir``; single runs
on worker processes and on Ray's workers, a sweep, and bad plugin configs refused in one line
before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedtiny.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "csv_timeseries"
FEDTINY = [sys.executable, "-m", "fedtiny"]


# -- the generic schema check (oracle: the cases written out by hand) ---------------------------


def _loader(path: str, num_clients: int, window: int = 32, scale: float = 1.0, columns: list[str] | None = None,
            shape: tuple[int, int] = (1, 2)):
    raise AssertionError("never called by the check")


@pytest.mark.parametrize("given,error", [
    ({"path": "a.csv"}, None),
    ({"path": "a.csv", "window": 16, "scale": 2, "columns": ["ax"], "shape": [3, 4]}, None),
    ({"path": "a.csv", "columns": None}, None),
    ({}, r"needs path \(no default\)"),
    ({"path": "a.csv", "windw": 16}, r"unknown key\(s\) \['windw'\] .* did you mean window\?"),
    ({"path": "a.csv", "window": 2.5}, r"dataset.window: .* takes int, got 2.5"),
    ({"path": "a.csv", "window": True}, "takes int, got True"),
    ({"path": 3}, "takes str, got 3"),
    ({"path": "a.csv", "columns": ["ax", 1]}, r"takes list\[str\] \| None"),
    ({"path": "a.csv", "shape": [1, 2, 3]}, r"takes tuple\[int, int\]"),
])
def test_a_plugins_keys_are_checked_against_its_signature(given, error):
    from fedtiny.plugins import check_arguments

    if error is None:
        check_arguments(_loader, given, "dataset", supplied=("num_clients",))
    else:
        with pytest.raises(ConfigError, match=error):
            check_arguments(_loader, given, "dataset", supplied=("num_clients",))


def test_a_target_that_does_not_resolve_says_why():
    from fedtiny.plugins import resolve

    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.tasks'.*pip install"):
        resolve("no_such_pkg.tasks.build", "dataset._target_")
    with pytest.raises(ConfigError, match="'fedtiny.plugins' has no callable 'nope'"):
        resolve("fedtiny.plugins.nope", "dataset._target_")
    with pytest.raises(ConfigError, match="a dotted path"):
        resolve("build", "dataset._target_")


def tiny_task(num_clients: int, size: int, name: str = "?", seed: int = 0):
    """A plugin loader for the composition tests: random samples, `num_clients` devices."""
    import numpy as np

    from fedtiny.data import ClientData, FederatedTask, Split

    rng = np.random.default_rng(seed)

    def split(n):
        return Split(rng.normal(size=(n, 1, 8, 2)), rng.integers(0, 3, n))

    return FederatedTask(name, (1, 8, 2), ["a", "b", "c"], split(size), split(size // 4),
                         [ClientData(f"dev{i}", split(size), split(size // 4)) for i in range(num_clients)], split(size))


def test_compose_takes_a_config_dir_or_a_searchpath_and_the_loader_gets_its_keys(tmp_path):
    from fedtiny.config import compose, num_devices
    from fedtiny.data import build_task

    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "mine.yaml").write_text("_target_: tests.test_plugins.tiny_task\nnum_clients: 3\nsize: 20\n")
    for cfg in (compose(["dataset=mine", "clients_per_round=2"], [str(tmp_path)]),
                compose([f"hydra.searchpath=[file://{tmp_path}]", "dataset=mine"])):
        assert cfg.dataset.name == "test_plugins" and num_devices(cfg) == 3  # name: the loader's module
        task = build_task(cfg.dataset.name, cfg.dataset)
        assert len(task.clients) == 3 and len(task.pretrain) == 20 and task.name == "test_plugins"
    with pytest.raises(ConfigError, match="dataset=mne: no such dataset option .*mine.*did you mean mine"):
        compose(["dataset=mne"], [str(tmp_path)])
    with pytest.raises(ConfigError, match="clients_per_round=4 exceeds the 3 devices"):
        compose(["dataset=mine", "clients_per_round=4"], [str(tmp_path)])
    with pytest.raises(ConfigError, match="--config-dir .*: no such directory"):
        compose(["dataset=mine"], [str(tmp_path / "nope")])


def test_a_loader_that_fails_or_returns_something_else_is_named(tmp_path):
    from fedtiny.data import build_task
    from omegaconf import OmegaConf

    bad = OmegaConf.create({"_target_": "tests.test_plugins.tiny_task", "name": "x", "num_clients": 2, "size": -1})
    with pytest.raises(ConfigError, match="dataset: tests.test_plugins.tiny_task failed: ValueError"):
        build_task("x", bad)
    other = OmegaConf.create({"_target_": "builtins.dict", "name": "x", "num_clients": 2})
    with pytest.raises(ConfigError, match="returned dict, not a fedtiny.data.FederatedTask"):
        build_task("x", other)


# -- the example package, installed on its own, run from outside the tree -----------------------


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The example installed (pip, as its own package) into a directory that only PYTHONPATH
    names, a demo CSV written by its own command, and a user directory outside the tree."""
    site = tmp_path_factory.mktemp("site")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    user = tmp_path_factory.mktemp("user")
    env = dict(os.environ, PYTHONPATH=str(site), FLWR_TELEMETRY_ENABLED="0")
    demo = subprocess.run([sys.executable, "-m", "fedtiny_csv.demo", "sensors.csv"], cwd=user, env=env,
                          capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    return {"env": env, "cwd": user, "conf": str(EXAMPLE / "conf")}


def fedtiny(plugin, args: list[str], cache_dir: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(plugin["env"], FEDTINY_CACHE=str(cache_dir))
    return subprocess.run([*FEDTINY, "--config-dir", plugin["conf"], *args], cwd=plugin["cwd"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def worker_run(plugin, cache_dir):
    r = fedtiny(plugin, ["experiment=csv_quick", "simulation.workers=2", "hydra.run.dir=run_workers"], cache_dir)
    return r, plugin["cwd"] / "run_workers"


def test_the_example_plugin_runs_on_worker_processes(worker_run):
    r, out = worker_run
    assert r.returncode == 0, r.stderr[-3000:]
    s = _summary(out)
    assert s["dataset"] == "csv_ts" and s["model"] == "fedtiny_csv.nets.tcn"
    assert s["status"] == "ok" and s["failed_total"] == 0 and s["aggregated_total"] == 5 * 4
    # the field's sensor is mounted unlike the vendor's: fine-tuning in the field lifts the pretrained backbone
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert s["final_accuracy"] > float(rows[0].split(",")[1]) + 0.1


def test_the_example_plugin_runs_on_rays_workers(plugin, cache_dir, worker_run):
    """Ray's workers import the plugin by its _target_ (they never ran the driver's imports)."""
    r = fedtiny(plugin, ["experiment=csv_quick", "simulation.backend=ray", "hydra.run.dir=run_ray"], cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    s = _summary(plugin["cwd"] / "run_ray")
    assert s["failed_total"] == 0 and s["aggregated_total"] == 5 * 4
    # the same clients, seeds and data: the engines agree
    assert s["final_accuracy"] == pytest.approx(_summary(worker_run[1])["final_accuracy"], abs=1e-9)


def test_a_plugin_module_in_the_working_directory_imports_in_rays_workers(plugin, cache_dir, tmp_path, worker_run):
    """The audit's case: the user's module sits in the directory the run starts in, installed
    nowhere and on no PYTHONPATH; the driver imports it (python -m puts the directory on
    sys.path) and Ray's workers resolve the _target_ themselves (Ray searches the driver's
    directory), where a module the driver registered by importing it stayed unknown."""
    import shutil

    shutil.copytree(EXAMPLE / "fedtiny_csv", tmp_path / "fedtiny_csv")
    shutil.copy(plugin["cwd"] / "sensors.csv", tmp_path / "sensors.csv")
    env = {k: v for k, v in plugin["env"].items() if k != "PYTHONPATH"}
    r = subprocess.run([*FEDTINY, "--config-dir", plugin["conf"], "experiment=csv_quick", "simulation.backend=ray",
                        "rounds=2", "hydra.run.dir=run"], cwd=tmp_path, env=dict(env, FEDTINY_CACHE=str(cache_dir)),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    s = _summary(tmp_path / "run")
    assert s["failed_total"] == 0 and s["aggregated_total"] == 2 * 4


def test_a_sweep_takes_the_plugin_from_the_config_dir(plugin, cache_dir, worker_run):
    r = fedtiny(plugin, ["-m", "experiment=csv_quick", "rounds=1", "dataset.window=24,32", "hydra.sweep.dir=sweep"],
                cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted((plugin["cwd"] / "sweep").glob("*/summary.json"))
    assert len(runs) == 2 and all(json.loads(p.read_text())["status"] == "ok" for p in runs)


@pytest.mark.parametrize("override,message", [
    ("dataset._target_=fedtiny_csv.task.nope", r"dataset\._target_: 'fedtiny_csv\.task' has no callable 'nope'"),
    ("+dataset.windw=16", r"dataset: unknown key\(s\) \['windw'\] .*did you mean window\?"),
    ("dataset.window=big", "dataset.window: fedtiny_csv.task.build takes int, got 'big'"),
    ("~dataset.num_clients", "dataset.num_clients: a plugin data set says how many devices"),
    ("model._target_=fedtiny_csv.nets.nope", r"model\._target_: 'fedtiny_csv\.nets' has no callable 'nope'"),
])
def test_a_bad_plugin_config_is_refused_in_one_line_before_anything_starts(plugin, cache_dir, tmp_path, override,
                                                                          message):
    import re

    r = fedtiny(plugin, ["experiment=csv_quick", override, f"hydra.run.dir={tmp_path / 'run'}"], cache_dir,
                timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert not (tmp_path / "run").exists()


def test_without_the_config_dir_the_option_is_unknown(plugin, cache_dir):
    r = subprocess.run([*FEDTINY, "dataset=csv_ts"], cwd=plugin["cwd"], capture_output=True, text=True, timeout=120,
                       env=dict(plugin["env"], FEDTINY_CACHE=str(cache_dir)))
    assert r.returncode == 2 and "dataset=csv_ts: no such dataset option" in r.stderr


def test_the_loader_refuses_a_malformed_csv_with_its_line(plugin, cache_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("device,label,ax\nd00,walk,0.1\nd00,walk,oops\n")
    r = fedtiny(plugin, ["experiment=csv_quick", f"dataset.path={bad}", f"hydra.run.dir={tmp_path / 'run'}"],
                cache_dir, timeout=300)
    assert r.returncode != 0
    assert f"{bad}:3: a channel value is not a number" in r.stderr
