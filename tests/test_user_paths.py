"""What a user types, run as a user runs it: the installed ``fedtiny`` command in a directory
outside the source tree. Every subcommand's --help, every strategy of conf/strategy/ end to end,
and exit codes that do not hide failure (a run or a sweep that aggregated nothing exits 1 with
one line; the report leaves such runs off the Pareto front and survives a corrupt summary)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedtiny.config import conf_dir

FEDTINY = [sys.executable, "-m", "fedtiny"]
ALL_FAIL = ["experiment=digits_quick", "rounds=1", "faults.raise_partitions=[0,1,2,3,4,5,6,7,8,9]",
            "faults.raise_rounds=[1]", "progress=false"]


def fedtiny(args: list[str], cwd: Path, cache_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, FEDTINY_CACHE=str(cache_dir), FLWR_TELEMETRY_ENABLED="0")
    return subprocess.run([*FEDTINY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


HELP = [[], ["pretrain"], ["report"], ["resume"], ["board"], ["board", "info"], ["board", "serve"],
        ["board", "cancel"], ["emulate"], ["flower"], ["import"], ["export"], ["deploy"]]


@pytest.mark.parametrize("sub", HELP, ids=lambda s: " ".join(s) or "fedtiny")
def test_every_subcommand_answers_help(sub, tmp_path, cache_dir):
    for flag in ("--help", "-h"):
        r = fedtiny([*sub, flag], tmp_path, cache_dir, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "usage" in r.stdout.lower() and "Traceback" not in r.stdout + r.stderr
    if not sub:  # the overview names every subcommand before Hydra's help
        for name in ("pretrain", "report", "resume", "board info", "board serve", "board cancel", "emulate",
                     "flower stop", "import", "export", "deploy"):
            assert f"fedtiny {name}" in r.stdout


def test_a_subcommand_without_its_arguments_fails_with_usage(tmp_path, cache_dir):
    for sub in (["board"], ["report"], ["emulate"], ["resume"], ["import"], ["export"], ["deploy"]):
        r = fedtiny(sub, tmp_path, cache_dir, timeout=60)
        assert r.returncode == 2 and "usage" in r.stderr and "Traceback" not in r.stderr, sub


@pytest.fixture(scope="module")
def strategy_sweep(tmp_path_factory, cache_dir):
    """One multirun over every strategy in conf/strategy/ (one process, as a user sweeps)."""
    names = sorted(p.stem for p in (conf_dir() / "strategy").glob("*.yaml"))
    cwd = tmp_path_factory.mktemp("user")
    r = fedtiny(["-m", f"strategy={','.join(names)}", "experiment=digits_quick", "rounds=2", "progress=false",
                 "hydra.sweep.dir=sweep"], cwd, cache_dir, timeout=900)
    return names, cwd / "sweep", r


def test_every_strategy_runs_end_to_end(strategy_sweep):
    names, sweep, r = strategy_sweep
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(runs) == len(names) >= 3
    seen = set()
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        seen.add(s["strategy"])
        assert s["status"] == "ok" and s["rounds"] == 2 and s["failed_total"] == 0 and s["rejected_total"] == 0
        assert s["aggregated_total"] == 2 * s["clients"]
        assert s["final_accuracy"] > s["initial_accuracy"] - 0.05, s["strategy"]  # the server step did not wreck it
    assert seen == set(names)


def test_the_run_log_holds_what_the_console_showed_and_no_chatter(strategy_sweep):
    _, sweep, r = strategy_sweep
    assert "alembic" not in r.stdout + r.stderr and "setup plugin" not in r.stdout
    for run in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        log = (run / "run.log").read_text()
        assert "alembic" not in log and "[INFO] backbone " in log
        assert "round 1/2: accuracy" in log and "round 2/2: accuracy" in log
        last = [ln for ln in log.splitlines() if "[fedtiny][INFO]" in ln][-1]
        assert "accuracy " in last and " over 2 rounds; 0 failed" in last
        assert last.split("] ", 1)[1] in r.stdout  # the console showed the same line
        assert not (run / "cli.log").exists()


def test_report_leaves_failed_and_corrupt_runs_off_the_front(strategy_sweep, tmp_path, cache_dir):
    _, sweep, _ = strategy_sweep
    root = tmp_path / "sweep"
    shutil.copytree(sweep, root)
    corrupt = root / "0"
    (corrupt / "summary.json").write_text('{"initial_accuracy": 0.7, "final')  # cut mid-write
    flat = root / "1"
    s = json.loads((flat / "summary.json").read_text())
    s.update(status="failed", status_reason="no update was aggregated in 2 round(s)", final_accuracy=0.99)
    (flat / "summary.json").write_text(json.dumps(s))
    r = fedtiny(["report", str(root)], tmp_path, cache_dir, timeout=120)
    assert r.returncode == 0, r.stderr
    report = (root / "report.md").read_text()
    table = [ln for ln in report.splitlines() if ln.startswith("| ") and "pareto" not in ln]
    assert len(table) == 1 and table[0].startswith("| 2 ")  # only the good run is reported
    assert "unreadable results (JSONDecodeError" in report and "no update was aggregated" in report
    assert "2 failed" in r.stdout


def test_a_run_that_aggregated_nothing_exits_1_with_one_line(tmp_path, cache_dir):
    r = fedtiny(ALL_FAIL, tmp_path, cache_dir)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fedtiny: run failed: no update was aggregated in 1 round(s) (10 client failures")
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert summary["status"] == "failed" and summary["aggregated_total"] == 0
    assert "run failed: no update was aggregated" in next(tmp_path.rglob("run.log")).read_text()


def test_a_sweep_whose_every_run_failed_exits_1(tmp_path, cache_dir):
    r = fedtiny(["-m", *ALL_FAIL, "seed=0,1", "hydra.sweep.dir=sweep"], tmp_path, cache_dir, timeout=900)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("fedtiny: no run of the sweep trained anything (2 failed, 0 declined")
    assert len(list((tmp_path / "sweep").rglob("error.txt"))) == 2
    rep = fedtiny(["report", "sweep"], tmp_path, cache_dir, timeout=120)
    assert "(no finished runs)" in (tmp_path / "sweep" / "report.md").read_text() and "0 runs reported, 2 failed" in rep.stdout


def test_a_task_with_another_device_count_than_the_config_is_refused(tmp_path, cache_dir):
    """A task (here a registered variant of digits) returning fewer devices than
    dataset.num_clients is refused before the run, not silently shrunk."""
    from omegaconf import OmegaConf

    from fedtiny.config import compose
    from fedtiny.data import build_task, register_task
    from fedtiny.errors import ConfigError
    from fedtiny.server.prepare import prepare_output

    @register_task("digits_minus_one")
    def _build(cfg):
        task = build_task("digits", cfg)
        task.clients = task.clients[:-1]
        return task

    cfg = compose(["experiment=digits_quick", f"cache_dir={cache_dir}"])
    OmegaConf.update(cfg, "dataset.name", "digits_minus_one")
    with pytest.raises(ConfigError, match="task holds 9 devices but the config asks for 10"):
        prepare_output(cfg, tmp_path, log=lambda *_: None)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml")))
def test_every_preset_finds_its_data_after_setup(preset):
    """scripts/setup.sh installs what every preset reads (Fashion-MNIST is a Debian package)."""
    from fedtiny.config import compose, num_devices
    from fedtiny.data import build_task

    cfg = compose([f"experiment={preset}"])
    task = build_task(cfg.dataset.name, cfg.dataset)
    assert len(task.clients) == num_devices(cfg) and len(task.server_test.y) > 0


def test_setup_installs_every_debian_package_the_code_names():
    """Each `apt-get install X` the code tells a user to run is in setup.sh's list."""
    import re

    root = Path(__file__).resolve().parents[1]
    setup = (root / "scripts" / "setup.sh").read_text()
    listed = set(re.search(r"apt_packages=\(([^)]*)\)", setup).group(1).split())
    named = set()
    for path in (root / "fedtiny").rglob("*.py"):
        named |= set(re.findall(r"apt-get install ([a-z0-9][a-z0-9.+-]+)", path.read_text()))
    assert named and named <= listed, named - listed


def test_int8_accuracy_loss_beyond_the_threshold_is_warned_and_recorded(tmp_path, cache_dir):
    """digits' int8 backbone calibrated on 16 samples loses a little field accuracy (the same
    backbone bytes on every machine): a zero threshold must warn, on the console, in run.log and
    in summary.json, with the drop the backbone report shows."""
    r = fedtiny(["experiment=digits_quick", "model.calibration_samples=16", "rounds=1", "model.int8_max_drop=0",
                 "progress=false"], tmp_path, cache_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    b = s["backbone"]
    drop = b["float_field_accuracy"] - b["int8_field_accuracy"]
    assert drop > 0 and s["int8_drop"] == pytest.approx(drop, abs=1e-6)
    assert s["int8_warning"].startswith(f"the int8 backbone scores {drop:.3f} below float")
    assert "warning: the int8 backbone scores" in r.stdout
    assert "warning: the int8 backbone scores" in next(tmp_path.rglob("run.log")).read_text()
