"""The in-process simulation engine (fedtiny.engine.inprocess) and what it relies on.

* The same seed gives the same metrics.csv (wall time aside) with the in-process engine at 0, 1
  and 3 workers and with Flower's engine on Ray, for a run whose devices keep node state between
  rounds (error-feedback residuals, a draining battery), fail, send NaN and sample 6 of 10.
* The Grid on its own: a ClientApp that raises gives an error reply; a worker that dies fails the
  message it held, is started again and serves the next round; a reply later than the timeout
  is dropped, and the node answers the next message; nodes keep their state in their worker.
* The feature cache equals the trainer's own prefix features, is mapped read-only, is not
  recomputed when present, is recomputed when damaged, and is keyed by everything it depends on.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tests.conftest import run

STATEFUL = ["experiment=digits_quick", "rounds=4", "clients_per_round=6", "codec=q1_ef", "energy.battery_mj=5",
            "faults.raise_partitions=[2]", "faults.raise_rounds=[2]", "faults.nan_partitions=[5]",
            "faults.nan_rounds=[]"]


@pytest.fixture(scope="module")
def engines(tmp_path_factory, cache_dir):
    base = tmp_path_factory.mktemp("engines")
    out = {}
    for name, extra in [("inprocess-0", ["simulation.workers=0"]), ("inprocess-1", ["simulation.workers=1"]),
                        ("inprocess-3", ["simulation.workers=3"]), ("ray", ["simulation.backend=ray"])]:
        out[name] = run([*STATEFUL, *extra], base / name, cache_dir)
    return out


def _without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_every_engine_and_worker_count_gives_the_same_metrics(engines):
    reference = _without_wall(engines["ray"]["rows"])
    assert len(reference) == 5
    for name, result in engines.items():
        assert _without_wall(result["rows"]) == reference, name
        assert result["summary"]["failed_total"] >= 1 and result["summary"]["rejected_total"] >= 1
    rows = engines["ray"]["rows"]
    assert any(float(r["ef_residual_norm"] or 0) > 0 for r in rows[2:])  # node state carried between rounds
    assert any(int(r["declined"]) > 0 for r in rows)  # batteries drained across rounds (node state too)


def test_the_summary_records_the_engine(engines):
    assert engines["inprocess-3"]["summary"]["engine"] == {"backend": "inprocess", "workers": 3}
    assert engines["inprocess-0"]["summary"]["engine"] == {"backend": "inprocess", "workers": 0}
    assert engines["ray"]["summary"]["engine"]["backend"] == "ray"


# -- the Grid on its own ---------------------------------------------------------------------------


def _app() -> ClientApp:
    """Counts its messages in the node state; node 2 raises, node 3 dies on 'die', any node
    sleeps `sleep` s when asked."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        conf = msg.content["config"]
        if "sleep" in conf:
            time.sleep(float(conf["sleep"]))
        if pid == 2 and "raise" in conf:
            raise RuntimeError("device 2 is broken")
        if pid == 3 and "die" in conf:
            os._exit(7)
        seen = int(context.state["n"]["n"]) + 1 if "n" in context.state.metric_records else 1
        context.state["n"] = MetricRecord({"n": seen})
        return Message(RecordDict({"metrics": MetricRecord({"pid": pid, "seen": seen, "worker": os.getpid()})}),
                       reply_to=msg)

    return app


def _send(grid, nodes, timeout=30.0, **conf):
    msgs = [Message(RecordDict({"config": ConfigRecord(dict(conf))}), dst_node_id=n, message_type="query")
            for n in nodes]
    return grid.send_and_receive(msgs, timeout=timeout)


@pytest.fixture
def grid():
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedtiny.engine.inprocess import InProcessGrid

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    with InProcessGrid(_app(), 6, 2, lambda k: {"partition-id": k}) as g:
        yield g


def test_replies_errors_and_node_state(grid):
    nodes = list(grid.get_node_ids())
    first = _send(grid, nodes, **{"raise": 1})
    ok = {int(m.content["metrics"]["pid"]): m for m in first if not m.has_error()}
    errors = [m for m in first if m.has_error()]
    assert sorted(ok) == [0, 1, 3, 4, 5] and len(errors) == 1 and "device 2 is broken" in errors[0].error.reason
    assert errors[0].metadata.src_node_id == nodes[2]
    second = _send(grid, nodes)
    assert {int(m.content["metrics"]["pid"]): int(m.content["metrics"]["seen"]) for m in second} == \
        {0: 2, 1: 2, 2: 1, 3: 2, 4: 2, 5: 2}  # state stays with the node (2 raised before counting)
    workers = {int(m.content["metrics"]["pid"]): int(m.content["metrics"]["worker"]) for m in second}
    assert workers[0] == workers[2] == workers[4] != workers[1] == workers[3] == workers[5] != os.getpid()


def test_a_dead_worker_fails_its_message_and_comes_back(grid):
    nodes = list(grid.get_node_ids())
    replies = _send(grid, nodes, die=1)
    dead = [m for m in replies if m.has_error()]
    assert len(dead) == 1 and "worker died (exit code 7)" in dead[0].error.reason
    assert dead[0].metadata.src_node_id == nodes[3] and grid.restarts == 1
    again = _send(grid, nodes)
    assert sorted(int(m.content["metrics"]["pid"]) for m in again if not m.has_error()) == list(range(6))


def test_a_late_reply_is_dropped_and_the_node_answers_again(grid):
    nodes = list(grid.get_node_ids())
    t0 = time.monotonic()
    replies = _send(grid, nodes[:2], timeout=0.5, sleep=2.0)
    assert replies == [] and time.monotonic() - t0 < 1.5
    later = _send(grid, nodes[:2], timeout=30.0)
    assert sorted(int(m.content["metrics"]["pid"]) for m in later) == [0, 1]
    assert all(m.metadata.reply_to_message_id for m in later)


# -- the feature cache -------------------------------------------------------------------------------


def test_the_feature_cache(tmp_path, monkeypatch):
    from fedtiny.client import features as F
    from fedtiny.trainer import Model
    from fedtiny.trainer.demo import build_digits_model, load_digits_split

    x = np.asarray(load_digits_split(0)[0], np.float32)
    model = Model(build_digits_model(x, 0))
    want = model.prefix_features(model.quantize_input(x))  # the trainer's own prefix, in memory
    got = F.cached_features(tmp_path, model, x)
    assert isinstance(got, np.memmap) and not got.flags.writeable
    assert got.dtype == want.dtype and np.array_equal(got, want)
    files = list((tmp_path / "features").rglob("*.npy"))
    assert len(files) == 1 and not list((tmp_path / "features").rglob("*.tmp"))

    def boom(*_):
        raise AssertionError("recomputed")

    monkeypatch.setattr(F, "compute_features", boom)
    assert np.array_equal(F.cached_features(tmp_path, model, x), want)  # read, not recomputed
    monkeypatch.undo()
    files[0].write_bytes(files[0].read_bytes()[:100])  # a damaged file is computed again
    assert np.array_equal(F.cached_features(tmp_path, model, x), want)
    keys = {F.feature_key(model, x, 0), F.feature_key(model, x[:-1], 0), F.feature_key(model, x, 1),
            F.feature_key(model, x + np.float32(0.01), 0)}
    assert len(keys) == 4
