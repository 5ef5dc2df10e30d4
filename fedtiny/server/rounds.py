"""The round loop of a run, with a checkpoint after every complete round.

Flower's ``Strategy.start`` runs the rounds in one call; fedtiny runs the same steps itself
(configure and send the training messages, aggregate, federated evaluation, server-side
evaluation) so that it can write a checkpoint after each round and start again from one:

* before round 1 the pretrained model is evaluated and checkpoint 0 written;
* after round r: the node state of the devices trained in round r is fetched (only when the
  run keeps node state: error feedback or a battery; these bookkeeping messages are not
  counted as traffic), then checkpoint r is written (:mod:`fedtiny.server.checkpoint`);
* resumed from checkpoint r: the recorder, the strategy's server-optimiser state, the global
  arrays and every device's node state are restored, and the loop continues with round r + 1.

The sampling RNG and the DP noise are seeded by round, so a resumed run's rounds are the
uninterrupted run's rounds (tested, after SIGKILL at random points).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedtiny.server import checkpoint as ckpt
from fedtiny.server.recorder import RunRecorder

FORMAT = 1


class RoundLoop:
    """Runs rounds ``first..rounds`` of a run on `grid` with a prepared `strategy`."""

    def __init__(self, grid: Grid, strategy, run, recorder: RunRecorder, out_dir, timeout: float,
                 counters: Callable[[], dict] | None = None, log=print) -> None:
        self.grid, self.strategy, self.run, self.recorder = grid, strategy, run, recorder
        self.out_dir, self.timeout, self.log = out_dir, timeout, log
        self.counters = counters or (lambda: {})
        cfg = run.cfg
        self.keeps_node_state = bool(cfg.codec.error_feedback) or cfg.energy.battery_mj is not None
        self.node_states: dict[int, bytes] = {}  # partition id -> the node's serialized state
        self.base_counters: dict[str, int] = {}  # restarts and reconnects before a resume
        self.checkpoint_bytes: list[int] = []
        self.checkpoint_seconds: list[float] = []

    def totals(self) -> dict[str, int]:
        now = self.counters()
        return {k: int(self.base_counters.get(k, 0)) + int(now.get(k, 0)) for k in set(now) | set(self.base_counters)}

    # -- the loop --------------------------------------------------------------------------------

    def run_rounds(self, arrays: ArrayRecord, rounds: int, train_config: ConfigRecord, evaluate_config: ConfigRecord,
                   evaluate_fn, resume: ckpt.Checkpoint | None = None) -> ArrayRecord:
        if resume is None:
            evaluate_fn(0, arrays)
            self.save(0, arrays)
            first = 1
        else:
            arrays = self.restore(resume)
            first = resume.round + 1
        s, grid = self.strategy, self.grid
        for rnd in range(first, rounds + 1):
            messages = list(s.configure_train(rnd, arrays, train_config, grid))
            trained = [s.pid_of[m.metadata.dst_node_id] for m in messages]
            replies = self._exchange(messages, rnd)
            new, _ = s.aggregate_train(rnd, replies)
            if new is not None:
                arrays = new
            replies = grid.send_and_receive(s.configure_evaluate(rnd, arrays, evaluate_config, grid), timeout=self.timeout)
            s.aggregate_evaluate(rnd, replies)
            if self.keeps_node_state:
                self.fetch_node_state(trained)
            evaluate_fn(rnd, arrays)
            link_rows = getattr(self.counters, "link_rows", None)
            if link_rows is not None:
                self.recorder.links(rnd, link_rows())
            self.save(rnd, arrays)
        return arrays

    def _exchange(self, messages: list[Message], rnd: int):
        if os.environ.get(ckpt.KILL_ENV) == f"train:{rnd}":  # a crash while devices train (tests)
            self.grid.push_messages(messages)
            ckpt.kill_point("train", rnd)
        return self.grid.send_and_receive(messages, timeout=self.timeout)

    # -- node state ------------------------------------------------------------------------------

    def _query(self, config: dict, pids: list[int]) -> list[Message]:
        s = self.strategy
        msgs = [Message(RecordDict({"config": ConfigRecord({"run-id": self.run.run_id, **config.get(p, {})})}),
                        dst_node_id=s.node_of[p], message_type=MessageType.QUERY) for p in pids if p in s.node_of]
        return list(self.grid.send_and_receive(msgs, timeout=self.timeout))

    def fetch_node_state(self, pids: list[int]) -> None:
        """Keep the state of the devices that trained this round (one that does not answer keeps
        what it had)."""
        for reply in self._query({p: {"node-state": "get"} for p in pids}, pids):
            if not reply.has_error() and "node-state" in reply.content.config_records:
                pid = int(reply.content["metrics"]["partition-id"])
                self.node_states[pid] = bytes(reply.content["node-state"]["state"])

    def push_node_state(self) -> None:
        pids = sorted(self.node_states)
        failed = [r for r in self._query({p: {"node-state": "set", "state": self.node_states[p]} for p in pids}, pids)
                  if r.has_error()]
        if failed:
            raise RuntimeError(f"{len(failed)} nodes did not take their state back: {failed[0].error.reason}")

    # -- checkpoints -----------------------------------------------------------------------------

    def save(self, rnd: int, arrays: ArrayRecord) -> None:
        rec = self.recorder
        meta = {"format": FORMAT, "round": rnd, "run_id": self.run.run_id, "config": json.loads(self.run.config_json),
                "recorder": rec.state(), "epsilon": rec.epsilons[rnd - 1] if rnd > 0 and rec.epsilons else None,
                "counters": self.totals(), "nodes": sorted(self.node_states)}
        out = {f"global/{k}": a.numpy() for k, a in arrays.items()}
        out.update({f"server/{k}": v for k, v in self.strategy.server_state().items()})
        out.update({f"node/{p}": np.frombuffer(b, np.uint8) for p, b in self.node_states.items()})
        path, size, seconds = ckpt.write(self.out_dir, meta, out)
        self.checkpoint_bytes.append(size)
        self.checkpoint_seconds.append(seconds)
        logging.getLogger("fedtiny.file").info(f"checkpoint {path.name}: {size:,} B in {seconds * 1e3:.1f} ms")

    def restore(self, c: ckpt.Checkpoint) -> ArrayRecord:
        if c.meta.get("format") != FORMAT:
            raise ckpt.CheckpointError(f"{c.path.name}: checkpoint format {c.meta.get('format')}, this fedtiny "
                                       f"writes {FORMAT}")
        rec = self.recorder
        if c.meta["epsilon"] is not None and (not rec.epsilons or
                                              abs(rec.epsilons[c.round - 1] - float(c.meta["epsilon"])) > 1e-9):
            raise ckpt.CheckpointError(f"{c.path.name}: the privacy accountant gives another epsilon after round "
                                       f"{c.round} than the checkpoint holds ({c.meta['epsilon']})")
        rec.restore(c.meta["recorder"])
        self.base_counters = dict(c.meta.get("counters", {}))
        self.strategy.load_server_state(c.group("server"))
        self.node_states = {int(p): v.tobytes() for p, v in c.group("node").items()}
        if self.node_states:
            self.push_node_state()
        self.log(f"resumed after round {c.round} from {c.path}")
        return ArrayRecord({k: Array(v) for k, v in c.group("global").items()})
