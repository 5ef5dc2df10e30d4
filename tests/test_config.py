"""Config groups compose and validate; bad values fail before anything starts, in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedtiny.config import compose, conf_dir
from fedtiny.errors import ConfigError

GROUPS = {g: sorted(p.stem for p in (conf_dir() / g).glob("*.yaml")) for g in ("dataset", "model", "strategy", "client", "board", "codec", "privacy")}
EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


# options that need a value no default can give: model=tflite reads the .tflite it names
NEEDS = {("model", "tflite"): [f"model.path={Path(__file__).parent / 'data' / 'digits_litert_int8.tflite'}"]}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes(group, option):
    cfg = compose([f"{group}={option}", *NEEDS.get((group, option), [])])
    assert cfg.rounds >= 1


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    compose([f"experiment={name}"])


@pytest.mark.parametrize("override,message", [
    (["rounds=-1"], "rounds must be >= 1"),
    (["rounds=0"], "rounds must be >= 1"),
    (["dataset=nope"], "dataset=nope: no such dataset option (available: digits, fashion, watch)"),
    (["budget/memory=foo"], "budget/memory=foo: no such budget/memory option (available: fleet, none)"),
    (["strategy=fedadm"], "strategy=fedadm: no such strategy option (available: fedadam, fedavg, fedprox); did you mean fedadam?"),
    (["client.lr=abc"], "could not be converted"),
    (["+client.foo=1"], "unknown key 'client.foo' (client has: batch_size, epochs, lr"),
    (["client.epoch=3"], "unknown key 'client.epoch' (client has: ... ); did you mean epochs?"),
    (["privacy.clp=1"], "unknown key 'privacy.clp' (privacy has: ... ); did you mean clip?"),
    (["+seeds=1"], "unknown key 'seeds' (the config has: ... ); did you mean seed?"),
    (["experiment=digits_quick", "dataset.num_client=3"], "unknown key 'dataset.num_client' ... did you mean num_clients?"),
    (["board.name=foo"], "board.name only renames the profile and keeps its figures; select a profile with board=foo"),
    (["board=esp32s3", "board.name=nrf52840"], "board.name only renames"),
    (["client.lr=0"], "client.lr must be in (0, 100], got 0.0"),
    (["client.momentum=1.5"], "client.momentum"),
    (["clients_per_round=50"], "exceeds the 12 devices"),
    (["dataset.pretrain_subjects=[1,2,3,4,5,6,7,8,9,10]"], "pretrain_subjects"),
    (["dataset.test_fraction=0.6", "dataset.holdout_fraction=0.4"], "must leave training data"),
    (["model.trainable_layers=0"], "model.trainable_layers"),
    (["model.arch=resnet"], "unknown architecture"),
    (["strategy=fedprox", "strategy.proximal_mu=-1"], "proximal_mu"),
    (["faults.raise_partitions=[99]"], "not partition ids"),
    (["simulation.client_cpus=4"], "client_cpus"),
    (["simulation.backend=spark"], "simulation.backend must be one of ['inprocess', 'ray'], got 'spark'"),
    (["simulation.workers=-1"], "simulation.workers must be >= 0"),
    (["experiment=fashion_scale", "dataset.field_shift.noise=[0.1,0]"], "dataset.field_shift.noise must be a range [lo, hi]"),
    (["experiment=fashion_scale", "dataset.field_shift.noise=[-0.1,0]"], "dataset.field_shift.noise must be >= 0"),
    (["dataset.field_shift.gain=-1"], "dataset.field_shift.gain must be >= 0"),
    (["codec.bits=3"], "codec.bits must be"),
    (["codec.error_feedback=true"], "error_feedback needs codec.bits < 32"),
    (["codec.max_update_bytes=8"], "max_update_bytes"),
    (["faults.malformed_kinds=[garbage]"], "malformed_kinds"),
    (["faults.malformed_partitions=[40]"], "not partition ids"),
    (["client.precision=int4"], "client.precision"),
    (["client.rounding=up"], "client.rounding"),
    (["budget.memory.precisions=[float16]"], "budget.memory.precisions"),
])
def test_bad_values_fail_with_a_clear_message(override, message):
    import re

    # literal text; " ... " stands for any text in between
    pattern = ".*".join(re.escape(part) for part in message.split(" ... "))
    with pytest.raises(ConfigError, match=pattern):
        compose(override)


def test_cli_prints_one_line_and_exits_nonzero(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "fedtiny", "rounds=-1"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["fedtiny: config error: rounds must be >= 1, got -1"]
    assert not (tmp_path / "outputs").exists()  # nothing started, nothing written


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_one_tiny_round(name, tmp_path, cache_dir):
    from tests.conftest import run

    small = ["rounds=1", "model.pretrain_epochs=1", "model.calibration_samples=64"]
    if "fashion" in name:
        small += ["dataset.pretrain_size=1000", "dataset.num_clients=20", "dataset.server_test_size=200",
                  "dataset.max_samples_per_client=60", "clients_per_round=5"]
    result = run([f"experiment={name}", *small], tmp_path, cache_dir)
    assert result["summary"]["rounds"] == 1 and len(result["rows"]) == 2
