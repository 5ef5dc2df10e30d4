"""FedAdam (Reddi et al., 2021): Adam on the server, with the mean update as its pseudo-gradient
(``strategy.eta``, ``beta_1``, ``beta_2``, ``tau``; the clients' lr is Flower's ``eta_l``)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam

from fedtiny.server.strategies.base import FedtinyStrategy, common_args


class FedtinyFedAdam(FedtinyStrategy, FedAdam):
    pass


def from_config(cfg) -> FedtinyFedAdam:
    s = cfg.strategy
    return FedtinyFedAdam(eta=float(s.eta), eta_l=float(cfg.client.lr), beta_1=float(s.beta_1),
                          beta_2=float(s.beta_2), tau=float(s.tau), **common_args())
