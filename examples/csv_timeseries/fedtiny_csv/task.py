"""Federated windows of a CSV time series: one device per value of the device column.

The CSV has a header and one row per sample, in time order within each device::

    device,label,ax,ay,az
    d00,walk,0.12,-0.98,0.05
    ...

Every other column than ``device`` and ``label`` is a channel. Windows of ``window`` rows
(every ``stride`` rows) that hold one label become samples shaped ``(1, window, channels)``:
the 1-D convolution layout fedtiny's IMU backbones take. The first ``pretrain_devices``
devices (in sorted order) are the vendor's: they pretrain the backbone. The next
``num_clients`` are the field devices; each keeps its last windows for testing and gives its
very last ones to the server's held-out set (temporal splits, so neighbouring windows never
straddle train and test).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fedtiny.data import ClientData, FederatedTask, Split
from fedtiny.data.base import temporal_split


def read_csv(path: str) -> tuple[list[str], dict[str, tuple[np.ndarray, list[str]]]]:
    """Channel names and, per device, its samples (rows, channels) and labels, in file order."""
    with open(Path(path).expanduser(), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or "device" not in header or "label" not in header:
            raise ValueError(f"{path}: the header needs 'device' and 'label' columns, got {header}")
        di, li = header.index("device"), header.index("label")
        channels = [i for i in range(len(header)) if i not in (di, li)]
        if not channels:
            raise ValueError(f"{path}: no channel columns besides device and label")
        rows: dict[str, tuple[list, list]] = {}
        for n, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}:{n}: {len(row)} fields, the header has {len(header)}")
            values, labels = rows.setdefault(row[di], ([], []))
            try:
                values.append([float(row[i]) for i in channels])
            except ValueError:
                raise ValueError(f"{path}:{n}: a channel value is not a number: {row}") from None
            labels.append(row[li])
    return [header[i] for i in channels], {d: (np.asarray(v, np.float32), lab) for d, (v, lab) in rows.items()}


def windows(values: np.ndarray, labels: list[str], window: int, stride: int) -> tuple[np.ndarray, list[str]]:
    """Windows of `window` rows every `stride` rows that hold a single label."""
    xs, ys = [], []
    for start in range(0, len(labels) - window + 1, stride):
        chunk = labels[start:start + window]
        if all(lab == chunk[0] for lab in chunk):
            xs.append(values[start:start + window])
            ys.append(chunk[0])
    return np.asarray(xs, np.float32).reshape(-1, 1, window, values.shape[1]), ys


def build(path: str, num_clients: int, window: int = 32, stride: int = 16, pretrain_devices: int = 4,
          test_fraction: float = 0.25, holdout_fraction: float = 0.15, seed: int = 0) -> FederatedTask:
    if window < 4 or stride < 1:
        raise ValueError(f"need window >= 4 and stride >= 1, got {window} and {stride}")
    channels, per_device = read_csv(path)
    devices = sorted(per_device)
    if len(devices) < pretrain_devices + num_clients:
        raise ValueError(f"{path} has {len(devices)} devices; pretrain_devices={pretrain_devices} + "
                         f"num_clients={num_clients} are asked for")
    cut = {d: windows(*per_device[d], window, stride) for d in devices[:pretrain_devices + num_clients]}
    class_names = sorted({y for _, ys in cut.values() for y in ys})
    index = {c: i for i, c in enumerate(class_names)}
    split = {d: Split(x, np.asarray([index[y] for y in ys], np.int64)) for d, (x, ys) in cut.items()}
    vendor = Split.concat([split[d] for d in devices[:pretrain_devices]])
    mean = vendor.x.mean(axis=(0, 1, 2), keepdims=True)
    std = vendor.x.std(axis=(0, 1, 2), keepdims=True) + 1e-6
    for s in split.values():
        s.x = (s.x - mean) / std  # the vendor's normalisation, as firmware would hard-code it
    order = np.random.default_rng(seed).permutation(len(vendor))
    vendor = Split((vendor.x - mean) / std, vendor.y)
    n_val = max(1, len(vendor) // 5)
    gap = max(0, window // stride - 1)  # windows overlapping a boundary are dropped
    clients, held_out = [], []
    for d in devices[pretrain_devices:pretrain_devices + num_clients]:
        s = split[d]
        train, test, holdout = temporal_split(len(s), (test_fraction, holdout_fraction), gap)
        clients.append(ClientData(d, s.take(train), s.take(test)))
        held_out.append(s.take(holdout))
    return FederatedTask(name="csv_timeseries", input_shape=(1, window, len(channels)), class_names=class_names,
                         pretrain=vendor.take(order[n_val:]), pretrain_val=vendor.take(order[:n_val]),
                         clients=clients, server_test=Split.concat(held_out),
                         info={"path": str(path), "channels": channels, "window": window, "stride": stride})
