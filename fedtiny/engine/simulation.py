"""Run one federated experiment in Flower's simulation engine and write its results."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from fedtiny.client.context import RunContext, config_json, run_context
from fedtiny.config import num_devices
from fedtiny.errors import RunFailed
from fedtiny.server.prepare import prepare_output

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs here; silences Ray's tip


def run_experiment(cfg: DictConfig, out_dir: Path, log=print) -> dict:
    """Simulate the federation: ``num_devices`` virtual SuperNodes on Ray. Returns the summary."""
    from flwr.simulation import run_simulation

    from fedtiny.engine.apps import make_server_app, simulation_client_app

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    fleet = None
    if int(cfg.devices.emulate) > 0:  # QEMU boards and their bridges live as long as the run
        from fedtiny.devices.emulate import fleet_for_experiment

        fleet = fleet_for_experiment(run_context(config_json(cfg)), out_dir / "boards", log)
        cfg = cfg.copy()
        cfg.devices.urls = list(fleet.urls)
    try:
        run: RunContext = prepare_output(cfg, out_dir, log)
        n = num_devices(cfg)
        boards = len(cfg.devices.urls)
        log(f"simulating {n - boards} devices{f' beside {boards} boards' if boards else ''} x {cfg.rounds} rounds "
            f"({cfg.strategy.name}); results in {out_dir}")
        outcome: dict = {}
        backend_config = {
            "client_resources": {"num_cpus": float(cfg.simulation.client_cpus), "num_gpus": 0.0},
            "init_args": {"num_cpus": int(cfg.simulation.num_cpus), "num_gpus": 0, "include_dashboard": False,
                          "log_to_driver": False, "logging_level": "ERROR"},
        }
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)  # e.g. run_simulation's deprecation notice
        run_simulation(server_app=make_server_app(run, out_dir, outcome),
                       client_app=simulation_client_app(run.config_json), num_supernodes=n,
                       backend_config=backend_config)
    finally:
        if fleet is not None:
            fleet.stop()
    if isinstance(outcome.get("error"), RunFailed):
        raise outcome["error"]
    if "error" in outcome:
        raise RuntimeError(f"the server failed: {outcome['error']}") from outcome["error"]
    if "summary" not in outcome:
        raise RuntimeError("the simulation ended without a result (see the log above)")
    summary = outcome["summary"]
    summary["total_wall_s"] = round(time.perf_counter() - t0, 3)
    log(f"accuracy {summary['initial_accuracy']:.3f} -> {summary['final_accuracy']:.3f} over {summary['rounds']} rounds; "
        f"{summary['failed_total']} failed, {summary['rejected_total']} rejected; "
        f"up {summary['bytes_up_total']:,} B, down {summary['bytes_down_total']:,} B; {summary['wall_s']:.1f} s")
    return summary
