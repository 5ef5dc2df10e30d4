"""Client partitions through flwr-datasets on local ``datasets.Dataset`` objects (no hub).

The partitioned data sets hold only sample indices and the partitioning column, so the
arrays themselves never go through Arrow.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np


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
                         min_partition_size: int = 10) -> list[np.ndarray]:
    """Label-skewed partitions with ``DirichletPartitioner`` (smaller alpha: more skew)."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    ds = Dataset.from_dict({"idx": np.arange(len(labels)), "label": np.asarray(labels, dtype=np.int64)})
    part = DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=alpha, seed=seed,
                                min_partition_size=min_partition_size, self_balancing=True)
    part.dataset = ds
    return [np.sort(np.asarray(part.load_partition(p)["idx"], dtype=np.int64)) for p in range(num_partitions)]
