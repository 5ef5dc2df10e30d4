"""Aggregation as plain functions: the per-channel weighted mean of partial updates.

The server averages each output channel over the clients that updated it, weighted by their
example counts; a channel nobody updated keeps the global value. Contributor counts per
channel are returned for the metrics. Central DP's noisy sum is
:func:`fedtiny.budgets.privacy.noisy_sum_mean`.
"""

from __future__ import annotations

import numpy as np

from fedtiny.trainer.updates import Parsed


def masked_mean(global_arrays: dict[str, np.ndarray], updates: list[tuple[float, Parsed]], axes: dict[str, int]
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-channel weighted mean over the clients that updated each channel (in the given order).
    Returns the new arrays and, per key, how many clients updated each channel."""
    out, contributors = {}, {}
    for key, g in global_arrays.items():
        axis = axes[key]
        moved = np.moveaxis(g.astype(np.float64), axis, 0)
        num = np.zeros_like(moved)
        den = np.zeros(moved.shape[0])
        count = np.zeros(moved.shape[0], dtype=np.int64)
        for weight, parsed in updates:
            if key not in parsed:
                continue
            values, channels = parsed[key]
            idx = np.arange(moved.shape[0]) if channels is None else np.asarray(channels)
            num[idx] += weight * np.moveaxis(values.astype(np.float64), axis, 0)
            den[idx] += weight
            count[idx] += 1
        shape = (-1,) + (1,) * (moved.ndim - 1)
        mean = np.where(den.reshape(shape) > 0, num / np.maximum(den, 1e-300).reshape(shape), moved)
        out[key] = np.moveaxis(mean, 0, axis).astype(np.float32)
        contributors[key] = count
    return out, contributors
