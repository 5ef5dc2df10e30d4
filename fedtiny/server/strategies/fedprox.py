"""FedProx (Li et al., 2020): FedAvg whose clients add (mu/2)·||w - w_global||² to their loss;
the server sends ``proximal-mu`` (``strategy.proximal_mu``) with every training message."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from fedtiny.server.strategies.base import FedtinyStrategy, common_args


class FedtinyFedProx(FedtinyStrategy, FedProx):
    pass


def from_config(cfg) -> FedtinyFedProx:
    return FedtinyFedProx(proximal_mu=float(cfg.strategy.proximal_mu), **common_args())
