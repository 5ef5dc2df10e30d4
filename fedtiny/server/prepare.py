"""Before a run starts, where the server runs: write the resolved config, build the run's
context (the backbone is pretrained here if no cached one exists), and refuse what cannot run
(a task of another size, an unreachable privacy target, a memory budget that holds no scheme),
saying what was chosen. The engines (``fedtiny.engine``) call it before any client starts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedtiny.config import num_devices
from fedtiny.errors import ConfigError
from fedtiny.models.nets import model_name
from fedtiny.client.context import RunContext, config_json, run_context


def prepare_output(cfg: DictConfig, out_dir: Path, log=print) -> RunContext:
    """Write the resolved config and build the run's context (before any client starts)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    state = run_context(config_json(cfg), log=log)
    if len(state.task.clients) != num_devices(cfg):  # the federation is sized from the config
        raise ConfigError(f"the {cfg.dataset.name} task holds {len(state.task.clients)} devices but the config asks "
                          f"for {num_devices(cfg)} (dataset.num_clients); set dataset.num_clients="
                          f"{len(state.task.clients)} or make the task return {num_devices(cfg)}")
    r = state.backbone.report
    digest = hashlib.sha256(state.backbone.model_bytes).hexdigest()[:16]
    log(f"backbone {model_name(cfg.model)} (sha256 {digest}): field accuracy float {r['float_field_accuracy']:.3f} / int8 "
        f"{r['int8_field_accuracy']:.3f}; vendor val float {r['float_vendor_val_accuracy']:.3f} / int8 "
        f"{r['int8_vendor_val_accuracy']:.3f}  ({state.backbone.path})")
    warning = int8_warning(r, float(cfg.model.int8_max_drop))
    if warning:
        log(f"warning: {warning}")
    dp = state.privacy_plan()  # an unreachable privacy target fails here
    if dp["mode"] != "off":
        log(f"privacy {dp['mode']}: clip {dp['clip']:g}, noise multiplier {dp['noise_multiplier']:.3f}, q {dp['q']:.3g}, "
            f"epsilon after {dp['rounds_allowed']} rounds {dp['epsilon_per_round'][dp['rounds_allowed'] - 1]:.3f} "
            f"(delta {dp['delta']:g}, {dp['accountant']})")
        if dp["rounds_allowed"] < int(cfg.rounds):
            log(f"privacy.max_epsilon allows {dp['rounds_allowed']} of {cfg.rounds} rounds: the run will stop there")
    for kb, (scheme, need) in state.memory_schemes().items():  # an impossible budget fails here
        log(f"memory budget {kb:g} KiB (minus {cfg.budget.memory.reserve_kb:g} reserved): scheme {scheme.name}, "
            f"arena {need:,} B")
    return state


def int8_drop(report: dict) -> float:
    """Field accuracy the backbone lost to int8 (float minus int8, from its pretraining report)."""
    return float(report["float_field_accuracy"]) - float(report["int8_field_accuracy"])


def int8_warning(report: dict, max_drop: float) -> str:
    """A warning when quantizing the backbone cost more field accuracy than `max_drop`, else ''."""
    drop = int8_drop(report)
    if drop <= max_drop:
        return ""
    return (f"the int8 backbone scores {drop:.3f} below float on field data ({report['int8_field_accuracy']:.3f} vs "
            f"{report['float_field_accuracy']:.3f}; model.int8_max_drop={max_drop:g}): more calibration samples "
            f"(model.calibration_samples) or a wider model may help")
