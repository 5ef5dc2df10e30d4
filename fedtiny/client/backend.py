"""The backend interface: one device's training round, whoever runs it.

A :class:`Backend` takes a :class:`RoundTask` (the model, the device's training settings, the
broadcast values, epochs, seed, codec settings, rounding key and DP settings) and returns a
:class:`RoundResult` (the encoded update and the round's metrics). Two backends implement it:
:class:`fedtiny.client.simulated.SimulatedBackend` (the C trainer in this process) and
:class:`fedtiny.devices.backend.BoardBackend` (the same C trainer on a real or emulated board).
This module imports neither of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedtiny.trainer import Model, TrainConfig, Trainer


@dataclass(frozen=True)
class RoundTask:
    """What a device's training round needs, whichever backend runs it."""

    model: Model
    train_config: TrainConfig  # the device's scheme, with the round's lr, momentum, batch size, prox mu
    received: dict[str, np.ndarray]  # the broadcast values (float32, decoded)
    epochs: int
    seed: int  # the trainer's shuffling and stochastic-rounding seed
    codec: Any  # the run's ``codec`` config group (bits, per_channel, error_feedback, rounding)
    key: tuple[int, int, int]  # (seed, round, partition): the update's rounding keys derive from it
    dp: tuple[float, float] | None = None  # (clip, local noise std) under differential privacy


class Backend(Protocol):
    """Runs one device's round (see the module docstring)."""

    def train(self, task: RoundTask) -> RoundResult: ...


@dataclass
class RoundResult:
    """What a device sends back from a training round (simulated or on a board)."""

    blobs: dict[str, np.ndarray]  # encoded change per tensor (ft_codec blobs)
    subset: dict  # channels.<tensor>: the output channels a compact tensor carries
    loss: float  # last epoch's mean training loss
    accuracy: float  # last epoch's training accuracy
    arena_bytes: int  # arena high-water mark of the trainer
    residual_norm: float = 0.0  # error-feedback residual carried into this update


def partial_update(trainer: Trainer) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors the scheme updated; channel subsets travel compact, listed in the subset record."""
    arrays, subset = {}, {}
    model = trainer.model
    for k, (w, b) in enumerate(trainer.get_params()):
        kind, bias_on, channels = trainer.layer_update(k)
        layer = model.spec.layers[model.first_trainable + k]
        if kind == "all":
            arrays[f"layer{k}.weight"] = np.ascontiguousarray(w)
        elif kind == "channels":
            axis = 2 if layer.type == "dwconv2d" else 0
            arrays[f"layer{k}.weight"] = np.ascontiguousarray(np.take(w, channels, axis=axis))
            subset[f"channels.layer{k}.weight"] = [int(c) for c in channels]
        if bias_on:
            arrays[f"layer{k}.bias"] = np.ascontiguousarray(b)
    return arrays, subset
