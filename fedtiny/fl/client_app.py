"""fedtiny's Flower ClientApp (Message API): a simulated MCU client running the C trainer.

The server's ConfigRecord carries the experiment config (``fedtiny-config``, JSON) and the
round's training settings; the client trains its float suffix on cached frozen-prefix
features and replies with its update and metrics (``num-examples``, ``train-loss``,
``train-accuracy``, ``partition-id``, ``arena-bytes``, ``ef-residual-norm``).

The update is what a board would send: for every tensor the scheme trained, the change
``w_local - w_global`` (channel subsets compact, listed in the ``subset`` ConfigRecord),
encoded by the C encoder (``fedtiny.fl.codec``, ``ft_codec.h``) into one uint8 blob per tensor.
With error feedback the device keeps the rounding residual in its node state between rounds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_to_proto

from fedtiny import _core
from fedtiny.budgets.energy import (Board, affordable_epochs, compute_mj, compute_seconds, round_energy,
                                    training_macs)
from fedtiny.fl import codec
from fedtiny.fl.aggregate import channel_axes
from fedtiny.fl.records import expected_shapes, record_to_params
from fedtiny.fl.rounds import RoundResult, partial_update
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
    answer = {"partition-id": _partition(context)}
    if "num-partitions" in context.node_config:  # simulated nodes: the size of the federation
        answer["num-partitions"] = int(context.node_config["num-partitions"])
    return Message(RecordDict({"metrics": MetricRecord(answer)}), reply_to=msg)


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
    model = experiment_state(cfg_json).model
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
    if url is not None:  # a real or emulated board behind its bridge trains this partition
        from fedtiny.devices.backend import board_round

        res = board_round(url, model, tc, received, epochs, seed, cfg.codec, key, dp, float(cfg.devices.timeout_s))
    else:
        res = simulated_round(model, tc, received, data.x_train, data.y_train, epochs, seed, cfg.codec, key, dp,
                              context, nan=_fault(cfg.faults.nan_partitions, cfg.faults.nan_rounds, pid, rnd))
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


def simulated_round(model, tc: TrainConfig, received: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                    epochs: int, seed: int, codec_cfg, key: tuple[int, int, int], dp: tuple[float, float] | None,
                    context: Context | None, nan: bool = False) -> RoundResult:
    """One device's round in simulation: load the broadcast values of the tensors the scheme
    trains (the others stay as in its model file, its flash), train, and encode the change
    w_local - w_global with the C encoder (or the DP encoder when dp = (clip, noise std))."""
    trainer = Trainer(model, tc)
    trainer.set_params(record_to_params(ArrayRecord({k: Array(v) for k, v in received.items()}), trainer.get_params()),
                       only_updated=True)
    stats = trainer.train_epochs(x, y, epochs=epochs, seed=seed)
    arrays, subset = partial_update(trainer)
    axes = channel_axes(trainer.model)
    deltas = {}
    for name, local in arrays.items():
        g = received[name]
        channels = subset.get(f"channels.{name}")
        if channels is not None:
            g = np.take(g, channels, axis=axes[name])
        deltas[name] = (local - g).astype(np.float32)
    if nan:
        deltas = {k: np.full_like(d, np.nan) for k, d in deltas.items()}
    if dp is not None:  # differential privacy: clip the quantized update (and add local noise) in C
        return RoundResult(encode_private(deltas, axes, codec_cfg, key, *dp), subset, stats.loss, stats.accuracy,
                           trainer.arena_hwm)
    blobs, residual_norm = encode_update(deltas, axes, codec_cfg, key, context)
    return RoundResult(blobs, subset, stats.loss, stats.accuracy, trainer.arena_hwm, residual_norm)


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


def encode_update(deltas: dict[str, np.ndarray], axes: dict[str, int], codec_cfg, key_parts: tuple[int, int, int],
                  context: Context | None) -> tuple[dict[str, np.ndarray], float]:
    """Encode each tensor's change with the device's C encoder. Weights use per-channel scales
    if configured, biases one scale per tensor; rounding is deterministic with error feedback
    (``codec.rounding=auto``) or as configured. With error feedback the residual of each tensor
    lives in ``context.state['ef-residual']`` between rounds. Returns the blobs and the norm of
    the residual carried into this update (0 without error feedback or in a device's first round)."""
    bits, ef = int(codec_cfg.bits), bool(codec_cfg.error_feedback)
    nearest = codec_cfg.rounding == "nearest" or (codec_cfg.rounding == "auto" and ef)
    stored = {}
    if ef and context is not None and "ef-residual" in context.state.array_records:
        stored = {k: a.numpy() for k, a in context.state.array_records["ef-residual"].items()}
    blobs, kept, carried = {}, {}, 0.0
    for index, key in enumerate(sorted(deltas)):
        d = deltas[key]
        residual = None
        if ef:
            r = stored.get(key)
            residual = np.array(r, np.float32).reshape(-1) if r is not None and r.shape == d.shape else \
                np.zeros(d.size, np.float32)
            carried += float(np.sum(residual.astype(np.float64) ** 2))
        per_channel = bool(codec_cfg.per_channel) and key.endswith(".weight")
        blobs[key] = codec.encode(d, bits, per_channel, codec.layout_of(d.shape, axes[key]),
                                  codec.tensor_key(*key_parts, index), residual, nearest)
        if residual is not None:
            kept[key] = residual.reshape(d.shape)
    if ef and context is not None:
        context.state["ef-residual"] = ArrayRecord({k: Array(v) for k, v in kept.items()})
    return blobs, float(np.sqrt(carried))


def encode_private(deltas: dict[str, np.ndarray], axes: dict[str, int], codec_cfg, key_parts: tuple[int, int, int],
                   clip: float, noise_std: float) -> dict[str, np.ndarray]:
    """Encode the whole update with the device's C routine for DP (``ft_codec_encode_update``):
    clip to L2 norm `clip` over all tensors so that the *decoded* update stays within it, after
    adding N(0, noise_std^2) per value when noise_std > 0 (local DP)."""
    bits = int(codec_cfg.bits)
    nearest = codec_cfg.rounding == "nearest"
    keys = sorted(deltas)
    tensors = []
    for index, key in enumerate(keys):
        d = np.ascontiguousarray(deltas[key], np.float32).reshape(-1)
        layout = codec.layout_of(deltas[key].shape, axes[key])
        per_channel = bool(codec_cfg.per_channel) and key.endswith(".weight")
        tensors.append((bits, int(per_channel), layout.channels, int(layout.channel_last), int(nearest), d,
                        codec.tensor_key(*key_parts, index)))
    status, blobs, _, _ = _core.codec_encode_update(tensors, clip, noise_std, codec.tensor_key(*key_parts, 0xD9))
    if status != 0:
        raise ValueError(f"DP encoding failed: {_core.status_name(status)}")
    return dict(zip(keys, blobs))


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


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    conf: ConfigRecord = msg.content["config"]
    cfg_json = str(conf["fedtiny-config"])
    pid = _partition(context)
    data = client_state(cfg_json, pid)
    trainer = Trainer(experiment_state(cfg_json).model, TrainConfig())
    received = received_arrays(msg, trainer)
    trainer.set_params(record_to_params(ArrayRecord({k: Array(v) for k, v in received.items()}), trainer.get_params()))
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
