"""Run one federated experiment on one machine (or a Ray cluster) and write its results.

``simulation.backend`` picks the engine:

* ``inprocess`` (default): :class:`fedtiny.engine.inprocess.InProcessGrid`, the ServerApp in
  this process and the ClientApp in ``simulation.workers`` forked workers (default: one per CPU;
  0 runs every client in this process). No Ray, no polling.
* ``ray``: Flower's simulation engine on Ray (``run_simulation``), for a cluster: start one with
  ``ray start --head`` (and ``ray start --address=HEAD:6379`` on the others), then run with
  ``simulation.backend=ray simulation.address=auto``; without an address Ray starts a local
  instance with ``simulation.num_cpus`` CPUs, ``simulation.client_cpus`` per client.

Both run the same ServerApp, ClientApp and strategies, and give the same ``metrics.csv`` for the
same seed (wall time aside; tested).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from fedtiny.client.context import RunContext, config_json, run_context
from fedtiny.config import num_devices
from fedtiny.devices.meter import LinkMeter
from fedtiny.errors import ConfigError, RunFailed
from fedtiny.server.prepare import prepare_output

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs here; silences Ray's tip


def engine_settings(cfg: DictConfig) -> dict:
    """The engine a run uses, as its summary records it."""
    from fedtiny.engine.inprocess import default_workers

    s = cfg.simulation
    if s.backend == "ray":
        return {"backend": "ray", "workers": int(s.num_cpus // s.client_cpus), "address": s.address}
    workers = default_workers() if s.workers is None else int(s.workers)
    return {"backend": "inprocess", "workers": min(workers, num_devices(cfg))}


def resume_point(cfg: DictConfig, out_dir: Path, log=print):
    """The checkpoint a resumed run continues from (None: start from round 0), after checking
    that `cfg` is the config the run was started with (a changed key is refused, named)."""
    from fedtiny.server import checkpoint as ckpt

    found = ckpt.latest(out_dir, log)
    if found is None:
        return None
    ignore = ckpt.RESUMABLE_KEYS + (("devices.urls",) if int(cfg.devices.emulate) > 0 else ())  # a new fleet's ports
    diff = ckpt.config_diff(found.meta["config"], json.loads(config_json(cfg)), ignore)
    if diff:
        raise ConfigError(f"{out_dir} was started with another config; resuming it with this one is refused "
                          f"(differing keys: {'; '.join(diff)})")
    return found


def run_experiment(cfg: DictConfig, out_dir: Path, log=print, resume: bool = False) -> dict:
    """Simulate the federation of ``num_devices`` devices with the configured engine; returns the
    summary (also written to ``out_dir/summary.json``). With `resume` the run continues after
    the newest usable checkpoint in `out_dir` (from the start if there is none)."""
    from fedtiny.engine.apps import make_server_app, simulation_client_app

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    checkpoint = resume_point(cfg, out_dir, log) if resume else None
    fleet = None
    live: dict = {}  # the engine's grid and the fleet, for their restart counters
    if int(cfg.devices.emulate) > 0:  # QEMU boards and their bridges live as long as the run
        from fedtiny.devices.emulate import fleet_for_experiment

        fleet = fleet_for_experiment(run_context(config_json(cfg)), out_dir / "boards", log, supervise=True)
        live["fleet"] = fleet
        cfg = cfg.copy()
        cfg.devices.urls = list(fleet.urls)
    outcome: dict = {}
    try:
        run: RunContext = prepare_output(cfg, out_dir, log)
        n = num_devices(cfg)
        boards = len(cfg.devices.urls)
        engine = engine_settings(cfg)
        log(f"simulating {n - boards} devices{f' beside {boards} boards' if boards else ''} x {cfg.rounds} rounds "
            f"({cfg.strategy.name}; {engine['backend']}, {engine['workers']} workers); results in {out_dir}")
        parts = list(cfg.devices.partitions) or list(range(boards))
        links = LinkMeter(list(cfg.devices.urls), parts, cfg.board)
        server_app = make_server_app(run, out_dir, outcome, engine, checkpoint, RunCounters(live, links), log)
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)  # e.g. the strategy's INFO banner, run_simulation's notices
        if engine["backend"] == "inprocess":
            _run_inprocess(server_app, simulation_client_app(run.config_json), n, engine["workers"], live)
        else:
            _run_ray(cfg, server_app, simulation_client_app(run.config_json), n)
    finally:
        if fleet is not None:
            fleet.stop()
    if isinstance(outcome.get("error"), (RunFailed, ConfigError)):
        raise outcome["error"]
    if "error" in outcome:
        raise RuntimeError(f"the server failed: {outcome['error']}") from outcome["error"]
    if "summary" not in outcome:
        raise RuntimeError("the simulation ended without a result (see the log above)")
    summary = outcome["summary"]
    summary["total_wall_s"] = round(time.perf_counter() - t0, 3)
    log(f"accuracy {summary['initial_accuracy']:.3f} -> {summary['final_accuracy']:.3f} over {summary['rounds']} rounds; "
        f"{summary['failed_total']} failed, {summary['rejected_total']} rejected; "
        f"up {summary['bytes_up_total']:,} B, down {summary['bytes_down_total']:,} B; {summary['wall_s']:.1f} s "
        f"({summary['client_rounds_per_s']:,.1f} client-rounds/s)")
    for kind, t in summary.get("links", {}).items():
        line = (f"boards over {kind}: {t['board_rounds']} board-rounds, {t['requests']} requests, frames "
                f"{t['bytes_to_board']:,} B to and {t['bytes_from_board']:,} B from the boards")
        if "air_bytes_down" in t:
            line += (f"; on air {t['air_bytes_down']:,} B down and {t['air_bytes_up']:,} B up in {t['packets_down']:,}"
                     f" + {t['packets_up']:,} data packets, {t['connection_events']:,} connection events "
                     f"({t['radio_ms'] / 1e3:.2f} s of radio time)")
            if "radio_mj_per_board_round" in t:
                line += f", {t['radio_mj_per_board_round']:.3f} mJ of radio per board-round on the {cfg.board.name}"
        log(line)
    return summary


class RunCounters:
    """Restarts and reconnects so far (called for the summary and checkpoints: simulation
    workers, emulated boards, bridges, links), and the boards' link rows of each round."""

    def __init__(self, live: dict, links) -> None:
        self.live, self.links = live, links

    def __call__(self) -> dict:
        live = self.live
        out = {"worker_restarts": live["grid"].restarts if "grid" in live else 0}
        if "fleet" in live:
            out.update(live["fleet"].restarts())
        out["link_reconnects"] = self.links.reconnects()
        return out

    def link_rows(self) -> list[list]:
        return self.links.rows()


def _run_inprocess(server_app, client_app, n: int, workers: int, live: dict) -> None:
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedtiny.engine.inprocess import InProcessGrid

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    with InProcessGrid(client_app, n, workers, lambda k: {"partition-id": k, "num-partitions": n}) as grid:
        live["grid"] = grid
        try:
            server_app(grid, Context(run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                                     run_config={}))
        except Exception:  # noqa: BLE001  (the ServerApp put the error into the outcome)
            pass


def _run_ray(cfg: DictConfig, server_app, client_app, n: int) -> None:
    from flwr.simulation import run_simulation

    s = cfg.simulation
    init_args = {"num_gpus": 0, "include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if s.address:
        init_args["address"] = str(s.address)
    else:
        init_args["num_cpus"] = int(s.num_cpus)
    backend_config = {"client_resources": {"num_cpus": float(s.client_cpus), "num_gpus": 0.0}, "init_args": init_args}
    # Ray is started here, not by Flower, so that SIGTERM and Ctrl-C keep fedtiny's handlers (Ray's
    # driver would abort on SIGTERM) and every Ray process stops with the run (ray.shutdown)
    import signal

    import ray

    from fedtiny.engine.reaper import Reaper

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with Reaper() as reaper:  # and if this process is killed outright (SIGKILL), a watchdog stops Ray's
        ray.init(**init_args)
        reaper.report()
        try:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n,
                           backend_config=backend_config)
        finally:
            ray.shutdown()
