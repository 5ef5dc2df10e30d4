"""What every fedtiny strategy changes in its Flower strategy: ``FedtinyStrategy``, a mixin placed
before the Flower class, overrides sampling and the handling of replies; the maths stay Flower's:

* clients are sampled by partition id with a seeded generator (node ids are random in
  simulation), so the same seed samples the same devices;
* replies are sorted by partition id before aggregation, so sums run in a fixed order;
* every update is validated (keys, declared channel subsets, shapes, dtype, finite values,
  example count); failed replies and rejected updates are counted and left out, never fatal;
* updates may be partial (sparse update schemes, heterogeneous fleets): fedtiny averages each
  output channel over the clients that updated it (``fedtiny.server.aggregate.masked_mean``), then
  every valid reply carries that mean into Flower's own step, so FedAvg/FedProx return it and
  FedAdam applies its server optimizer to it;
* with ``codec.downlink_bits < 32`` the broadcast model travels encoded too; devices start from
  the decoded model, so an update is rebuilt as decoded global + change, while channels nobody
  updated keep the server's exact values;
* updates arrive encoded (``fedtiny.trainer.codec``): each tensor blob is validated (header,
  bits, lengths, declared subset, finite scales, size limit) and decoded before the checks
  above; a malformed blob rejects the reply with its reason;
* with ``privacy.mode=central`` the per-channel weighted mean becomes DP-FedAvg's noisy sum over
  fixed denominators (``fedtiny.budgets.privacy``); with Poisson sampling each device joins a
  round independently with probability q;
* bytes are counted exactly per client and message: payload (parameter data: float32 values
  down, encoded scales and codes up) and overhead (everything else in the serialized
  RecordDict: blob headers, array and record framing, keys, metrics, config).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from fedtiny.budgets.privacy import noisy_sum_mean, update_norm
from fedtiny.server.aggregate import masked_mean
from fedtiny.server.checkpoint import kill_point
from fedtiny.trainer.updates import parse_update
from fedtiny.trainer.codec import decode, decode_update, encode, layout_of, payload_bytes, tensor_key
from fedtiny.server.recorder import RoundLog


def weighted_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean of the loss/accuracy metrics of the replies (in the given order)."""
    weights = np.array([float(r["metrics"][weight_key]) for r in records])
    out = {weight_key: int(weights.sum())}
    for key in ("train-loss", "train-accuracy", "loss", "accuracy", "ef-residual-norm"):
        if all(key in r["metrics"] for r in records):
            values = np.array([float(r["metrics"][key]) for r in records])
            out[key] = float((weights * values).sum() / weights.sum())
    return MetricRecord(out)


class FedtinyStrategy:
    """Mixin for a Flower message-based strategy (see the module docstring)."""

    def setup(self, node_of: dict[int, int], shapes: dict, axes: dict, seed: int, clients_per_round: int,
              log: RoundLog, max_update_bytes: int = 4 << 20, downlink_bits: int = 32,
              privacy: dict | None = None, denominators: dict | None = None) -> None:
        self.max_update_bytes = max_update_bytes
        self.downlink_bits = downlink_bits
        self.privacy = privacy or {"mode": "off"}
        self.denominators = denominators or {}
        self.axes = axes
        self.node_of = dict(node_of)  # partition id -> node id
        self.pid_of = {n: p for p, n in node_of.items()}
        self.shapes = shapes
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.round_log = log

    # what a Flower server optimiser carries from round to round (FedAdam/FedYogi/FedAdagrad: m_t
    # and v_t; FedAvgM: its momentum): a checkpoint keeps it (fedtiny.server.checkpoint)
    SERVER_STATE = ("m_t", "v_t", "momentum_vector")

    def server_state(self) -> dict[str, np.ndarray]:
        """The server optimiser's arrays as ``name/key`` (empty for FedAvg and FedProx)."""
        out = {}
        for name in self.SERVER_STATE:
            for key, value in (getattr(self, name, None) or {}).items():
                out[f"{name}/{key}"] = np.asarray(value)
        return out

    def load_server_state(self, arrays: dict[str, np.ndarray]) -> None:
        for name in self.SERVER_STATE:
            part = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.split("/", 1)[0] == name}
            if part:
                setattr(self, name, part)

    def sample(self, server_round: int) -> list[int]:
        pids = sorted(self.node_of)
        k = self.clients_per_round or len(pids)
        rng = np.random.default_rng([self.seed, server_round])
        if self.privacy["mode"] != "off" and self.privacy.get("sampling") == "poisson" and k < len(pids):
            chosen = [p for p, u in zip(pids, rng.random(len(pids))) if u < k / len(pids)]  # Poisson sampling
        else:
            chosen = sorted(rng.choice(pids, size=min(k, len(pids)), replace=False))
        return [self.node_of[int(p)] for p in chosen]

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, kind: str) -> list[Message]:
        config["server-round"] = server_round
        nodes = self.sample(server_round) if kind == MessageType.TRAIN else [self.node_of[p] for p in sorted(self.node_of)]
        if self.downlink_bits < 32:
            arrays, reference = self._encode_downlink(server_round, arrays)
            config["downlink-bits"] = self.downlink_bits
            payload = sum(payload_bytes(int(a.numpy().size)) for a in arrays.values())
            if kind == MessageType.TRAIN:
                self.reference_arrays = reference
        else:
            payload = sum(int(a.numpy().nbytes) for a in arrays.values())
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        total = recorddict_to_proto(record).ByteSize()
        stage = "train" if kind == MessageType.TRAIN else "evaluate"
        self.round_log.sent(stage, [self.pid_of[n] for n in nodes], payload, total - payload)
        return self._construct_messages(record, nodes, kind)

    def _encode_downlink(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, dict]:
        """The broadcast model quantized like an update (per-channel scales for weights, one
        scale for biases, stochastic rounding keyed by the round), and what devices decode."""
        blobs, decoded = {}, {}
        for index, key in enumerate(sorted(arrays.keys())):
            g = arrays[key].numpy()
            layout = layout_of(g.shape, self.axes[key])
            blob = encode(g, self.downlink_bits, key.endswith(".weight"), layout,
                          tensor_key(self.seed, server_round, 0xFFFF, index))
            blobs[key] = Array(blob)
            decoded[key] = decode(blob, g.size, layout)[0].reshape(g.shape)
        return ArrayRecord(blobs), decoded

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.global_arrays = {k: a.numpy() for k, a in arrays.items()}
        self.reference_arrays = self.global_arrays  # what devices start from (decoded downlink, if quantized)
        if hasattr(self, "current_arrays"):  # FedOpt family keeps the round's starting point
            self.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        if hasattr(self, "proximal_mu"):
            config["proximal-mu"] = float(self.proximal_mu)
        if self.privacy["mode"] != "off":  # what the devices' clipping (and local noise) need
            config["dp-clip"] = float(self.privacy["clip"])
            z = float(self.privacy["noise_multiplier"])
            config["dp-noise-std"] = z * float(self.privacy["clip"]) if self.privacy["mode"] == "local" else 0.0
        return self._messages(server_round, arrays, config, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, MessageType.EVALUATE)

    def _sorted_valid(self, kind: str, replies: Iterable[Message]) -> list[tuple[Message, dict | None]]:
        """Valid replies sorted by partition id, each with its parsed update (None for evaluate)."""
        valid, failed, rejected, traffic = [], [], [], []
        for msg in replies:
            pid = self.pid_of.get(msg.metadata.src_node_id, -1)
            if msg.has_error():
                failed.append((pid, msg.error.reason))
                continue
            content = msg.content
            reason, parsed, payload = None, None, 0
            metrics = content.metric_records.get("metrics")
            if kind == MessageType.TRAIN and metrics is not None and int(metrics.get("declined", 0)):
                traffic.append((pid, 0, recorddict_to_proto(content).ByteSize()))
                self.round_log.declined(pid)  # energy budget: the device sat this round out
                continue
            if kind == MessageType.TRAIN:
                if self.arrayrecord_key not in content.array_records:
                    reason = "no parameters in the reply"
                else:
                    record = content.array_records[self.arrayrecord_key]
                    subset = dict(content.config_records.get("subset") or {})
                    try:
                        blobs = {k: a.numpy() for k, a in record.items()}
                    except Exception as err:  # undecodable payload
                        blobs, reason = {}, f"undecodable arrays ({type(err).__name__})"
                    payload = sum(payload_bytes(int(b.nbytes)) for b in blobs.values())
                    if reason is None and not blobs:
                        reason = "no parameters in the update"
                    if reason is None:
                        arrays, reason = decode_update(blobs, subset, self.shapes, self.axes, self.reference_arrays,
                                                       self.max_update_bytes)
                    if reason is None:
                        parsed, reason = parse_update(arrays, subset, self.shapes, self.axes)
            traffic.append((pid, payload, recorddict_to_proto(content).ByteSize() - payload))
            if reason is None and (metrics is None or not float(metrics.get(self.weighted_by_key, 0)) > 0):
                reason = f"missing or non-positive '{self.weighted_by_key}'"
            if reason is not None:
                rejected.append((pid, reason))
                continue
            valid.append((pid, msg, parsed))
            if kind == MessageType.TRAIN and int(metrics.get("on-board", 0)):
                self.round_log.row["on_board"] += 1  # trained on a real or emulated board
            if kind == MessageType.TRAIN and "energy-compute-mj" in metrics:
                self.round_log.compute(pid, float(metrics["energy-compute-mj"]), float(metrics["compute-s"]))
        valid.sort(key=lambda item: item[0])
        self.round_log.received(kind, [p for p, _, _ in valid], failed, rejected, sorted(traffic))
        return [(m, parsed) for _, m, parsed in valid]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = self._sorted_valid(MessageType.TRAIN, replies)
        kill_point("aggregate", server_round)  # a crash while aggregating (tests)
        if not valid:
            return None, None  # no usable update: the global model stays as it was
        self.round_log.row["update_norm_max"] = round(max(update_norm(p, self.reference_arrays, self.axes)
                                                          for _, p in valid), 6)
        if self.privacy["mode"] == "central":
            rng = np.random.default_rng([self.seed, server_round, 0xD9])
            mean, contributors = noisy_sum_mean(self.reference_arrays, self.global_arrays, [p for _, p in valid],
                                                self.axes, float(self.privacy["clip"]),
                                                float(self.privacy["noise_multiplier"]), self.denominators, rng)
        else:
            updates = [(float(m.content["metrics"][self.weighted_by_key]), parsed) for m, parsed in valid]
            mean, contributors = masked_mean(self.global_arrays, updates, self.axes)
        self.round_log.contributors(contributors)
        merged = ArrayRecord({k: Array(v) for k, v in mean.items()})
        for m, _ in valid:
            m.content[self.arrayrecord_key] = merged
        arrays, metrics = super().aggregate_train(server_round, [m for m, _ in valid])
        if arrays is not None:  # a server optimizer (FedAdam) computes in float64; the model is float32
            arrays = ArrayRecord({k: Array(np.asarray(a.numpy(), dtype=self.global_arrays[k].dtype))
                                  for k, a in arrays.items()})
        self.round_log.train_metrics(metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid = [m for m, _ in self._sorted_valid(MessageType.EVALUATE, replies)]
        metrics = super().aggregate_evaluate(server_round, valid) if valid else None
        self.round_log.federated_eval(metrics)
        return metrics



def common_args() -> dict:
    """Flower's arguments every fedtiny strategy shares: fedtiny samples and counts itself."""
    return dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
                min_available_nodes=1, train_metrics_aggr_fn=weighted_metrics, evaluate_metrics_aggr_fn=weighted_metrics)
