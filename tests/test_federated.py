"""Federated runs in Flower's simulation engine (real ServerApp/ClientApp on Ray)."""

from __future__ import annotations

import csv

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


def test_bytes_are_counted_exactly(faulty_runs):
    """float32 codec: payload = 4 B per parameter value sent (down: the global model, to every
    device for training and for evaluation; up: every update that arrived, the rejected NaN
    update included, the raising client sent nothing); overhead = the rest of each serialized
    RecordDict; per-client rows in traffic.csv add up to the round's columns."""
    from fedtiny.client.context import RunContext
    from fedtiny.trainer import TrainConfig, Trainer

    a, _ = faulty_runs
    state = RunContext(a["cfg"])
    values = sum(w.size + b.size for w, b in Trainer(state.model, TrainConfig()).get_params() if w.size)
    n = a["summary"]["clients"]
    traffic = list(csv.DictReader(open(a["dir"] / "traffic.csv")))
    for r in a["rows"][1:]:
        arrived = int(r["participating"]) + int(r["rejected"])
        assert int(r["bytes_down_payload"]) == 2 * n * 4 * values
        assert int(r["bytes_up_payload"]) == arrived * 4 * values
        for d in ("up", "down"):
            assert int(r[f"bytes_{d}"]) == int(r[f"bytes_{d}_payload"]) + int(r[f"bytes_{d}_overhead"])
            mine = [t for t in traffic if t["round"] == r["round"] and t["direction"] == d]
            assert sum(int(t["payload_bytes"]) for t in mine) == int(r[f"bytes_{d}_payload"])
            assert sum(int(t["overhead_bytes"]) for t in mine) == int(r[f"bytes_{d}_overhead"])
        assert 0 < int(r["bytes_up_overhead"]) < int(r["bytes_up_payload"])
        down_train = [t for t in traffic if t["round"] == r["round"] and t["direction"] == "down"
                      and t["stage"] == "train"]
        assert len(down_train) == n and len({t["overhead_bytes"] for t in down_train}) == 1  # one message each
    for k in ("bytes_up", "bytes_down", "bytes_up_payload", "bytes_down_overhead"):
        assert a["summary"][f"{k}_total"] == sum(int(r[k]) for r in a["rows"])


def test_a_message_carries_the_run_id_and_the_round_settings_only(faulty_runs):
    """What a device receives is the model plus what it needs for the round: every training and
    evaluation message has exactly the size of a RecordDict built here from the parameters, the
    run id and the round's settings, serialized by Flower's own protobuf code. The experiment's
    config (about 1.9 KB of JSON) is not in it."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
    from flwr.common.serde import recorddict_to_proto

    from fedtiny.client.context import RunContext
    from fedtiny.trainer import TrainConfig, Trainer

    a, _ = faulty_runs
    state = RunContext(a["cfg"])
    assert len(state.run_id) == 16 and int(state.run_id, 16) >= 0
    params = Trainer(state.model, TrainConfig()).get_params()
    arrays = ArrayRecord({f"layer{k}.{n}": Array(np.zeros(t.shape, np.float32))
                          for k, (w, b) in enumerate(params) if w.size for n, t in (("weight", w), ("bias", b))})
    c = a["cfg"].client
    traffic = list(csv.DictReader(open(a["dir"] / "traffic.csv")))
    for rnd in (1, 2, 3):
        config = {"run-id": state.run_id, "server-round": rnd}
        expected = {"evaluate": recorddict_to_proto(RecordDict({"arrays": arrays, "config": ConfigRecord(config)})),
                    "train": recorddict_to_proto(RecordDict({"arrays": arrays, "config": ConfigRecord({
                        **config, "lr": float(c.lr), "momentum": float(c.momentum),
                        "weight-decay": float(c.weight_decay), "batch-size": int(c.batch_size),
                        "epochs": int(c.epochs)})}))}
        for stage, proto in expected.items():
            sizes = {int(t["payload_bytes"]) + int(t["overhead_bytes"]) for t in traffic
                     if t["round"] == str(rnd) and t["direction"] == "down" and t["stage"] == stage}
            assert sizes == {proto.ByteSize()}, (stage, rnd)
            assert proto.ByteSize() < 4 * sum(w.size + b.size for w, b in params) + 1000  # no config inside


def test_a_node_with_another_config_refuses_the_message(faulty_runs):
    """A client whose config makes another run id (here: another seed) refuses the message,
    naming both runs, instead of training another experiment."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedtiny.client.context import RunContext, run_id_of, config_json
    from fedtiny.client.round import check_run

    a, _ = faulty_runs
    mine = RunContext(a["cfg"])
    other = a["cfg"].copy()
    other.seed = int(other.seed) + 1
    theirs = run_id_of(config_json(other))
    msg = Message(RecordDict({"config": ConfigRecord({"run-id": theirs})}), dst_node_id=1, message_type="train")
    with pytest.raises(ValueError, match=f"server's run is {theirs} but this node's config makes run {mine.run_id}"):
        check_run(msg, mine)
    check_run(Message(RecordDict({"config": ConfigRecord({"run-id": mine.run_id})}), dst_node_id=1,
                      message_type="train"), mine)
    moved = a["cfg"].copy()
    moved.cache_dir, moved.progress = "/elsewhere", not moved.progress  # where files live: not the run's identity
    assert run_id_of(config_json(moved)) == mine.run_id


def test_quantized_updates_and_malformed_blobs(codec_run):
    """4-bit updates with error feedback and an 8-bit downlink; in round 2 six devices send six
    kinds of malformed blobs: each is rejected with its reason and counted, and the run goes on."""
    from fedtiny.trainer.codec import blob_bytes, layout_of
    from fedtiny.client.context import RunContext
    from fedtiny.trainer import TrainConfig, Trainer

    s, rows = codec_run["summary"], codec_run["rows"]
    n = s["clients"]
    assert s["rounds"] == 3 and s["codec"] == {"bits": 4, "per_channel": True, "error_feedback": True,
                                               "rounding": "auto", "downlink_bits": 8}
    assert [int(r["rejected"]) for r in rows[1:]] == [0, 6, 0]
    assert int(rows[2]["participating"]) == n - 6
    reasons = {f["partition"]: f["reason"] for f in s["failures"] if f["what"] == "rejected"}
    expect = {0: "length", 2: "bits 3 invalid", 3: "scale", 4: "scale", 5: "values, expected", 6: "limit"}
    assert set(reasons) == set(expect)
    for pid, words in expect.items():
        assert words in reasons[pid], (pid, reasons[pid])
    assert all(np.isfinite(float(r["accuracy"])) for r in rows)
    assert float(rows[-1]["accuracy"]) > float(rows[0]["accuracy"])
    # error feedback: nothing carried in round 1, a residual carried from round 2 on (node state persists)
    assert float(rows[1]["ef_residual_norm"]) == 0.0 and float(rows[2]["ef_residual_norm"]) > 0
    # uplink payload of a valid update, from the format: scales + packed 4-bit codes per tensor
    state = RunContext(codec_run["cfg"])
    per_update, per_broadcast = 0, 0
    for w, b in Trainer(state.model, TrainConfig()).get_params():
        if w.size:
            per_update += blob_bytes(4, True, layout_of(w.shape, 0), w.size) - 16
            per_update += blob_bytes(4, False, layout_of(b.shape, 0), b.size) - 16
            per_broadcast += blob_bytes(8, True, layout_of(w.shape, 0), w.size) - 16
            per_broadcast += blob_bytes(8, False, layout_of(b.shape, 0), b.size) - 16
    assert int(rows[1]["bytes_up_payload"]) == n * per_update
    assert int(rows[3]["bytes_up_payload"]) == n * per_update
    assert all(int(r["bytes_down_payload"]) == 2 * n * per_broadcast for r in rows[1:])


def test_results_directory(faulty_runs):
    a, _ = faulty_runs
    s = a["summary"]
    for key in ("initial_accuracy", "final_accuracy", "rounds", "clients", "bytes_up_total", "bytes_down_total",
                "wall_s", "seed"):
        assert key in s
    assert (a["dir"] / "config.yaml").exists() and (a["dir"] / "accuracy.png").stat().st_size > 5000
    assert s["initial_accuracy"] == float(a["rows"][0]["accuracy"])


@pytest.fixture(scope="session")
def codec_run(tmp_path_factory, cache_dir):
    return run(["experiment=digits_quick", "rounds=3", "codec.bits=4", "codec.error_feedback=true", "codec.downlink_bits=8",
                "codec.max_update_bytes=65536", "faults.malformed_partitions=[0,2,3,4,5,6]",
                "faults.malformed_rounds=[2]",
                "faults.malformed_kinds=[truncated,bits,nan_scale,inf_scale,subset,oversize]"],
               tmp_path_factory.mktemp("codec"), cache_dir)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory, cache_dir):
    return run([], tmp_path_factory.mktemp("default"), cache_dir)


@pytest.mark.parametrize("page", ["README.md", "docs/user-guide.md"])
def test_the_docs_print_what_the_default_run_gives(default_run, page):
    """The default run's figures as the README and the user guide show them: the backbone's
    SHA-256 and accuracies, and the run's accuracies and bytes (the same on every machine)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / page).read_text()
    s, b = default_run["summary"], default_run["summary"]["backbone"]
    m = re.search(r"backbone imu_cnn \(sha256 ([0-9a-f]{16})\): field accuracy float ([0-9.]+) / int8 ([0-9.]+); "
                  r"vendor val float ([0-9.]+) / int8 ([0-9.]+)", text)
    assert m, f"{page} shows no backbone line"
    assert m.groups() == (b["model_sha256"][:16], *(f"{b[k]:.3f}" for k in (
        "float_field_accuracy", "int8_field_accuracy", "float_vendor_val_accuracy", "int8_vendor_val_accuracy")))
    m = re.search(r"accuracy ([0-9.]+) -> ([0-9.]+) over 10 rounds; 0 failed, 0 rejected; up ([0-9,]+) B, "
                  r"down ([0-9,]+) B", text)
    assert m, f"{page} shows no summary line"
    assert m.groups() == (f"{s['initial_accuracy']:.3f}", f"{s['final_accuracy']:.3f}", f"{s['bytes_up_total']:,}",
                          f"{s['bytes_down_total']:,}")


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
    from fedtiny.client.context import RunContext, train_config
    from fedtiny.trainer import plan

    base = ["experiment=digits_quick", "model.trainable_layers=5", "rounds=2", f"cache_dir={cache_dir}",
            "budget.memory.precisions=[int8]"]
    cfg = compose(base)
    st = RunContext(cfg)
    need = {s.name: plan(st.model, scheme_config(st.model, train_config(cfg), s.update, s.precision)).arena_bytes
            for s in candidate_schemes(st.model, ("int8",))}
    needs = sorted(set(need.values()))
    kbs = [8 + (needs[i] + 1023) // 1024 for i in (0, len(needs) // 2, len(needs) - 1)]
    # the largest budget trains the best-scoring scheme; it must not fit the smallest, or every
    # budget would train it (the scores come from the backbone, the same bytes on every machine)
    scores = st.scheme_scores()
    best = max(need, key=lambda name: (scores[name], -need[name]))
    assert need[best] > (kbs[0] - 8) * 1024, (best, need[best], kbs)
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


def test_impossible_budget_is_refused_before_the_contribution_analysis(tmp_path):
    """The audit's budget (1 KiB, nothing reserved) is refused from the plans alone: no
    contribution analysis (a second pretraining, minutes on the default task) runs first."""
    from fedtiny.config import compose
    from fedtiny.errors import ConfigError
    from fedtiny.server.prepare import prepare_output

    cache = tmp_path / "cache"
    cfg = compose(["experiment=digits_quick", "budget.memory.sram_kb=[1]", "budget.memory.reserve_kb=0",
                   f"cache_dir={cache}"])
    with pytest.raises(ConfigError, match="a 1024-byte training arena holds no update scheme"):
        prepare_output(cfg, tmp_path / "out", log=lambda *_: None)
    assert list(cache.glob("digits-*")) and not list(cache.glob("contribution-*"))


def test_impossible_memory_budget_fails_before_the_run(tmp_path, cache_dir):
    from fedtiny.errors import ConfigError

    with pytest.raises(ConfigError, match="holds no update scheme"):
        run(["experiment=digits_quick", "model.trainable_layers=5", "budget.memory.sram_kb=[8.01]"], tmp_path, cache_dir)
    assert not (tmp_path / "metrics.csv").exists()


@pytest.fixture(scope="session")
def dp_run(tmp_path_factory, cache_dir):
    """Central DP on digits: Poisson sampling (q = 0.5), 8-bit updates, and a max epsilon that
    allows 2 of the 3 configured rounds."""
    from fedtiny.budgets.privacy import Accounting, epsilon
    from fedtiny.config import compose, num_devices

    base = ["experiment=digits_quick", "rounds=3", "privacy=central", "privacy.noise_multiplier=0.9",
            "privacy.clip=0.3", "codec.bits=8"]
    n = num_devices(compose(base))
    k = n // 2
    a = Accounting(q=k / n, rounds=3, delta=1e-5)
    cap = 0.5 * (epsilon(0.9, a, 2) + epsilon(0.9, a, 3))
    return run([*base, f"clients_per_round={k}", f"privacy.max_epsilon={cap}"], tmp_path_factory.mktemp("dp"),
               cache_dir) | {"n": n, "k": k}


def test_central_dp_run_clips_accounts_and_stops_at_the_budget(dp_run):
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant

    s, rows = dp_run["summary"], dp_run["rows"]
    p = s["privacy"]
    assert p["mode"] == "central" and p["rounds_allowed"] == 2 and p["stopped_by_budget"]
    assert "above privacy.max_epsilon" in p["stop_reason"] and s["rounds"] == 2
    q = dp_run["k"] / dp_run["n"]
    for r in rows[1:]:
        t = int(r["round"])
        event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(0.9)), t)
        want = pld_privacy_accountant.PLDAccountant().compose(event).get_epsilon(1e-5)
        assert float(r["epsilon"]) == pytest.approx(want, rel=1e-5)
        if int(r["participating"]):
            assert 0 < float(r["update_norm_max"]) <= 0.3 * (1 + 1e-6)  # every decoded update within the clip
    assert p["epsilon_without_amplification"] > p["epsilon"]
    assert all(np.isfinite(float(r["accuracy"])) for r in rows)
