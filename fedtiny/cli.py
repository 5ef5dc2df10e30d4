"""The ``fedtiny`` command (a Hydra app) and its helpers.

    fedtiny [overrides...]            run one experiment (default: conf/config.yaml)
    fedtiny -m key=a,b [overrides]    sweep with Hydra multirun
    fedtiny pretrain [overrides...]   pretrain, quantize and cache the backbone only

A configuration error (unknown group option or key, wrong type, impossible value) is
reported in one line before anything starts, and the exit status is 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedtiny.config import compose, conf_dir, validate
from fedtiny.errors import ConfigError

_INFO_FLAGS = {"-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--version", "--shell-completion", "-sc"}


def _fail(err: Exception) -> None:
    print(f"fedtiny: config error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    from fedtiny.experiment import run_experiment

    try:
        typed = validate(cfg)
        run_experiment(typed, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:  # e.g. a memory budget that holds no update scheme
        _fail(err)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pretrain"]:
        from fedtiny.models.pretrain import main as pretrain_main

        try:
            return pretrain_main(argv[1:])
        except ConfigError as err:
            _fail(err)
    multirun = "-m" in argv or "--multirun" in argv
    if not multirun and not _INFO_FLAGS.intersection(argv):
        overrides = [a for a in argv if not a.startswith("-") and not a.startswith("hydra.")]
        try:
            compose(overrides)  # validated before Hydra, data or Ray start
        except ConfigError as err:
            _fail(err)
    sys.argv = [sys.argv[0]] + argv
    _run()


if __name__ == "__main__":
    main()
