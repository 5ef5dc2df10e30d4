"""Client partitions: natural ids through flwr-datasets' ``NaturalIdPartitioner`` on a local
``datasets.Dataset`` of sample indices (no hub, the arrays never go through Arrow), and
Dirichlet label skew with fedtiny's own machine-independent draws.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from fedtiny.errors import ConfigError


def natural_partitions(ids: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Group sample indices by a natural id (e.g. device) with ``NaturalIdPartitioner``.
    Returns per-partition index arrays and the natural id of each partition."""
    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    ds = Dataset.from_dict({"idx": np.arange(len(ids)), "natural_id": [str(i) for i in ids]})
    part = NaturalIdPartitioner(partition_by="natural_id")
    part.dataset = ds
    with contextlib.redirect_stderr(io.StringIO()):  # its index pass draws a tqdm bar
        part.load_partition(0)
    parts = [np.asarray(part.load_partition(p)["idx"], dtype=np.int64) for p in range(part.num_partitions)]
    names = [part.partition_id_to_natural_id[p] for p in range(part.num_partitions)]
    return parts, names


def dirichlet_partitions(labels: np.ndarray, num_partitions: int, alpha: float, seed: int,
                         min_partition_size: int = 10, max_tries: int = 10) -> list[np.ndarray]:
    """Label-skewed partitions (smaller alpha: more skew), sorted sample indices per partition.

    The procedure of flwr-datasets' ``DirichletPartitioner`` with self-balancing: class by
    class, proportions over the partitions are drawn from a symmetric Dirichlet(alpha);
    partitions already above the average size get none of the class; the class's indices are
    cut at the floors of the cumulative proportions. The whole draw repeats until every
    partition holds `min_partition_size` samples (at most `max_tries` times, else ConfigError).
    The proportions come from :func:`fedtiny.data.detmath.dirichlet`, so the partitions are the
    same on every machine.
    """
    from fedtiny.data.detmath import dirichlet

    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xD1])
    average = len(labels) / num_partitions
    for _ in range(max_tries + 1):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for cls in np.unique(labels):
            idx = np.flatnonzero(labels == cls)
            full = np.array([len(p) for p in parts]) > average
            props = np.where(full, 0.0, dirichlet(rng, alpha, num_partitions))
            total = float(np.cumsum(props)[-1])  # summed in index order
            if not total > 0.0:  # every partition left holds a gamma that underflowed: share evenly
                props, total = np.where(full, 0.0, 1.0), float(np.count_nonzero(~full))
            cuts = (np.cumsum(props / total) * len(idx)).astype(np.int64)[:-1]
            for p, piece in zip(parts, np.split(idx, cuts)):
                p.extend(piece.tolist())
        if min(len(p) for p in parts) >= min_partition_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(f"no Dirichlet(alpha={alpha}) draw gave every one of {num_partitions} partitions "
                     f"{min_partition_size} samples in {max_tries + 1} tries: raise alpha or lower the partition count")
