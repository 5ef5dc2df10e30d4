"""Energy model, board profiles and the sweep report.

Oracles: MAC counts by brute-force enumeration of (output, tap) pairs; energy responses that
must hold by construction of a physical model (more epochs or more bytes cost more; a budget
below the cheapest round declines); the profile files themselves for sources."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedtiny.budgets.energy import (Board, affordable_epochs, layer_macs, pareto_front, round_energy,
                                    training_macs)
from fedtiny.config import compose, conf_dir
from fedtiny.trainer import LayerUpdate, Model, TrainConfig
from tests.models import random_model

ROOT = Path(__file__).resolve().parents[1]
BOARDS = sorted(p.stem for p in (conf_dir() / "board").glob("*.yaml"))


def test_six_board_profiles_compose():
    assert set(BOARDS) >= {"nrf52840", "stm32f746", "stm32l4r5", "esp32s3", "rp2040", "mps2_an386"}
    for name in BOARDS:
        b = Board.from_cfg(compose([f"board={name}"]).board)
        assert b.name == name and b.clock_hz > 0 and b.active_mw > 0


@pytest.mark.parametrize("name", BOARDS)
def test_every_board_constant_has_a_source_or_is_marked_as_an_assumption(name):
    """Each numeric value carries a comment on its line or on its parent key's line, and the
    comment names a source document section or says ASSUMPTION."""
    lines = (conf_dir() / "board" / f"{name}.yaml").read_text().splitlines()
    sourced = re.compile(r"(PS |DS |AN\b|AN:|PW |ASSUMPTION|linker|module flash|same core|figures|as above|MEASURED)")
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([a-z_0-9]+):\s*([-0-9.]+)\s*(#.*)?$", line)
        if not m:
            continue
        comment = m.group(4) or ""
        indent = len(m.group(1))
        j = i - 1
        while j >= 0 and indent > 0:  # the parent key line's comment covers its children
            pm = re.match(r"^(\s*)[a-z_0-9]+:\s*(#.*)?$", lines[j])
            if pm and len(pm.group(1)) < indent:
                comment += " " + (pm.group(2) or "")
                break
            j -= 1
        assert sourced.search(comment), f"{name}.yaml line {i + 1}: '{line.strip()}' has no source or ASSUMPTION"


def _enumerated_macs(layer) -> int:
    """Every (output position, output channel, kernel tap, input channel) a dense layer multiplies."""
    oh, ow, oc = layer.out_shape
    kh, kw = layer.kernel
    if layer.type == "fc":
        return int(np.prod(layer.in_shape)) * oc
    per_out = kh * kw * (layer.in_shape[2] if layer.type == "conv2d" else 1)
    return sum(per_out for _ in range(oh * ow * oc))


@pytest.mark.parametrize("seed", range(4))
def test_layer_macs_count_every_multiply(seed):
    rng = np.random.default_rng(seed)
    spec = random_model(rng, frozen=("conv2d", "dwconv2d"), trainable=("conv2d", "dwconv2d", "flatten", "fc"))
    for layer in spec.layers:
        if layer.type in ("conv2d", "dwconv2d", "fc"):
            assert layer_macs(layer) == _enumerated_macs(layer)


def _model():
    rng = np.random.default_rng(7)
    return Model(random_model(rng, frozen=("conv2d",), trainable=("conv2d", "dwconv2d", "flatten", "fc", "fc"),
                              input_shape=(4, 8, 2)))


def test_energy_responds_to_epochs_bits_and_scheme():
    model, board = _model(), Board.from_cfg(compose([]).board)
    cfg = TrainConfig(batch_size=8)
    e = [round_energy(board, training_macs(model, cfg, 64, k), 5000, 8000, 60.0) for k in (1, 2, 4)]
    assert e[0]["compute_mj"] < e[1]["compute_mj"] < e[2]["compute_mj"]  # more local steps, more energy
    assert e[0]["radio_mj"] == e[2]["radio_mj"]
    from fedtiny.budgets.memory import codec_bytes

    sent = [codec_bytes(model, cfg, bits)["tx_buffer"] for bits in (1, 4, 8, 32)]
    radio = [round_energy(board, training_macs(model, cfg, 64, 1), s, 8000, 60.0)["radio_mj"] for s in sent]
    assert sent == sorted(sent) and radio == sorted(radio) and radio[0] < radio[-1]  # more bits, more energy
    head = tuple([LayerUpdate("none", False)] * 4 + [LayerUpdate("all", True)])
    sparse = training_macs(model, TrainConfig(batch_size=8, update=head, start_layer=4), 64, 1)
    full = training_macs(model, cfg, 64, 1)
    assert sparse["float_bwd"] < full["float_bwd"]  # backprop stops at the head


def test_budget_below_the_cheapest_round_declines():
    model, board = _model(), Board.from_cfg(compose([]).board)
    cfg = TrainConfig(batch_size=8)
    one = round_energy(board, training_macs(model, cfg, 64, 1), 5000, 8000, 60.0)["total_mj"]
    three = round_energy(board, training_macs(model, cfg, 64, 3), 5000, 8000, 60.0)["total_mj"]
    assert affordable_epochs(board, model, cfg, 64, 3, one * 0.999, 5000, 8000, 60.0) == 0
    assert affordable_epochs(board, model, cfg, 64, 3, one, 5000, 8000, 60.0) == 1
    assert affordable_epochs(board, model, cfg, 64, 3, three, 5000, 8000, 60.0) == 3


def test_pareto_front():
    pts = np.array([[0.8, 10.0], [0.7, 5.0], [0.6, 20.0], [0.8, 12.0]])
    assert pareto_front(pts, [True, False]).tolist() == [True, True, False, False]


def test_tiny_energy_budget_makes_every_device_decline(tmp_path, cache_dir):
    from tests.conftest import run

    import csv
    import json

    from fedtiny.errors import RunFailed

    with pytest.raises(RunFailed, match=r"no update was aggregated in 2 round\(s\) \(0 client failures, 0 rejected "
                                        r"updates, 20 declined; most common: declined: energy budget") as info:
        run(["experiment=digits_quick", "rounds=2", "energy.budget_mj=0.001"], tmp_path, cache_dir)
    assert info.value.status == "declined"
    r = {"summary": json.loads((tmp_path / "summary.json").read_text()),
         "rows": list(csv.DictReader(open(tmp_path / "metrics.csv")))}
    s = r["summary"]
    assert s["status"] == "declined" and s["aggregated_total"] == 0
    assert [int(row["declined"]) for row in r["rows"][1:]] == [s["clients"]] * 2
    assert [int(row["participating"]) for row in r["rows"][1:]] == [0, 0] and s["declined_total"] == 2 * s["clients"]
    assert s["final_accuracy"] == s["initial_accuracy"]  # nobody trained: the model did not move
    assert any(f["what"] == "declined" and "energy budget" in f["reason"] for f in s["failures"])


def test_report_of_a_multirun_sweep(tmp_path, cache_dir):
    """`fedtiny -m` with the joblib launcher, then `fedtiny report`: table, plots, a failed run."""
    env = {**os.environ, "FEDTINY_CACHE": str(cache_dir), "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedtiny", "-m", "experiment=energy_sweep", "rounds=1",
           "energy.budget_mj=0.001,60", "hydra.sweep.dir=sweep"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    broken = tmp_path / "sweep" / "9"
    broken.mkdir()
    (broken / "config.yaml").write_text("seed: 0\n")
    (broken / "error.txt").write_text("RuntimeError: injected for the test\n")
    rep = subprocess.run([sys.executable, "-m", "fedtiny", "report", "sweep"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-2000:]
    rows = (tmp_path / "sweep" / "report.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 runs: the one where every device declined is a data point
    declined = [r for r in csv.DictReader(open(tmp_path / "sweep" / "report.csv")) if r["trained"] == "False"]
    assert len(declined) == 1 and float(declined[0]["energy_budget_mj"]) == 0.001
    table = [ln for ln in (tmp_path / "sweep" / "report.md").read_text().splitlines() if "| False |" in ln]
    assert len(table) == 1 and table[0].rstrip().endswith("|  |")  # ... and not on the Pareto front
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "1 failed run" in md and "injected for the test" in md
    for name in ("memory", "epsilon", "energy", "pareto"):
        assert (tmp_path / "sweep" / f"report_{name}.png").stat().st_size > 5000
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert sorted(s["declined_total"] for s in summaries) == [0, summaries[0]["clients"]]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([sys.executable, "-m", "fedtiny", "report", "empty"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no runs in" in bad.stderr


def test_battery_drains_across_rounds_until_the_device_declines():
    from types import SimpleNamespace

    from flwr.app import Context, RecordDict

    from fedtiny.client.round import _energy_plan

    model = _model()
    tc = TrainConfig(batch_size=8)
    msg = SimpleNamespace(content=RecordDict())
    board = Board.from_cfg(compose([]).board)
    full = round_energy(board, training_macs(model, tc, 64, 3), 1100, 0, 60.0)["total_mj"]
    cfg = compose([f"energy.battery_mj={2.5 * full}"])
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    epochs, left = [], []
    for _ in range(5):
        e, info = _energy_plan(cfg, model, tc, 64, 3, msg, context)
        epochs.append(e)
        left.append(info["battery"])
    assert epochs[:2] == [3, 3] and epochs[-1] == 0 and epochs == sorted(epochs, reverse=True)
    assert all(b >= 0 for b in left) and left == sorted(left, reverse=True)


def test_a_ble_profile_prices_a_devices_bytes_over_the_air():
    """The nRF52840's radio is BLE: 1,000 bytes down and 500 up cost what they cost on air, by hand
    from fedtiny.budgets.ble's rules: writes of 244 x 4 + 24 (the last with response; 251-byte
    L2CAP PDUs + 10 bytes of LL each), notifications of 244, 244, 12; every data packet meets an
    empty 10-byte one; 3 connection events (the burst, the response, the notifications)."""
    from fedtiny.budgets.energy import radio_mj, radio_seconds

    board = Board.from_cfg(compose([]).board)
    assert board.name == "nrf52840" and board.ble is not None
    pairs, events = 9, 3
    air_down = 4 * 261 + 41 + (pairs - 5) * 10
    air_up = 15 + 261 + 261 + 29 + (pairs - 4) * 10
    tx_us, rx_us = 8 * air_up, 8 * air_down + (2 * pairs - events) * 150 + events * 200
    assert radio_mj(board, 500, 1000) == pytest.approx((tx_us * 19.2 + rx_us * 18.78) * 1e-6)
    assert radio_seconds(board, 500, 1000) == pytest.approx(events * 7.5e-3)
    wifi = Board.from_cfg(compose(["board=esp32s3"]).board)  # Wi-Fi: energy per byte, as before
    assert wifi.ble is None and radio_mj(wifi, 500, 1000) == pytest.approx((500 * 766 + 1000 * 232) * 1e-6)
