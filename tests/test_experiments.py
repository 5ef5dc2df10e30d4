"""The experiment scripts run end to end (tiny settings) and write their table and plot."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_memory_sweep_writes_table_and_plot(tmp_path, cache_dir):
    env = {**os.environ, "FEDTINY_CACHE": str(cache_dir)}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/memory_sweep.py"), "--budgets", "1", "64",
                           "--rounds", "1", "--precision-sets", "float32", "int8", "--", "experiment=digits_quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = next((tmp_path / "outputs/memory_sweep").iterdir())
    rows = list(csv.DictReader(open(out / "memory_sweep.csv")))
    assert [r["scheme"] for r in rows][:2] == ["none fits"] * 2  # 1 KiB holds no scheme: reported, not fatal
    assert [r["precisions"] for r in rows] == ["float32", "int8"] * 2
    for ok in rows[2:]:
        assert ok["scheme"] != "none fits" and 0 < int(ok["arena_bytes"]) <= 64 * 1024
        assert ok["precision"] == ok["precisions"]
        assert float(ok["torch_ratio"]) > 1.0  # autograd keeps more for the same update
    assert (out / "memory_sweep.md").exists() and (out / "memory_sweep.png").stat().st_size > 5000


def test_bits_sweep_writes_table_and_plot(tmp_path, cache_dir):
    env = {**os.environ, "FEDTINY_CACHE": str(cache_dir)}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/bits_sweep.py"), "--bits", "2", "--rounds", "1",
                           "--", "experiment=digits_quick"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = next((tmp_path / "outputs/bits_sweep").iterdir())
    rows = list(csv.DictReader(open(out / "bits_sweep.csv")))
    assert [(r["bits"], r["error_feedback"]) for r in rows] == [("32", "False"), ("2", "False"), ("2", "True")]
    f32, q2 = rows[0], rows[1]
    assert float(q2["up_payload_ratio"]) > 4  # 2-bit codes + per-channel float32 scales vs float32 values
    assert int(q2["up_payload_bytes"]) < int(f32["up_payload_bytes"])
    # the downlink is float32 in both; only the config text that travels with it differs
    assert abs(int(q2["down_bytes"]) - int(f32["down_bytes"])) < 0.01 * int(f32["down_bytes"])
    assert "best uplink compression" in proc.stdout
    assert (out / "bits_sweep.md").exists() and (out / "bits_sweep.png").stat().st_size > 5000


def test_privacy_sweep_writes_table_and_plot(tmp_path, cache_dir):
    env = {**os.environ, "FEDTINY_CACHE": str(cache_dir)}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/privacy_sweep.py"), "--epsilons", "8",
                           "--rounds", "2", "--", "experiment=digits_quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = next((tmp_path / "outputs/privacy_sweep").iterdir())
    rows = list(csv.DictReader(open(out / "privacy_sweep.csv")))
    assert [r["target_epsilon"] for r in rows] == ["inf", "8.0"]
    assert float(rows[1]["epsilon"]) <= 8.0 and float(rows[1]["noise_multiplier"]) > 0
    assert float(rows[1]["epsilon_flower_accountant"]) >= float(rows[1]["epsilon"])
    assert (out / "privacy_sweep.md").exists() and (out / "privacy_sweep.png").stat().st_size > 5000
