"""The shape of a (partial) update: tensor keys, channel axes, declared channel subsets, and
the checks a decoded update passes before anyone uses it.

A client sends only the tensors its update scheme changes, keyed ``layer<k>.weight`` /
``layer<k>.bias`` for the k-th trainable layer with parameters. A weight tensor updated on a
subset of output channels travels compact (only those channels, along the layer's channel axis)
and the reply's ConfigRecord ``subset`` lists them under ``channels.<key>``. The client, the
codec and the server all read an update through these functions; the server's mean over
updates is :func:`fedtiny.server.aggregate.masked_mean`.
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
