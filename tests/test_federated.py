"""Federated runs in Flower's simulation engine (real ServerApp/ClientApp on Ray)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from tests.conftest import run


def _without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_same_seed_same_metrics(faulty_runs):
    a, b = faulty_runs
    assert _without_wall(a["rows"]) == _without_wall(b["rows"])
    assert len(a["rows"]) == 4  # round 0 (pretrained) + 3 rounds


def test_raising_client_is_counted_and_the_run_completes(faulty_runs):
    a, _ = faulty_runs
    n = a["summary"]["clients"]
    rows = {int(r["round"]): r for r in a["rows"]}
    assert int(rows[1]["failed"]) == 0 and int(rows[1]["participating"]) == n
    assert int(rows[2]["failed"]) == 1 and int(rows[2]["participating"]) == n - 1
    failure = [f for f in a["summary"]["failures"] if f["what"] == "failed"]
    assert failure and failure[0]["partition"] == 1 and failure[0]["round"] == 2
    assert "injected fault" in failure[0]["reason"]
    assert a["summary"]["rounds"] == 3 and a["summary"]["failed_total"] == 1


def test_malformed_update_is_rejected_with_its_reason(faulty_runs):
    a, _ = faulty_runs
    n = a["summary"]["clients"]
    row = a["rows"][3]
    assert int(row["rejected"]) == 1 and int(row["participating"]) == n - 1
    rejected = [f for f in a["summary"]["failures"] if f["what"] == "rejected"]
    assert rejected == [{"round": 3, "stage": "train", "partition": 4, "what": "rejected",
                         "reason": rejected[0]["reason"]}]
    assert "non-finite" in rejected[0]["reason"]
    assert np.isfinite(float(row["accuracy"]))  # the NaN update never reached the global model


def _npy_bytes(shape) -> int:
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, np.float32), allow_pickle=False)
    return len(buf.getvalue())


def test_bytes_are_counted_exactly(faulty_runs):
    """bytes = per array: key name + .npy serialisation (Flower's Array payload)."""
    from fedtiny.fl.state import experiment_state, config_json
    from fedtiny.trainer import TrainConfig, Trainer

    a, _ = faulty_runs
    state = experiment_state(config_json(a["cfg"]))
    params = Trainer(state.model, TrainConfig()).get_params()
    record = sum(len(f"layer{k}.weight") + _npy_bytes(w.shape) + len(f"layer{k}.bias") + _npy_bytes(b.shape)
                 for k, (w, b) in enumerate(params) if w.size)
    n = a["summary"]["clients"]
    for r in a["rows"][1:]:
        assert int(r["bytes_down"]) == 2 * n * record  # train + evaluate messages to every device
        # uplink: updates that arrived (the rejected NaN update arrived too; the raising client sent nothing)
        assert int(r["bytes_up"]) == (int(r["participating"]) + int(r["rejected"])) * record
    assert a["summary"]["bytes_up_total"] == sum(int(r["bytes_up"]) for r in a["rows"])


def test_results_directory(faulty_runs):
    a, _ = faulty_runs
    s = a["summary"]
    for key in ("initial_accuracy", "final_accuracy", "rounds", "clients", "bytes_up_total", "bytes_down_total",
                "wall_s", "seed"):
        assert key in s
    assert (a["dir"] / "config.yaml").exists() and (a["dir"] / "accuracy.png").stat().st_size > 5000
    assert s["initial_accuracy"] == float(a["rows"][0]["accuracy"])


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, cache_dir):
    return run([], tmp_path_factory.mktemp("default"), cache_dir)


def test_default_experiment_improves_on_the_field_devices(default_run):
    s = default_run["summary"]
    assert s["dataset"] == "watch" and s["clients"] == 12 and s["rounds"] == 10
    assert s["failed_total"] == 0 and s["rejected_total"] == 0
    assert s["final_accuracy"] > s["initial_accuracy"] + 0.03, (s["initial_accuracy"], s["final_accuracy"])


@pytest.fixture(scope="session")
def fleet_run(tmp_path_factory, cache_dir):
    """Digits with a deeper float suffix and three memory budgets spread over the candidates; the
    devices hold their updated weights in int8 (QAS steps)."""
    from fedtiny.budgets.memory import candidate_schemes, scheme_config
    from fedtiny.config import compose
    from fedtiny.fl.state import client_train_config, config_json, experiment_state
    from fedtiny.trainer import plan

    base = ["experiment=digits_quick", "model.trainable_layers=5", "rounds=2", f"cache_dir={cache_dir}",
            "budget.memory.precisions=[int8]"]
    cfg = compose(base)
    st = experiment_state(config_json(cfg))
    needs = sorted({plan(st.model, scheme_config(st.model, client_train_config(cfg), s.update, s.precision)).arena_bytes
                    for s in candidate_schemes(st.model, ("int8",))})
    kbs = [8 + (needs[i] + 1023) // 1024 for i in (0, len(needs) // 2, len(needs) - 1)]
    return run([*base[:3], base[4], f"budget.memory.sram_kb=[{','.join(map(str, kbs))}]"],
               tmp_path_factory.mktemp("fleet"), cache_dir)


def test_heterogeneous_fleet_aggregates_per_parameter(fleet_run):
    s, rows = fleet_run["summary"], fleet_run["rows"]
    schemes = {v["scheme"] for v in s["memory_schemes"].values()}
    assert len(schemes) >= 2, s["memory_schemes"]  # different budgets train different subsets
    assert {v["precision"] for v in s["memory_schemes"].values()} == {"int8"}
    assert s["failed_total"] == 0 and s["rejected_total"] == 0 and s["rounds"] == 2
    for r in rows[1:]:
        assert int(r["contributors_max"]) == s["clients"]  # the classifier: every device
        assert int(r["contributors_min"]) < s["clients"]  # deeper tensors: only the bigger budgets
    per_tensor = list(csv.DictReader(open(fleet_run["dir"] / "contributors.csv")))
    assert {row["tensor"] for row in per_tensor} >= {"layer4.weight", "layer4.bias"}
    assert s["final_accuracy"] > 0.3


def test_impossible_memory_budget_fails_before_the_run(tmp_path, cache_dir):
    from fedtiny.errors import ConfigError

    with pytest.raises(ConfigError, match="holds no update scheme"):
        run(["experiment=digits_quick", "model.trainable_layers=5", "budget.memory.sram_kb=[8.01]"], tmp_path, cache_dir)
    assert not (tmp_path / "metrics.csv").exists()
