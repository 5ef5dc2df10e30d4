"""fedtiny's strategies, one per file: Flower's FedAvg, FedAdam and FedProx, each with the steps
``FedtinyStrategy`` (``base.py``) changes: seeded sampling, validated and decoded updates,
per-channel means of partial updates, central DP, exact byte counts. A new strategy is a file
with its class and ``from_config(cfg)``, listed in ``STRATEGIES``.
"""

from __future__ import annotations

from fedtiny.server.strategies import fedadam, fedavg, fedprox
from fedtiny.server.strategies.base import FedtinyStrategy, weighted_metrics

STRATEGIES = {"fedavg": fedavg.from_config, "fedadam": fedadam.from_config, "fedprox": fedprox.from_config}


def build_strategy(cfg) -> FedtinyStrategy:
    """The strategy ``cfg.strategy.name`` names, built from the config."""
    if cfg.strategy.name not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.strategy.name} (one of {sorted(STRATEGIES)})")
    return STRATEGIES[cfg.strategy.name](cfg)


__all__ = ["STRATEGIES", "FedtinyStrategy", "build_strategy", "weighted_metrics"]
