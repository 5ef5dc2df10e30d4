"""fedtiny's Flower ClientApp (Message API): a simulated MCU client running the C trainer.

The server's ConfigRecord carries the experiment config (``fedtiny-config``, JSON) and the
round's training settings; the client trains its float suffix on cached frozen-prefix
features and replies with its parameters and metrics (``num-examples``, ``train-loss``,
``train-accuracy``, ``partition-id``, ``arena-bytes``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtiny.fl.records import params_to_record, record_to_params
from fedtiny.fl.state import client_state, experiment_state
from fedtiny.trainer import TrainConfig, Trainer

app = ClientApp()


def _partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


def train_seed(seed: int, server_round: int, partition_id: int) -> int:
    return (seed * 1_000_003 + server_round * 7_919 + partition_id) & 0xFFFFFFFF


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition (device) this node holds."""
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": _partition(context)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    conf: ConfigRecord = msg.content["config"]
    cfg_json = str(conf["fedtiny-config"])
    pid, rnd = _partition(context), int(conf["server-round"])
    cfg = experiment_state(cfg_json).cfg
    if _fault(cfg.faults.raise_partitions, cfg.faults.raise_rounds, pid, rnd):
        raise RuntimeError(f"injected fault: partition {pid} raises in round {rnd}")
    data = client_state(cfg_json, pid)
    tc = TrainConfig(lr=float(conf["lr"]), momentum=float(conf["momentum"]), weight_decay=float(conf["weight-decay"]),
                     batch_size=int(conf["batch-size"]), prox_mu=float(conf.get("proximal-mu", 0.0)))
    trainer = Trainer(experiment_state(cfg_json).model, tc)
    trainer.set_params(record_to_params(msg.content["arrays"], trainer.get_params()))
    stats = trainer.train_epochs(data.x_train, data.y_train, epochs=int(conf["epochs"]),
                                 seed=train_seed(int(cfg.seed), rnd, pid))
    metrics = MetricRecord({"num-examples": len(data.y_train), "train-loss": stats.loss,
                            "train-accuracy": stats.accuracy, "partition-id": pid,
                            "arena-bytes": trainer.arena_hwm})
    params = trainer.get_params()
    if _fault(cfg.faults.nan_partitions, cfg.faults.nan_rounds, pid, rnd):
        params = [(np.full_like(w, np.nan), b) for w, b in params]
    return Message(RecordDict({"arrays": params_to_record(params), "metrics": metrics}), reply_to=msg)


def _fault(partitions, rounds, pid: int, rnd: int) -> bool:
    return pid in partitions and (not rounds or rnd in rounds)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    conf: ConfigRecord = msg.content["config"]
    cfg_json = str(conf["fedtiny-config"])
    pid = _partition(context)
    data = client_state(cfg_json, pid)
    trainer = Trainer(experiment_state(cfg_json).model, TrainConfig())
    trainer.set_params(record_to_params(msg.content["arrays"], trainer.get_params()))
    res = trainer.evaluate(data.x_test, data.y_test)
    metrics = MetricRecord({"num-examples": len(data.y_test), "loss": res.loss, "accuracy": res.accuracy,
                            "partition-id": pid})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def settings(cfg) -> dict:
    """The per-round training settings the server sends (besides the config JSON)."""
    c = cfg.client
    return {"lr": float(c.lr), "momentum": float(c.momentum), "weight-decay": float(c.weight_decay),
            "batch-size": int(c.batch_size), "epochs": int(c.epochs)}


__all__ = ["app", "settings", "train_seed"]
