"""One device's round, as both backends return it: :class:`RoundResult` and the tensors a
scheme updated (:func:`partial_update`). The simulated backend (``fedtiny.fl.client_app``) and
the board backend (``fedtiny.devices.backend``) import it; it imports neither of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedtiny.trainer import Trainer


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
