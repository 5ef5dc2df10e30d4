"""The server's side of a run, on any Flower ``Grid``.

:func:`run_server` waits for the configured number of devices (taken from the config, not from
the first ``get_node_ids()``), asks each node which partition it holds, then runs the strategy
for ``rounds`` rounds: server-side evaluation of the global model on held-out field data
before the first round and after each round, federated evaluation on the clients' test
splits, and one metrics row per round. Every message names the run by its id; the training
messages add the round's settings (:func:`fedtiny.client.round.settings`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedtiny.budgets.energy import Board
from fedtiny.config import num_devices
from fedtiny.errors import ConfigError, RunFailed
from fedtiny.models.nets import model_name
from fedtiny.client.context import RunContext
from fedtiny.client.records import expected_shapes, params_to_record, record_to_params
from fedtiny.client.round import settings
from fedtiny.server.prepare import int8_drop, int8_warning
from fedtiny.server.checkpoint import Checkpoint
from fedtiny.server.recorder import RunRecorder
from fedtiny.server.rounds import RoundLoop
from fedtiny.server.strategies import build_strategy
from fedtiny.trainer import TrainConfig, Trainer, plan
from fedtiny.trainer.updates import channel_axes


def wait_for_nodes(grid: Grid, expected: int, timeout_s: float) -> list[int]:
    """The node ids once `expected` nodes are connected. A simulated federation (its nodes know
    ``num-partitions``) smaller than the experiment fails at once, naming the fix."""
    deadline = time.monotonic() + timeout_s
    asked: set[int] = set()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        new = [n for n in nodes if n not in asked]
        if new:
            asked.update(new)
            size = _federation_size(grid, new[:1])
            if size is not None and size < expected:
                raise ConfigError(
                    f"the federation has {size} simulated SuperNodes but the experiment has {expected} devices: "
                    f"run it with flwr run . --federation-config \"num-supernodes={expected}\"")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {expected} devices connected within {timeout_s:.0f} s")
        time.sleep(0.2)


def _federation_size(grid: Grid, nodes: list[int]) -> int | None:
    """``num-partitions`` from a simulated node's config (None for a deployed SuperNode)."""
    msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in nodes]
    for reply in grid.send_and_receive(msgs, timeout=60.0):
        if not reply.has_error() and "num-partitions" in reply.content["metrics"]:
            return int(reply.content["metrics"]["num-partitions"])
    return None


def partition_map(grid: Grid, nodes: list[int], run_id: str, timeout_s: float) -> dict[int, int]:
    """partition id -> node id, from a query to every node (nodes that do not answer are left out)."""
    msgs = [Message(RecordDict({"config": ConfigRecord({"run-id": run_id})}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in nodes]
    out = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout_s):
        if not reply.has_error():
            out[int(reply.content["metrics"]["partition-id"])] = reply.metadata.src_node_id
    return out


def run_server(grid: Grid, state: RunContext, out_dir: Path, engine: dict | None = None,
               resume: Checkpoint | None = None, counters: Callable[[], dict] | None = None, log=print) -> dict:
    """Run the federation on `grid` and write its results into `out_dir`; returns the summary.
    `engine` (backend, workers) goes into the summary as it is; `counters()` gives the restarts
    and reconnects of the run's processes and links so far (summary ``restarts``). With `resume`
    the run continues after that checkpoint's round (:mod:`fedtiny.server.rounds`)."""
    cfg, model = state.cfg, state.model
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    x_test = state.features(state.task.server_test.x)
    y_test = state.task.server_test.y.astype(np.uint8)
    evaluator = Trainer(model, TrainConfig())
    template = evaluator.get_params()

    recorder = RunRecorder(out_dir, int(cfg.rounds), progress=bool(cfg.progress))

    def evaluate_fn(server_round: int, arrays):
        evaluator.set_params(record_to_params(arrays, template))
        res = evaluator.evaluate(x_test, y_test)
        recorder.server_eval(server_round, res.accuracy, res.loss)
        return None

    try:
        nodes = wait_for_nodes(grid, num_devices(cfg), float(cfg.simulation.timeout_s))
        node_of = partition_map(grid, nodes, state.run_id, float(cfg.simulation.timeout_s))
        strategy = build_strategy(cfg)
        privacy = state.privacy_plan()
        denominators = state.dp_denominators(expected_shapes(template), channel_axes(model)) \
            if privacy["mode"] == "central" else None
        recorder.epsilons = privacy.get("epsilon_per_round", [])
        recorder.energy = (Board.from_cfg(cfg.board), float(cfg.energy.round_period_s))
        strategy.setup(node_of, expected_shapes(template), channel_axes(model), int(cfg.seed),
                       int(cfg.clients_per_round), recorder.log, int(cfg.codec.max_update_bytes),
                       int(cfg.codec.downlink_bits), privacy, denominators)
        rounds = int(privacy.get("rounds_allowed", cfg.rounds))
        train_config = ConfigRecord({"run-id": state.run_id, **settings(cfg)})
        loop = RoundLoop(grid, strategy, state, recorder, out_dir, float(cfg.simulation.timeout_s), counters, log)
        loop.run_rounds(params_to_record(template), rounds, train_config, ConfigRecord({"run-id": state.run_id}),
                        evaluate_fn, resume)
    finally:
        recorder.close()
    if loop.checkpoint_bytes:
        log(f"checkpoints: the last {loop.checkpoint_bytes[-1]:,} B, written in {1e3 * np.mean(loop.checkpoint_seconds):.1f} ms "
            f"on average (max {1e3 * max(loop.checkpoint_seconds):.1f} ms), in {out_dir / 'checkpoints'}")
    summary = recorder.finish({
        "clients": len(state.task.clients), "clients_answering": len(node_of), "seed": int(cfg.seed),
        "dataset": cfg.dataset.name, "strategy": cfg.strategy.name, "model": model_name(cfg.model),
        "trainable_parameters": evaluator.plan.param_count,
        "client_arena_bytes": plan(model, TrainConfig(lr=float(cfg.client.lr), momentum=float(cfg.client.momentum),
                                                      batch_size=int(cfg.client.batch_size),
                                                      prox_mu=float(cfg.strategy.get("proximal_mu", 0.0)))).arena_bytes,
        "backbone": state.backbone.report,
        "int8_drop": round(int8_drop(state.backbone.report), 6),
        "int8_warning": int8_warning(state.backbone.report, float(cfg.model.int8_max_drop)),
        "codec": {"bits": int(cfg.codec.bits), "per_channel": bool(cfg.codec.per_channel),
                  "error_feedback": bool(cfg.codec.error_feedback), "rounding": str(cfg.codec.rounding),
                  "downlink_bits": int(cfg.codec.downlink_bits)},
        "board": str(cfg.board.name),
        "energy_budget_mj": cfg.energy.budget_mj, "battery_mj": cfg.energy.battery_mj,
        "privacy": _privacy_summary(state.privacy_plan(), int(cfg.rounds)),
        "memory_schemes": {f"{kb:g}": {"scheme": sc.name, "precision": sc.precision, "arena_bytes": need}
                           for kb, (sc, need) in state.memory_schemes().items()},
        "engine": dict(engine or {"backend": "flower"}),
        "restarts": dict(sorted(loop.totals().items())),
        "title": f"{cfg.dataset.name} / {cfg.strategy.name}: {len(node_of)} devices, {cfg.rounds} rounds",
    })
    if summary["status"] != "ok":  # summary.json is written; the run must not look like a trained model
        raise RunFailed(f"{summary['status_reason']}; results in {out_dir}", summary["status"])
    return summary


def _privacy_summary(plan: dict, rounds: int) -> dict:
    if plan["mode"] == "off":
        return plan
    out = {k: v for k, v in plan.items() if k != "epsilon_per_round"}
    allowed = plan["rounds_allowed"]
    out["epsilon"] = plan["epsilon_per_round"][allowed - 1]
    out["stopped_by_budget"] = allowed < rounds
    if allowed < rounds:
        out["stop_reason"] = (f"round {allowed + 1} would raise epsilon to {plan['epsilon_per_round'][allowed]:.3f}, "
                              f"above privacy.max_epsilon; the run stopped after {allowed} rounds")
    return out
