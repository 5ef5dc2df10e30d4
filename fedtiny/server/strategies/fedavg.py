"""FedAvg (McMahan et al., 2017): the weighted mean of the updates is the new model."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from fedtiny.server.strategies.base import FedtinyStrategy, common_args


class FedtinyFedAvg(FedtinyStrategy, FedAvg):
    pass


def from_config(cfg) -> FedtinyFedAvg:
    return FedtinyFedAvg(**common_args())
