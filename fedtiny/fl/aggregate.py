"""Partial (sparse) updates: parsing, validation, and the per-channel weighted mean.

A client sends only the tensors its update scheme changes. A weight tensor updated on a subset
of output channels travels compact (only those channels, along the layer's channel axis) and
the reply's ConfigRecord ``subset`` lists them under ``channels.<key>``. The server averages
each output channel over the clients that updated it, weighted by their example counts; a
channel nobody updated keeps the global value. Contributor counts per channel are returned
for the metrics.
"""

from __future__ import annotations

import numpy as np

Parsed = dict[str, tuple[np.ndarray, list[int] | None]]


def channel_axes(model) -> dict[str, int]:
    """Channel axis of every trainable tensor key (depthwise weights: last axis; others: 0)."""
    axes = {}
    for k, layer in enumerate(model.spec.layers[model.first_trainable :]):
        if layer.has_params:
            axes[f"layer{k}.weight"] = 2 if layer.type == "dwconv2d" else 0
            axes[f"layer{k}.bias"] = 0
    return axes


def declared_subset(subset: dict, key: str, shape: tuple, axis: int
                    ) -> tuple[list[int] | None, tuple, str | None]:
    """The channels a reply declares for tensor `key` (None: all) and the compact shape it must
    then have; or a reason when the declaration is malformed."""
    channels = subset.get(f"channels.{key}")
    if channels is None:
        return None, tuple(shape), None
    channels = [int(c) for c in channels]
    if not channels or channels != sorted(set(channels)) or channels[0] < 0 or channels[-1] >= shape[axis]:
        return None, tuple(shape), f"{key}: channel subset must be sorted, unique and within [0, {shape[axis]})"
    return channels, tuple(shape[:axis]) + (len(channels),) + tuple(shape[axis + 1 :]), None


def parse_update(arrays: dict[str, np.ndarray], subset: dict, shapes: dict[str, tuple], axes: dict[str, int]
                 ) -> tuple[Parsed | None, str | None]:
    """Check a partial update against the expected shapes; returns (parsed, None) or (None, reason)."""
    if not arrays:
        return None, "no parameters in the update"
    unknown = sorted(set(arrays) - set(shapes))
    if unknown:
        return None, f"unexpected arrays {unknown}"
    stray = sorted(k[len("channels."):] for k in subset if k.startswith("channels.") and k[len("channels."):] not in arrays)
    if stray:
        return None, f"channel subsets for arrays not sent: {stray}"
    parsed: Parsed = {}
    for key, values in arrays.items():
        channels, shape, reason = declared_subset(subset, key, tuple(shapes[key]), axes[key])
        if reason is not None:
            return None, reason
        if values.dtype != np.float32:
            return None, f"{key}: dtype {values.dtype}, expected float32"
        if values.shape != shape:
            return None, f"{key}: shape {values.shape}, expected {shape}"
        if not np.isfinite(values).all():
            return None, f"{key}: non-finite values"
        parsed[key] = (values, channels)
    return parsed, None


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
