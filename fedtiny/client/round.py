"""One device's part in a round, as fedtiny's Flower ClientApp plays it (Message API).

A training message carries the run's identifier (``run-id``, see
:mod:`fedtiny.client.context`) and the round's settings (``server-round``, ``lr``,
``momentum``, ``weight-decay``, ``batch-size``, ``epochs``, and when they apply
``proximal-mu``, ``dp-clip``, ``dp-noise-std``, ``downlink-bits``): what a device needs to
receive for the round, not the experiment's config. The device decodes the broadcast, plans
its epochs under its energy budget, has a backend train (:class:`~fedtiny.client.simulated.SimulatedBackend`,
or a board's backend when the node holds a board) and replies with its update and metrics
(``num-examples``, ``train-loss``, ``train-accuracy``, ``partition-id``, ``arena-bytes``,
``ef-residual-norm``, energy and compute figures).

These functions take the run's :class:`~fedtiny.client.context.RunContext` explicitly; the
ClientApp (``fedtiny.engine.apps``) finds it and passes the board backend in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto  # pylint: disable=no-name-in-module

from fedtiny import _core
from fedtiny.budgets.energy import (Board, affordable_epochs, compute_mj, compute_seconds, round_energy,
                                    training_macs)
from fedtiny.client.backend import Backend, RoundTask
from fedtiny.client.context import RunContext
from fedtiny.client.records import expected_shapes, record_to_params
from fedtiny.client.simulated import SimulatedBackend
from fedtiny.trainer import TrainConfig, Trainer, codec
from fedtiny.trainer.updates import channel_axes

BoardBackends = Callable[[str, float], Backend]  # (bridge URL, timeout in s) -> the board's backend


def _partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


def train_seed(seed: int, server_round: int, partition_id: int) -> int:
    return (seed * 1_000_003 + server_round * 7_919 + partition_id) & 0xFFFFFFFF


def check_run(msg: Message, run: RunContext) -> None:
    """Refuse a message of another run: this process's config is not the server's."""
    sent = str(msg.content["config"].get("run-id", ""))
    if sent != run.run_id:
        raise ValueError(f"the server's run is {sent or 'unnamed'} but this node's config makes run {run.run_id}: "
                         f"start the node with the server's config (the same overrides and fedtiny version)")


def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition (device) this node holds; with ``node-state`` in the
    config, also hand over (``get``) or take back (``set``) the node's state (its error-feedback
    residual, its battery): how a server's checkpoint keeps simulated devices' state, and how a
    resumed run gives it back (a real device keeps its own in flash)."""
    conf = msg.content.config_records.get("config") or ConfigRecord({})
    answer = {"partition-id": _partition(context)}
    op = conf.get("node-state")
    if op == "get":
        state = recorddict_to_proto(context.state).SerializeToString()
        return Message(RecordDict({"metrics": MetricRecord(answer), "node-state": ConfigRecord({"state": state})}),
                       reply_to=msg)
    if op == "set":
        restored = recorddict_from_proto(RecordDictProto.FromString(bytes(conf["state"])))
        for key in list(context.state.keys()):
            del context.state[key]
        for key, record in restored.items():
            context.state[key] = record
        return Message(RecordDict({"metrics": MetricRecord(answer)}), reply_to=msg)
    if "num-partitions" in context.node_config:  # simulated nodes: the size of the federation
        answer["num-partitions"] = int(context.node_config["num-partitions"])
    return Message(RecordDict({"metrics": MetricRecord(answer)}), reply_to=msg)


def train(msg: Message, context: Context, run: RunContext, boards: BoardBackends | None = None) -> Message:
    """A training round of the device this node holds; `boards` makes the backend of a node
    that holds a board (None: every device is simulated)."""
    check_run(msg, run)
    conf: ConfigRecord = msg.content["config"]
    pid, rnd = _partition(context), int(conf["server-round"])
    cfg = run.cfg
    if _fault(cfg.faults.raise_partitions, cfg.faults.raise_rounds, pid, rnd):
        raise RuntimeError(f"injected fault: partition {pid} raises in round {rnd}")
    if _fault(cfg.faults.crash_partitions, cfg.faults.crash_rounds, pid, rnd):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)  # injected fault: the client's process dies (as on a segfault)
    data = run.device(pid)
    scheme, _ = run.device_scheme(pid)
    tc = replace(run.train_config(pid), lr=float(conf["lr"]), momentum=float(conf["momentum"]),
                 weight_decay=float(conf["weight-decay"]), batch_size=int(conf["batch-size"]),
                 prox_mu=float(conf.get("proximal-mu", 0.0)))
    model = run.model
    epochs, energy = _energy_plan(cfg, model, tc, len(data.y_train), int(conf["epochs"]), msg, context)
    if epochs == 0:  # the device cannot afford a single epoch this round: it declines
        return Message(RecordDict({"metrics": MetricRecord({"declined": 1, "partition-id": pid,
                                                            "battery-mj": energy.get("battery", -1.0)})}),
                       reply_to=msg)
    received = received_arrays(msg, Trainer(model, tc))
    key = (int(cfg.seed), rnd, pid)
    dp = (float(conf["dp-clip"]), float(conf["dp-noise-std"])) if "dp-clip" in conf else None
    seed = train_seed(int(cfg.seed), rnd, pid)
    url = board_url(cfg, pid, context)
    backend: Backend
    if url is not None:  # a real or emulated board behind its bridge trains this partition
        if boards is None:
            raise RuntimeError(f"partition {pid} is a board ({url}) but this ClientApp has no board backend")
        backend = boards(url, float(cfg.devices.timeout_s))
    else:
        backend = SimulatedBackend(data.x_train, data.y_train, context,
                                   nan=_fault(cfg.faults.nan_partitions, cfg.faults.nan_rounds, pid, rnd))
    res = backend.train(RoundTask(model, tc, received, epochs, seed, cfg.codec, key, dp))
    blobs, subset = res.blobs, res.subset
    macs = training_macs(model, tc, len(data.y_train), epochs)
    if _fault(cfg.faults.malformed_partitions, cfg.faults.malformed_rounds, pid, rnd):
        kinds = list(cfg.faults.malformed_kinds)
        kind = kinds[list(cfg.faults.malformed_partitions).index(pid) % len(kinds)]
        blobs, subset = malform(blobs, subset, str(kind), int(cfg.codec.max_update_bytes))
    metrics = MetricRecord({"num-examples": len(data.y_train), "train-loss": res.loss,
                            "train-accuracy": res.accuracy, "partition-id": pid,
                            "arena-bytes": res.arena_bytes, "ef-residual-norm": res.residual_norm,
                            "epochs-done": epochs, "energy-compute-mj": compute_mj(energy["board"], macs),
                            "compute-s": compute_seconds(energy["board"], macs),
                            "battery-mj": energy.get("battery", -1.0), "on-board": int(url is not None)})
    subset["scheme"] = scheme.name if scheme is not None else "all"
    record = ArrayRecord({k: Array(b) for k, b in blobs.items()})
    return Message(RecordDict({"arrays": record, "metrics": metrics, "subset": ConfigRecord(subset)}), reply_to=msg)


def board_url(cfg, pid: int, context: Context | None) -> str | None:
    """The bridge URL of the board that holds partition `pid`: the node's ``board-url`` (a
    deployed SuperNode started with --node-config "board-url='socket://...'"), else
    ``devices.urls`` of the experiment (board i holds partition ``devices.partitions[i]``), else
    None (simulated)."""
    if context is not None and context.node_config.get("board-url"):
        return str(context.node_config["board-url"])
    d = cfg.get("devices")
    if d is None or not d.urls:
        return None
    parts = list(d.partitions) or list(range(len(d.urls)))
    return str(d.urls[parts.index(pid)]) if pid in parts else None


def _energy_plan(cfg, model, tc, samples: int, epochs: int, msg: Message, context: Context) -> tuple[int, dict]:
    """Epochs this device trains this round under its energy budget (0: decline), and its board.
    The budget is energy.budget_mj and what is left of energy.battery_mj (kept in the node
    state); the round's cost uses the bytes just received (exact) and the update it will send
    (from the codec's format plus about 1.1 KB of framing, metrics and subset record)."""
    board = Board.from_cfg(cfg.board)
    out: dict = {"board": board}
    limits = [float(cfg.energy.budget_mj)] if cfg.energy.budget_mj is not None else []
    if cfg.energy.battery_mj is not None:
        state = context.state.metric_records.get("battery") if context is not None else None
        left = float(state["left-mj"]) if state is not None else float(cfg.energy.battery_mj)
        limits.append(left)
        out["battery"] = left
    if not limits:
        return epochs, out
    from fedtiny.budgets.memory import codec_bytes

    down = recorddict_to_proto(msg.content).ByteSize()
    up = codec_bytes(model, tc, int(cfg.codec.bits), bool(cfg.codec.per_channel))["tx_buffer"] + 1100
    period = float(cfg.energy.round_period_s)
    done = affordable_epochs(board, model, tc, samples, epochs, min(limits), up, down, period)
    if "battery" in out:
        spent = round_energy(board, training_macs(model, tc, samples, done), up if done else 0, down,
                             period)["total_mj"]
        out["battery"] = max(0.0, out["battery"] - spent)
        context.state["battery"] = MetricRecord({"left-mj": out["battery"]})
    return done, out


def received_arrays(msg: Message, trainer: Trainer) -> dict[str, np.ndarray]:
    """The broadcast model as float32 arrays; a quantized downlink is decoded by the device's C
    decoder (a malformed blob raises, so the client counts as failed)."""
    record = msg.content["arrays"]
    if int(msg.content["config"].get("downlink-bits", 32)) == 32:
        return {k: a.numpy() for k, a in record.items()}
    axes = channel_axes(trainer.model)
    shapes = expected_shapes(trainer.get_params())
    out = {}
    for key, a in record.items():
        if key not in shapes:
            raise ValueError(f"unexpected array {key} in the broadcast")
        shape = shapes[key]
        status, values, n, params = _core.codec_decode(np.ascontiguousarray(a.numpy(), np.uint8), int(np.prod(shape)))
        if status != 0 or n != int(np.prod(shape)) or params[2] != codec.layout_of(shape, axes[key]).channels:
            raise ValueError(f"broadcast {key}: {_core.status_name(status)} ({n} values, {params[2]} channels)")
        out[key] = values[:n].reshape(shape)
    return out


def malform(blobs: dict[str, np.ndarray], subset: dict, kind: str, max_bytes: int) -> tuple[dict, dict]:
    """A deliberately broken update (faults.malformed_*), to exercise the server's checks."""
    key = sorted(blobs)[-1]
    b = np.array(blobs[key], np.uint8)
    out = dict(blobs)
    subset = dict(subset)
    if kind == "truncated":
        out[key] = b[: max(1, b.size - 3)]
    elif kind == "bits":
        b[4] = 3  # not a supported width
        out[key] = b
    elif kind in ("nan_scale", "inf_scale"):
        if b[4] == 32:
            raise ValueError("malformed kinds nan_scale/inf_scale need codec.bits < 32 (float32 has no scale)")
        b[16:20] = np.frombuffer(np.array([np.nan if kind == "nan_scale" else np.inf], "<f4").tobytes(), np.uint8)
        out[key] = b
    elif kind == "subset":  # the subset record claims other channels than the blob carries
        carried = int(np.frombuffer(b[6:8].tobytes(), "<u2")[0])
        subset[f"channels.{key}"] = list(range(carried - 1)) if carried > 1 else [0, 1]
    else:  # oversize: a valid header followed by more bytes than the limit
        out[key] = np.concatenate([b, np.zeros(max_bytes + 1 - b.size if b.size <= max_bytes else 1, np.uint8)])
    return out, subset


def _fault(partitions, rounds, pid: int, rnd: int) -> bool:
    return pid in partitions and (not rounds or rnd in rounds)


def evaluate(msg: Message, context: Context, run: RunContext) -> Message:
    """Evaluate the broadcast model on the test split of the device this node holds."""
    check_run(msg, run)
    pid = _partition(context)
    data = run.device(pid)
    trainer = Trainer(run.model, TrainConfig())
    received = received_arrays(msg, trainer)
    trainer.set_params(record_to_params(ArrayRecord({k: Array(v) for k, v in received.items()}), trainer.get_params()))
    res = trainer.evaluate(data.x_test, data.y_test)
    metrics = MetricRecord({"num-examples": len(data.y_test), "loss": res.loss, "accuracy": res.accuracy,
                            "partition-id": pid})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def settings(cfg) -> dict:
    """The per-round training settings the server sends (besides the run id)."""
    c = cfg.client
    return {"lr": float(c.lr), "momentum": float(c.momentum), "weight-decay": float(c.weight_decay),
            "batch-size": int(c.batch_size), "epochs": int(c.epochs)}


__all__ = ["evaluate", "query", "settings", "train", "train_seed"]
