"""Wrist-IMU exercise recognition (``seglearn.datasets.load_watch``, shipped in the package).

6 axes (accelerometer + gyroscope) at 50 Hz, 10 subjects, 7 shoulder-rehabilitation
exercises, recorded on both wrists. Windows of ``window_s`` seconds with ``overlap``; each
recording is split in time (first part train, last part test, one window dropped between so
overlapping windows never leak), then a last part held out for the server. Channels are standardised with the vendor data's statistics.

Vendor (pretraining) subjects train the backbone. Field devices are the remaining subjects,
one device per wrist (``device: subject_side``) or per subject (``device: subject``), grouped
with flwr-datasets' ``NaturalIdPartitioner``. The server's held-out field data is the last
``holdout_fraction`` of every field recording, which no device trains or tests on.
"""

from __future__ import annotations

import math

import numpy as np

from fedtiny.data.base import ClientData, FederatedTask, Split, register_task, temporal_split
from fedtiny.data.shift import ImuSensor, imu_shift
from fedtiny.data.partition import natural_partitions
from fedtiny.errors import ConfigError

SAMPLE_RATE_HZ = 50
SIDES = {0: "left", 1: "right"}


def _windows(rec: np.ndarray, length: int, step: int) -> np.ndarray:
    starts = np.arange(0, rec.shape[0] - length + 1, step)
    return np.stack([rec[s : s + length] for s in starts]) if len(starts) else np.zeros((0, length, rec.shape[1]))


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of each column, in float64 from exactly
    rounded sums (``math.fsum``): the same bits whatever order or SIMD width a sum would take."""
    cols = np.asarray(x, dtype=np.float64).T
    n = cols.shape[1]
    mean = np.array([math.fsum(c) / n for c in cols])
    var = np.array([math.fsum((c - m) * (c - m)) / n for c, m in zip(cols, mean)])
    return mean, np.sqrt(var)


@register_task("watch")
def build(cfg) -> FederatedTask:
    from seglearn.datasets import load_watch

    data = load_watch()
    subjects = sorted(int(s) for s in np.unique(data["subject"]))
    vendor = [int(s) for s in cfg.pretrain_subjects]
    unknown = sorted(set(vendor) - set(subjects))
    if unknown:
        raise ConfigError(f"dataset.pretrain_subjects: unknown subjects {unknown} (watch has {subjects})")
    field = [s for s in subjects if s not in vendor]
    if not vendor or not field:
        raise ConfigError("dataset.pretrain_subjects must leave at least one vendor and one field subject")
    if cfg.device not in ("subject_side", "subject"):
        raise ConfigError(f"dataset.device must be 'subject_side' or 'subject', got '{cfg.device}'")
    length = int(round(cfg.window_s * SAMPLE_RATE_HZ))
    step = max(1, int(round(length * (1.0 - cfg.overlap))))
    gap = int(np.ceil(length / step)) - 1

    shift, sensors = imu_shift(cfg), {}
    # windows per recording, split in time
    train_x, train_y, test_x, test_y, train_dev, test_dev, vendor_x, vendor_y, hold_x, hold_y, vendor_g = (
        [] for _ in range(11))
    for rec, label, subj, side in zip(data["X"], data["y"], data["subject"], data["side"]):
        win = _windows(np.asarray(rec, np.float32), length, step)
        subj = int(subj)
        if subj in vendor:
            vendor_x.append(win)
            vendor_y.append(np.full(len(win), int(label)))
            vendor_g.append(np.full(len(win), subj))
            continue
        device = f"subject{subj:02d}" + (f"-{SIDES[int(side)]}" if cfg.device == "subject_side" else "")
        if shift is not None:  # the device's own mounting, gain and offset (the server's field data too)
            if device not in sensors:
                sensors[device] = ImuSensor.draw(np.random.default_rng([int(cfg.seed), 0x1A0, subj, int(side)]), **shift)
            win = sensors[device].apply(win)
        tr, te, ho = temporal_split(len(win), (cfg.test_fraction, cfg.holdout_fraction), gap)
        hold_x.append(win[ho]); hold_y.append(np.full(len(ho), int(label)))
        train_x.append(win[tr]); train_y.append(np.full(len(tr), int(label))); train_dev += [device] * len(tr)
        test_x.append(win[te]); test_y.append(np.full(len(te), int(label))); test_dev += [device] * len(te)

    vx, vy, vg = np.concatenate(vendor_x), np.concatenate(vendor_y), np.concatenate(vendor_g)
    mean, std = channel_stats(vx.reshape(-1, 6))
    std = std + 1e-6

    def shape(x: np.ndarray) -> np.ndarray:  # (N, T, 6) -> (N, 1, T, 6), standardised
        return ((x - mean) / std).astype(np.float32)[:, None, :, :]

    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(vy))
    n_val = int(len(order) * 0.15)
    vendor_split = Split(shape(vx), vy)
    train = Split(shape(np.concatenate(train_x)), np.concatenate(train_y))
    test = Split(shape(np.concatenate(test_x)), np.concatenate(test_y))
    train_parts, names = natural_partitions(np.array(train_dev))
    test_index = {name: np.flatnonzero(np.array(test_dev) == name) for name in names}
    clients = [ClientData(name, train.take(idx), test.take(test_index[name])) for idx, name in zip(train_parts, names)]
    return FederatedTask(
        name="watch", input_shape=(1, length, 6), class_names=list(data["y_labels"]),
        pretrain=vendor_split.take(order[n_val:]), pretrain_val=vendor_split.take(order[:n_val]),
        clients=clients, server_test=Split(shape(np.concatenate(hold_x)), np.concatenate(hold_y)),
        info={"vendor_subjects": vendor, "field_subjects": field, "window": length, "step": step,
              **({"field_shift": shift} if shift else {})},
        pretrain_groups=vg[order[n_val:]],
    )
