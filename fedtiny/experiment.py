"""Run one federated experiment in Flower's simulation engine and write its results."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedtiny.config import num_devices
from fedtiny.errors import ConfigError, RunFailed
from fedtiny.fl.state import config_json, experiment_state

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs here; silences Ray's tip


def prepare_output(cfg: DictConfig, out_dir: Path, log=print) -> str:
    """Write the resolved config and make sure the pretrained backbone exists (before Ray)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    cfg_json = config_json(cfg)
    state = experiment_state(cfg_json, log=log)
    if len(state.task.clients) != num_devices(cfg):  # the federation is sized from the config
        raise ConfigError(f"the {cfg.dataset.name} task holds {len(state.task.clients)} devices but the config asks "
                          f"for {num_devices(cfg)} (dataset.num_clients); set dataset.num_clients="
                          f"{len(state.task.clients)} or make the task return {num_devices(cfg)}")
    r = state.backbone.report
    log(f"backbone {cfg.model.arch}: field accuracy float {r['float_field_accuracy']:.3f} / int8 "
        f"{r['int8_field_accuracy']:.3f}; vendor val float {r['float_vendor_val_accuracy']:.3f} / int8 "
        f"{r['int8_vendor_val_accuracy']:.3f}  ({state.backbone.path})")
    warning = int8_warning(r, float(cfg.model.int8_max_drop))
    if warning:
        log(f"warning: {warning}")
    from fedtiny.fl.state import privacy_plan

    dp = privacy_plan(cfg_json)  # an unreachable privacy target fails here
    if dp["mode"] != "off":
        log(f"privacy {dp['mode']}: clip {dp['clip']:g}, noise multiplier {dp['noise_multiplier']:.3f}, q {dp['q']:.3g}, "
            f"epsilon after {dp['rounds_allowed']} rounds {dp['epsilon_per_round'][dp['rounds_allowed'] - 1]:.3f} "
            f"(delta {dp['delta']:g}, {dp['accountant']})")
        if dp["rounds_allowed"] < int(cfg.rounds):
            log(f"privacy.max_epsilon allows {dp['rounds_allowed']} of {cfg.rounds} rounds: the run will stop there")
    for kb, (scheme, need) in memory_schemes(cfg_json).items():  # an impossible budget fails here
        log(f"memory budget {kb:g} KiB (minus {cfg.budget.memory.reserve_kb:g} reserved): scheme {scheme.name}, "
            f"arena {need:,} B")
    return cfg_json


def int8_warning(report: dict, max_drop: float) -> str:
    """A warning when quantizing the backbone cost more field accuracy than `max_drop`, else ''."""
    drop = float(report["float_field_accuracy"]) - float(report["int8_field_accuracy"])
    if drop <= max_drop:
        return ""
    return (f"the int8 backbone scores {drop:.3f} below float on field data ({report['int8_field_accuracy']:.3f} vs "
            f"{report['float_field_accuracy']:.3f}; model.int8_max_drop={max_drop:g}): more calibration samples "
            f"(model.calibration_samples) or a wider model may help")


def memory_schemes(cfg_json: str) -> dict:
    """The update scheme and arena bytes of every distinct memory budget of the run."""
    from fedtiny.fl.state import device_scheme

    cfg = experiment_state(cfg_json).cfg
    return {float(kb): device_scheme(cfg_json, float(kb)) for kb in sorted(set(cfg.budget.memory.sram_kb))}


def run_experiment(cfg: DictConfig, out_dir: Path, log=print) -> dict:
    """Simulate the federation: ``num_devices`` virtual SuperNodes on Ray. Returns the summary."""
    from flwr.simulation import run_simulation

    from fedtiny.fl.client_app import app as client_app
    from fedtiny.fl.server_app import make_server_app

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    fleet = None
    if int(cfg.devices.emulate) > 0:  # QEMU boards and their bridges live as long as the run
        from fedtiny.devices.emulate import fleet_for_experiment

        fleet = fleet_for_experiment(cfg, out_dir / "boards", log)
        cfg = cfg.copy()
        cfg.devices.urls = list(fleet.urls)
    try:
        cfg_json = prepare_output(cfg, out_dir, log)
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
        run_simulation(server_app=make_server_app(cfg_json, out_dir, outcome), client_app=client_app,
                       num_supernodes=n, backend_config=backend_config)
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
