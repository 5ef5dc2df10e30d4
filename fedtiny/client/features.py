"""Frozen-prefix features, computed once per (model, data) and shared through the disk.

A device trains its float suffix on what the frozen int8 prefix makes of its samples; those
features depend only on the model file, the samples and the layer where the device's scheme
starts. :func:`cached_features` computes them once and keeps them under
``<cache_dir>/features/`` as ``.npy`` files that every later caller maps read-only
(``np.load(mmap_mode="r")``): every worker of a run, every run of a sweep, the server's
evaluation data. Pages are shared by the OS, not copied per process.

The file name is a SHA-256 over everything the result depends on: a format tag, the trainer
version, the model file's bytes, the start layer and the samples' dtype, shape and bytes. A file
is written to a temporary name, flushed and renamed, so a reader never sees half of one; a file
that cannot be mapped (truncated, a bad header) or holds another number of rows is computed again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from fedtiny import _core
from fedtiny.trainer import Model

FORMAT = b"fedtiny-features-1"


def feature_key(model: Model, x: np.ndarray, start_layer: int, model_bytes: bytes | None = None) -> str:
    h = hashlib.sha256(FORMAT)
    h.update(str(_core.TRAINER_VERSION).encode())
    h.update(model_bytes if model_bytes is not None else model.to_bytes())
    h.update(f"|{start_layer}|{x.dtype.str}|{x.shape}|".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def compute_features(model: Model, x: np.ndarray, start_layer: int) -> np.ndarray:
    """Int8 boundary features (start_layer 0) or float32 features entering trainable layer
    `start_layer`, of float samples `x`."""
    q = model.quantize_input(x)
    return model.features_at(q, start_layer) if start_layer else model.prefix_features(q)


def cached_features(cache_dir: str | Path | None, model: Model, x: np.ndarray, start_layer: int = 0,
                    model_bytes: bytes | None = None) -> np.ndarray:
    """The features of `x` (see :func:`compute_features`), from the cache when it holds them;
    without a cache directory they are computed in memory."""
    if cache_dir is None:
        return compute_features(model, x, start_layer)
    key = feature_key(model, x, start_layer, model_bytes)
    path = Path(cache_dir).expanduser() / "features" / key[:2] / f"{key}.npy"
    if path.exists():
        try:
            out = np.load(path, mmap_mode="r")
            if len(out) == len(x):
                return out
        except (OSError, ValueError):  # damaged: computed again below
            pass
    feats = np.ascontiguousarray(compute_features(model, x, start_layer))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, feats)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")
