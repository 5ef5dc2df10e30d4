"""sklearn's 8x8 digits (shipped with scikit-learn): a tiny, fast task for tests.

A fixed share of the images is the vendor's pretraining data, ``holdout_fraction`` of the rest
is the server's held-out field data, and the remainder is split over ``num_clients`` devices
with a Dirichlet label skew (:func:`~fedtiny.data.partition.dirichlet_partitions`), each with a random local
train/test split.
"""

from __future__ import annotations

import numpy as np

from fedtiny.data.base import ClientData, FederatedTask, Split, register_task
from fedtiny.data.partition import dirichlet_partitions


def _client_splits(split: Split, parts: list[np.ndarray], test_fraction: float, seed: int, prefix: str):
    rng = np.random.default_rng(seed)
    clients = []
    for i, idx in enumerate(parts):
        idx = rng.permutation(idx)
        n_test = max(1, int(round(len(idx) * test_fraction)))
        clients.append(ClientData(f"{prefix}{i:03d}", split.take(np.sort(idx[n_test:])), split.take(np.sort(idx[:n_test]))))
    return clients


@register_task("digits")
def build(cfg) -> FederatedTask:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data.reshape(-1, 8, 8, 1) / 16.0 - 0.5).astype(np.float32)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(d.target))
    n_vendor = int(len(order) * cfg.pretrain_fraction)
    full = Split(x, d.target)
    n_hold = int(len(order) * cfg.holdout_fraction)
    vendor, hold, field = order[:n_vendor], order[n_vendor : n_vendor + n_hold], np.sort(order[n_vendor + n_hold :])
    n_val = max(1, int(n_vendor * 0.15))
    field_split = full.take(field)
    parts = dirichlet_partitions(field_split.y, cfg.num_clients, cfg.alpha, cfg.seed, min_partition_size=5)
    clients = _client_splits(field_split, parts, cfg.test_fraction, cfg.seed, "client")
    return FederatedTask(
        name="digits", input_shape=(8, 8, 1), class_names=[str(i) for i in range(10)],
        pretrain=full.take(vendor[n_val:]), pretrain_val=full.take(vendor[:n_val]), clients=clients,
        server_test=full.take(np.sort(hold)),
    )
