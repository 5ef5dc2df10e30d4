"""The simulated backend: a device's round run by the C trainer in this process, on the
device's cached features, with the update encoded by the C encoder a board runs.

The update is what a board would send: for every tensor the scheme trained, the change
``w_local - w_global`` (channel subsets compact, listed in the ``subset`` record), encoded into
one uint8 blob per tensor (``fedtiny.trainer.codec``, ``ft_codec.h``). With error feedback the
device keeps the rounding residual in its node state between rounds.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context

from fedtiny import _core
from fedtiny.client.backend import RoundResult, RoundTask, partial_update
from fedtiny.client.records import record_to_params
from fedtiny.trainer import Trainer, codec
from fedtiny.trainer.updates import channel_axes


class SimulatedBackend:
    """One device in simulation: its training data `x`, `y` (features where its scheme starts),
    its node state `state` (the error-feedback residual lives there; None: no state kept), and
    `nan` to send NaN values instead of its change (a fault injection)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, state: Context | None = None, nan: bool = False):
        self.x, self.y, self.state, self.nan = x, y, state, nan

    def train(self, task: RoundTask) -> RoundResult:
        """Load the broadcast values of the tensors the scheme trains (the others stay as in its
        model file, its flash), train, and encode the change w_local - w_global with the C
        encoder (or the DP encoder when ``task.dp`` = (clip, noise std))."""
        trainer = Trainer(task.model, task.train_config)
        received = task.received
        trainer.set_params(record_to_params(ArrayRecord({k: Array(v) for k, v in received.items()}),
                                            trainer.get_params()), only_updated=True)
        stats = trainer.train_epochs(self.x, self.y, epochs=task.epochs, seed=task.seed)
        arrays, subset = partial_update(trainer)
        axes = channel_axes(trainer.model)
        deltas = {}
        for name, local in arrays.items():
            g = received[name]
            channels = subset.get(f"channels.{name}")
            if channels is not None:
                g = np.take(g, channels, axis=axes[name])
            deltas[name] = (local - g).astype(np.float32)
        if self.nan:
            deltas = {k: np.full_like(d, np.nan) for k, d in deltas.items()}
        if task.dp is not None:  # differential privacy: clip the quantized update (and add local noise) in C
            return RoundResult(encode_private(deltas, axes, task.codec, task.key, *task.dp), subset, stats.loss,
                               stats.accuracy, trainer.arena_hwm)
        blobs, residual_norm = encode_update(deltas, axes, task.codec, task.key, self.state)
        return RoundResult(blobs, subset, stats.loss, stats.accuracy, trainer.arena_hwm, residual_norm)


def encode_update(deltas: dict[str, np.ndarray], axes: dict[str, int], codec_cfg, key_parts: tuple[int, int, int],
                  context: Context | None) -> tuple[dict[str, np.ndarray], float]:
    """Encode each tensor's change with the device's C encoder. Weights use per-channel scales
    if configured, biases one scale per tensor; rounding is deterministic with error feedback
    (``codec.rounding=auto``) or as configured. With error feedback the residual of each tensor
    lives in ``context.state['ef-residual']`` between rounds. Returns the blobs and the norm of
    the residual carried into this update (0 without error feedback or in a device's first round)."""
    bits, ef = int(codec_cfg.bits), bool(codec_cfg.error_feedback)
    nearest = codec_cfg.rounding == "nearest" or (codec_cfg.rounding == "auto" and ef)
    stored = {}
    if ef and context is not None and "ef-residual" in context.state.array_records:
        stored = {k: a.numpy() for k, a in context.state.array_records["ef-residual"].items()}
    blobs, kept, carried = {}, {}, 0.0
    for index, key in enumerate(sorted(deltas)):
        d = deltas[key]
        residual = None
        if ef:
            r = stored.get(key)
            residual = np.array(r, np.float32).reshape(-1) if r is not None and r.shape == d.shape else \
                np.zeros(d.size, np.float32)
            carried += float(np.sum(residual.astype(np.float64) ** 2))
        per_channel = bool(codec_cfg.per_channel) and key.endswith(".weight")
        blobs[key] = codec.encode(d, bits, per_channel, codec.layout_of(d.shape, axes[key]),
                                  codec.tensor_key(*key_parts, index), residual, nearest)
        if residual is not None:
            kept[key] = residual.reshape(d.shape)
    if ef and context is not None:
        context.state["ef-residual"] = ArrayRecord({k: Array(v) for k, v in kept.items()})
    return blobs, float(np.sqrt(carried))


def encode_private(deltas: dict[str, np.ndarray], axes: dict[str, int], codec_cfg, key_parts: tuple[int, int, int],
                   clip: float, noise_std: float) -> dict[str, np.ndarray]:
    """Encode the whole update with the device's C routine for DP (``ft_codec_encode_update``):
    clip to L2 norm `clip` over all tensors so that the *decoded* update stays within it, after
    adding N(0, noise_std^2) per value when noise_std > 0 (local DP)."""
    bits = int(codec_cfg.bits)
    nearest = codec_cfg.rounding == "nearest"
    keys = sorted(deltas)
    tensors = []
    for index, key in enumerate(keys):
        d = np.ascontiguousarray(deltas[key], np.float32).reshape(-1)
        layout = codec.layout_of(deltas[key].shape, axes[key])
        per_channel = bool(codec_cfg.per_channel) and key.endswith(".weight")
        tensors.append((bits, int(per_channel), layout.channels, int(layout.channel_last), int(nearest), d,
                        codec.tensor_key(*key_parts, index)))
    status, blobs, _, _ = _core.codec_encode_update(tensors, clip, noise_std, codec.tensor_key(*key_parts, 0xD9))
    if status != 0:
        raise ValueError(f"DP encoding failed: {_core.status_name(status)}")
    return dict(zip(keys, blobs))
