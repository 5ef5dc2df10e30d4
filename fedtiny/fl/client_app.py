"""fedtiny's Flower ClientApp (Message API): a simulated MCU client running the C trainer.

The server's ConfigRecord carries the experiment config (``fedtiny-config``, JSON) and the
round's training settings; the client trains its float suffix on cached frozen-prefix
features and replies with its parameters and metrics (``num-examples``, ``train-loss``,
``train-accuracy``, ``partition-id``, ``arena-bytes``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtiny.fl.records import record_to_params
from fedtiny.fl.state import client_state, device_budget_kb, device_scheme, experiment_state, train_config_for
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
    scheme, _ = device_scheme(cfg_json, device_budget_kb(cfg, pid))
    tc = replace(train_config_for(cfg_json, pid), lr=float(conf["lr"]), momentum=float(conf["momentum"]),
                 weight_decay=float(conf["weight-decay"]), batch_size=int(conf["batch-size"]),
                 prox_mu=float(conf.get("proximal-mu", 0.0)))
    trainer = Trainer(experiment_state(cfg_json).model, tc)
    # a device loads the tensors it trains; the others stay as in its model file (its flash)
    trainer.set_params(record_to_params(msg.content["arrays"], trainer.get_params()), only_updated=True)
    stats = trainer.train_epochs(data.x_train, data.y_train, epochs=int(conf["epochs"]),
                                 seed=train_seed(int(cfg.seed), rnd, pid))
    metrics = MetricRecord({"num-examples": len(data.y_train), "train-loss": stats.loss,
                            "train-accuracy": stats.accuracy, "partition-id": pid,
                            "arena-bytes": trainer.arena_hwm})
    arrays, subset = partial_update(trainer)
    if _fault(cfg.faults.nan_partitions, cfg.faults.nan_rounds, pid, rnd):
        arrays = ArrayRecord({k: Array(np.full_like(a.numpy(), np.nan)) for k, a in arrays.items()})
    subset["scheme"] = scheme.name if scheme is not None else "all"
    return Message(RecordDict({"arrays": arrays, "metrics": metrics, "subset": ConfigRecord(subset)}), reply_to=msg)


def partial_update(trainer: Trainer) -> tuple[ArrayRecord, dict]:
    """The tensors the scheme updated; channel subsets travel compact, listed in the subset record."""
    arrays, subset = {}, {}
    model = trainer.model
    for k, (w, b) in enumerate(trainer.get_params()):
        kind, bias_on, channels = trainer.layer_update(k)
        layer = model.spec.layers[model.first_trainable + k]
        if kind == "all":
            arrays[f"layer{k}.weight"] = Array(np.ascontiguousarray(w))
        elif kind == "channels":
            axis = 2 if layer.type == "dwconv2d" else 0
            arrays[f"layer{k}.weight"] = Array(np.ascontiguousarray(np.take(w, channels, axis=axis)))
            subset[f"channels.layer{k}.weight"] = [int(c) for c in channels]
        if bias_on:
            arrays[f"layer{k}.bias"] = Array(np.ascontiguousarray(b))
    return ArrayRecord(arrays), subset


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
