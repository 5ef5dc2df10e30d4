"""Shared fixtures: one backbone cache per session, and the federated runs several tests
read (Ray starts in 10-20 s, so simulations are shared, never started per test)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("backbones")


def run(overrides: list[str], out_dir: Path, cache_dir: Path) -> dict:
    from fedtiny.config import compose
    from fedtiny.engine.simulation import run_experiment

    cfg = compose([*overrides, f"cache_dir={cache_dir}", "progress=false"])
    run_experiment(cfg, out_dir, log=lambda *_: None)
    rows = list(csv.DictReader(open(out_dir / "metrics.csv")))
    return {"summary": json.loads((out_dir / "summary.json").read_text()), "rows": rows, "dir": out_dir, "cfg": cfg}


FAULTY = ["experiment=digits_quick", "rounds=3", "faults.raise_partitions=[1]", "faults.raise_rounds=[2]",
          "faults.nan_partitions=[4]", "faults.nan_rounds=[3]"]


@pytest.fixture(scope="session")
def faulty_runs(tmp_path_factory, cache_dir) -> tuple[dict, dict]:
    """The same faulty digits experiment twice (same seed)."""
    base = tmp_path_factory.mktemp("runs")
    return run(FAULTY, base / "a", cache_dir), run(FAULTY, base / "b", cache_dir)


@pytest.fixture(scope="session")
def task():
    """The digits demo task: a small int8 backbone and its float head."""
    from fedtiny.trainer.demo import digits_task

    return digits_task(seed=0)


@pytest.fixture(scope="session")
def features(task):
    return task.model.prefix_features(task.x_train), task.model.prefix_features(task.x_test)
