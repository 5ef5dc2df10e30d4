"""Typed Python face of the C trainer: argument checks, shapes and exceptions.

>>> model = Model(model_bytes)
>>> trainer = Trainer(model, TrainConfig(lr=0.05, batch_size=16))
>>> trainer.plan.arena_bytes, trainer.arena_hwm
>>> stats = trainer.train_epochs(x_int8, y, epochs=2, seed=0)
>>> result = trainer.evaluate(x_int8, y, return_logits=True)

Samples are int8 arrays shaped ``(N, *sample_shape)`` or ``(N, sample_size)``: model inputs
when ``TrainConfig.with_prefix`` is true (the frozen int8 prefix runs on every step),
otherwise boundary features from :meth:`Model.prefix_features` (computed once; the
frozen layers never change).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from fedtiny import _core
from fedtiny.errors import ConfigError, ModelFormatError, TrainerError
from fedtiny.trainer import model_format
from fedtiny.trainer.model_format import ModelSpec, weight_shape


class LayerOutput(NamedTuple):
    """Output of one layer for a batch: int8 values (frozen layers, else None) and floats
    (dequantized for frozen layers, computed in float32 for trainable layers)."""

    index: int
    type: str
    int8: np.ndarray | None
    real: np.ndarray


class Model:
    """A validated model. Holds the bytes the C trainer uses in place."""

    def __init__(self, data: bytes | bytearray | memoryview | np.ndarray | ModelSpec) -> None:
        if isinstance(data, ModelSpec):
            data = model_format.to_bytes(data)
        self._bytes = model_format.as_aligned_bytes(data)
        status, handle = _core.model_load(self._bytes)
        if status != 0:
            raise ModelFormatError(_core.status_name(status), "model rejected")
        self._handle = handle
        self.spec: ModelSpec = model_format.from_bytes(self._bytes)
        self.layers: list[dict] = [handle.layer(i) for i in range(handle.num_layers)]
        self._scratch = np.zeros(max([0] + [lay["scratch_bytes"] for lay in self.layers]), dtype=np.uint8)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Model:
        with open(path, "rb") as fh:
            return cls(fh.read())

    def to_bytes(self) -> bytes:
        return self._bytes.tobytes()

    @property
    def num_classes(self) -> int:
        return self._handle.num_classes

    @property
    def first_trainable(self) -> int:
        return self._handle.first_trainable

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self._handle.input_shape)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape of the boundary activation (input of the first trainable layer)."""
        first = self.first_trainable
        return tuple(self.layers[first - 1]["out_shape"]) if first > 0 else self.input_shape

    @property
    def feature_quant(self) -> tuple[float, int]:
        """(scale, zero point) of the boundary activation."""
        first = self.first_trainable
        if first == 0:
            return self._handle.input_scale, self._handle.input_zero_point
        return self.layers[first - 1]["out_scale"], self.layers[first - 1]["output_offset"]

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Quantize real-valued inputs with the model's input scale and zero point."""
        scale, zp = self._handle.input_scale, self._handle.input_zero_point
        return np.clip(np.round(np.asarray(x, dtype=np.float64) / scale) + zp, -128, 127).astype(np.int8)

    def _batch(self, x: np.ndarray, shape: tuple[int, ...], what: str, dtype: type = np.int8) -> np.ndarray:
        x = np.asarray(x)
        size = int(np.prod(shape))
        if x.dtype != np.dtype(dtype):
            raise TrainerError("BAD_DATA", f"{what} must be {np.dtype(dtype).name}, got {x.dtype}")
        if x.ndim < 1 or x.size != x.shape[0] * size:
            raise TrainerError("BAD_DATA", f"{what} must hold N samples of shape {shape}, got {x.shape}")
        return np.ascontiguousarray(x.reshape(x.shape[0], size))

    def features_at(self, x: np.ndarray, k: int) -> np.ndarray:
        """float32 activations entering trainable layer k (k >= 1), computed once from model
        inputs with the model's stored float weights: samples for ``TrainConfig(start_layer=k)``."""
        n_train = len(self.layers) - self.first_trainable
        if not 1 <= k < n_train:
            raise TrainerError("BAD_CONFIG", f"start layer must be in [1, {n_train}), got {k}")
        out = self.forward(x)[self.first_trainable + k - 1].real
        return np.ascontiguousarray(out, dtype=np.float32)

    def prefix_features(self, x: np.ndarray) -> np.ndarray:
        """Run the frozen int8 prefix on model inputs; returns int8 ``(N, *feature_shape)``."""
        xs = self._batch(x, self.input_shape, "inputs")
        out = np.empty((xs.shape[0], int(np.prod(self.feature_shape))), dtype=np.int8)
        for n in range(xs.shape[0]):
            cur = xs[n]
            for i in range(self.first_trainable):
                nxt = np.empty(int(np.prod(self.layers[i]["out_shape"])), dtype=np.int8)
                self._check(_core.layer_forward_s8(self._handle, i, cur, nxt, self._scratch), i)
                cur = nxt
            out[n] = cur
        return out.reshape((xs.shape[0],) + self.feature_shape)

    def forward(self, x: np.ndarray, params: list[tuple[np.ndarray, np.ndarray]] | None = None) -> list[LayerOutput]:
        """Per-layer outputs for a batch of model inputs. ``params`` (per trainable layer,
        (weight, bias)) defaults to the model's stored float values."""
        xs = self._batch(x, self.input_shape, "inputs")
        if params is None:
            params = [(lay.weights, lay.bias) for lay in self.spec.layers[self.first_trainable :]]
        n = xs.shape[0]
        outputs: list[LayerOutput] = []
        cur8 = xs
        curf = None
        for i, info in enumerate(self.layers):
            size = int(np.prod(info["out_shape"]))
            if not info["trainable"]:
                out8 = np.empty((n, size), dtype=np.int8)
                for s in range(n):
                    self._check(_core.layer_forward_s8(self._handle, i, cur8[s], out8[s], self._scratch), i)
                real = info["out_scale"] * (out8.astype(np.float32) - info["output_offset"])
                outputs.append(LayerOutput(i, model_format.LAYER_NAMES[info["type"]], out8, real))
                cur8 = out8
                continue
            if curf is None:
                scale, zp = self.feature_quant
                curf = (np.float32(scale) * (cur8.astype(np.float32) - np.float32(zp))).astype(np.float32)
            w, b = params[i - self.first_trainable]
            w = np.ascontiguousarray(w if w is not None else np.zeros(0), dtype=np.float32).ravel()
            b = np.ascontiguousarray(b if b is not None else np.zeros(0), dtype=np.float32).ravel()
            outf = np.empty((n, size), dtype=np.float32)
            for s in range(n):
                _core.layer_forward_f32(self._handle, i, w, b, curf[s], outf[s])
            outputs.append(LayerOutput(i, model_format.LAYER_NAMES[info["type"]], None, outf))
            curf = outf
        return outputs

    @staticmethod
    def _check(status: int, layer: int) -> None:
        if status != 0:
            raise TrainerError(_core.status_name(status), f"layer {layer}")


UPDATE_KINDS = {"none": 0, "all": 1}


@dataclass(frozen=True)
class LayerUpdate:
    """What one trainable layer updates: ``weights`` is ``"all"``, ``"none"`` or a number of
    output channels (the ones with the largest weight L2 norm in the model); ``bias`` on/off.
    Tensors that are not updated stay in the model (flash on a board) and cost no RAM."""

    weights: str | int = "all"
    bias: bool = True

    def __post_init__(self) -> None:
        w = self.weights
        if isinstance(w, bool) or not (w in UPDATE_KINDS or (isinstance(w, (int, np.integer)) and w >= 1)):
            raise ConfigError(f"LayerUpdate.weights must be 'all', 'none' or a channel count >= 1, got {w!r}")

    def _arg(self) -> tuple[int, int, int]:
        if isinstance(self.weights, str):
            return UPDATE_KINDS[self.weights], int(bool(self.bias)), 0
        return 2, int(bool(self.bias)), int(self.weights)


PRECISIONS = ("float32", "int8")  # index = ft_precision
ROUNDINGS = ("stochastic", "nearest")  # index = ft_rounding
# the trainer's bounds (FT_MAX_* in ft_trainer.h): ft_trainer_plan and a board's TRAIN refuse more
MAX_EPOCHS, MAX_BATCH = int(_core.MAX_EPOCHS), int(_core.MAX_BATCH)
MAX_LR, MAX_WEIGHT_DECAY, MAX_PROX_MU = float(_core.MAX_LR), float(_core.MAX_WEIGHT_DECAY), float(_core.MAX_PROX_MU)


@dataclass(frozen=True)
class TrainConfig:
    """SGD settings of the on-device trainer. ``update`` (one :class:`LayerUpdate` per
    trainable layer) selects a sparse update; None updates every trainable tensor."""

    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 16
    with_prefix: bool = False
    prox_mu: float = 0.0  # FedProx: adds prox_mu * (w - anchor) to every gradient
    update: tuple[LayerUpdate, ...] | None = None
    start_layer: int = 0  # > 0: float32 samples enter trainable layer k (see Model.features_at)
    # updated weights held as "float32" or "int8" (per-channel scale, QAS step; see ft_trainer.h)
    precision: str = "float32"
    rounding: str = "stochastic"  # int8 steps: "stochastic" (unbiased, seeded) or "nearest"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not (0.0 <= self.momentum < 1.0):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size}")
        if not (np.isfinite(self.prox_mu) and self.prox_mu >= 0):
            raise ConfigError(f"prox_mu must be >= 0, got {self.prox_mu}")

        if int(self.start_layer) != self.start_layer or self.start_layer < 0:
            raise ConfigError(f"start_layer must be an integer >= 0, got {self.start_layer}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"rounding must be one of {list(ROUNDINGS)}, got {self.rounding!r}")
        if self.update is not None and not all(isinstance(u, LayerUpdate) for u in self.update):
            raise ConfigError("update must be a sequence of LayerUpdate, one per trainable layer")

    def _args(self) -> tuple:
        updates = [u._arg() for u in self.update] if self.update is not None else []
        return (float(self.lr), float(self.momentum), float(self.weight_decay), int(self.batch_size),
                int(bool(self.with_prefix)), float(self.prox_mu), int(self.start_layer), updates,
                self._precision_arg(), self._rounding_arg())

    def _precision_arg(self) -> int:
        return PRECISIONS.index(self.precision)

    def _rounding_arg(self) -> int:
        return ROUNDINGS.index(self.rounding)


@dataclass(frozen=True)
class Plan:
    """Itemised arena plan (bytes) of a model and config."""

    arena_bytes: int
    params_bytes: int  # float32 copies of updated tensors
    qparams_bytes: int  # int8 updated weights
    qscale_bytes: int  # their per-channel float scales
    momentum_bytes: int
    grads_bytes: int
    anchor_bytes: int
    index_bytes: int
    prefix_bytes: int
    scratch_bytes: int
    acts_bytes: int
    grad_acts_bytes: int
    param_count: int  # floats held in RAM as parameter copies (int8 weights not included)
    update_count: int  # scalars the update changes
    first_backward: int  # earliest trainable layer backprop reaches
    sample_size: int
    feature_size: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def plan(model: Model, config: TrainConfig) -> Plan:
    """Exact arena bytes the trainer will use for ``model`` under ``config``."""
    n_train = len(model.layers) - model.first_trainable
    if config.update is not None and len(config.update) != n_train:
        raise TrainerError("BAD_CONFIG", f"update needs one LayerUpdate per trainable layer ({n_train}), "
                                         f"got {len(config.update)}")
    status, d = _core.plan(model._handle, *config._args())
    if status != 0:
        raise TrainerError(_core.status_name(status), "plan (is every LayerUpdate valid for its layer, and "
                                                      "does the scheme update anything?)")
    return Plan(**d)


class EpochStats(NamedTuple):
    loss: float  # mean loss over the last epoch (before each step's update)
    accuracy: float
    samples: int
    steps: int


class EvalResult(NamedTuple):
    loss: float
    accuracy: float
    samples: int
    logits: np.ndarray | None


class Trainer:
    """The C trainer on a caller-owned arena (a numpy buffer, or one you pass)."""

    def __init__(self, model: Model, config: TrainConfig, arena: np.ndarray | None = None) -> None:
        self.model = model
        self.config = config
        self.plan = plan(model, config)
        if arena is None:
            arena = np.zeros(self.plan.arena_bytes + _core.ARENA_ALIGN, dtype=np.uint8)
            start = (-arena.ctypes.data) % _core.ARENA_ALIGN
            arena = arena[start : start + self.plan.arena_bytes]
        if not isinstance(arena, np.ndarray) or arena.dtype != np.uint8 or not arena.flags.c_contiguous:
            raise TrainerError("BAD_CONFIG", "arena must be a C-contiguous uint8 numpy array")
        self.arena = arena
        status, handle = _core.trainer_init(model._handle, *config._args(), arena)
        if status != 0:
            raise TrainerError(_core.status_name(status), "trainer init")
        self._handle = handle
        self._sample_shape = model.input_shape if (config.with_prefix or model.first_trainable == 0) else model.feature_shape
        self._sample_dtype = np.int8
        if config.start_layer > 0:
            self._sample_shape = tuple(model.layers[model.first_trainable + config.start_layer - 1]["out_shape"])
            self._sample_dtype = np.float32

    @property
    def arena_hwm(self) -> int:
        """Highest arena byte the trainer uses (reported by the C trainer)."""
        return int(self._handle.hwm())

    def _data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs = self.model._batch(x, self._sample_shape, "samples", self._sample_dtype)
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != xs.shape[0]:
            raise TrainerError("BAD_DATA", f"labels must be 1-D with {xs.shape[0]} entries, got {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= self.model.num_classes):
            raise TrainerError("BAD_LABEL", f"labels must be in [0, {self.model.num_classes})")
        return xs, np.ascontiguousarray(y, dtype=np.uint8)

    def _raise(self, status: int, what: str) -> None:
        if status != 0:
            raise TrainerError(_core.status_name(status), what)

    def train_epochs(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, seed: int = 0) -> EpochStats:
        """SGD over ``epochs`` shuffled passes (order fixed by ``seed``)."""
        xs, ys = self._data(x, y)
        if int(epochs) != epochs or epochs < 0:
            raise ConfigError(f"epochs must be an integer >= 0, got {epochs}")
        if xs.shape[0] == 0:
            raise TrainerError("BAD_DATA", "no samples to train on")
        status, loss, correct, count, steps = self._handle.train_epochs(xs, ys, int(epochs), int(seed) & 0xFFFFFFFF)
        self._raise(status, "train_epochs")
        return EpochStats(float(loss), correct / count if count else 0.0, int(count), int(steps))

    def step(self, x: np.ndarray, y: np.ndarray) -> EpochStats:
        """One SGD step on exactly this batch (no shuffling); returns the batch's mean loss
        and accuracy before the update."""
        xs, ys = self._data(x, y)
        if xs.shape[0] == 0:
            raise TrainerError("BAD_DATA", "empty batch")
        status, loss, correct, count, steps = self._handle.step(xs, ys)
        self._raise(status, "step")
        return EpochStats(float(loss) / count, correct / count, int(count), int(steps))

    def evaluate(self, x: np.ndarray, y: np.ndarray, return_logits: bool = False) -> EvalResult:
        xs, ys = self._data(x, y)
        logits = np.empty((xs.shape[0], self.model.num_classes) if return_logits else 0, dtype=np.float32)
        status, loss, correct, count, _ = self._handle.evaluate(xs, ys, logits.reshape(-1))
        self._raise(status, "evaluate")
        return EvalResult(float(loss), correct / count if count else 0.0, int(count), logits if return_logits else None)

    def gradients(self, x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """Mean-loss gradients per trainable layer (weight, bias), without updating. A tensor
        the update does not change gives None; with a channel subset, the other channels are 0."""
        sums, _, _, count = self.gradient_sums(x, y)
        scale = np.float32(max(1, count))
        return [(gw / scale if gw is not None else None, gb / scale if gb is not None else None) for gw, gb in sums]

    def gradient_sums(self, x: np.ndarray, y: np.ndarray) -> tuple[list[tuple[np.ndarray | None, np.ndarray | None]],
                                                                   float, int, int]:
        """Summed-loss gradients per trainable layer (weight, bias), added one sample at a time in
        the order given, without updating (None for a tensor the update does not change); and the
        batch's summed loss, correct count and size. Releases the GIL while the C trainer runs."""
        xs, ys = self._data(x, y)
        status, loss, correct, count, _ = self._handle.accumulate(xs, ys)
        self._raise(status, "gradients")
        out = []
        for k, (w, b) in enumerate(self._shapes()):
            gw, gb = np.zeros(w, np.float32), np.zeros(b, np.float32)
            self._raise(self._handle.layer_grads(k, gw.reshape(-1), gb), "gradients")
            kind, bias_on, _ = self._handle.layer_update(k)
            out.append((gw if kind else None, gb if bias_on else None))
        return out, float(loss), int(correct), int(count)

    def _shapes(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        shapes = []
        for k, layer in enumerate(self.model.spec.layers[self.model.first_trainable :]):
            info = self.model.layers[self.model.first_trainable + k]
            shapes.append((weight_shape(layer) if info["weight_count"] else (0,), (info["bias_count"],)))
        return shapes

    def layer_update(self, k: int) -> tuple[str, bool, list[int]]:
        """What trainable layer k updates: weights ``"none"``, ``"all"`` or ``"channels"``, the
        bias flag, and the output channels whose weights change."""
        kind, bias_on, channels = self._handle.layer_update(k)
        return ("none", "all", "channels")[kind], bool(bias_on), list(channels)

    def updated_channels(self, k: int) -> list[int]:
        """Output channels of trainable layer k whose weights the update changes."""
        return self.layer_update(k)[2]

    def get_params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Current parameters per trainable layer (weight, bias): copies, including tensors the
        update does not change (those are the model's values)."""
        out = []
        for k, (wshape, _) in enumerate(self._shapes()):
            status, w, b = self._handle.layer_params(k)
            self._raise(status, "get_params")
            out.append((w.reshape(wshape), b))
        return out

    def device_params(self, params: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The values a device trains from when sent `params`: those of the tensors its update
        changes, the model's own (its flash) for the others; with int8 precision a channel subset
        also keeps the model's values in the channels it does not update."""
        kept = []
        for k, ((w, b), (w0, b0)) in enumerate(zip(params, self.get_params())):
            kind, bias_on, channels = self.layer_update(k)
            if kind == "channels" and self.config.precision == "int8":
                # int8 subsets hold only their channels; the others stay the model's (flash)
                axis = w0.ndim - 1 if self.model.spec.layers[self.model.first_trainable + k].type == "dwconv2d" else 0
                merged = np.array(w0, np.float32, copy=True)
                index = [slice(None)] * w0.ndim
                index[axis] = channels
                merged[tuple(index)] = np.asarray(w, np.float32)[tuple(index)]
                w = merged
            kept.append((w if kind != "none" else w0, b if bias_on else b0))
        return kept

    def set_params(self, params: list[tuple[np.ndarray, np.ndarray]], only_updated: bool = False) -> None:
        """Overwrite the trainable parameters (shapes as :meth:`get_params` returns). Tensors
        the update does not change live in the model: they must be passed unchanged, or, with
        ``only_updated=True``, they are ignored (the device keeps its model's values; with int8
        precision this includes the channels a channel subset does not update). With
        ``prox_mu > 0`` the new parameters also become the FedProx anchor."""
        shapes = self._shapes()
        if only_updated and len(params) == len(shapes):
            params = self.device_params(params)
        if len(params) != len(shapes):
            raise TrainerError("BAD_CONFIG", f"expected {len(shapes)} layers of parameters, got {len(params)}")
        for k, ((w, b), (ws, bs)) in enumerate(zip(params, shapes)):
            w = np.ascontiguousarray(w, dtype=np.float32)
            b = np.ascontiguousarray(b, dtype=np.float32)
            if w.shape != tuple(ws) or b.shape != tuple(bs):
                raise TrainerError("BAD_CONFIG", f"layer {k}: expected shapes {ws}, {bs}; got {w.shape}, {b.shape}")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise TrainerError("BAD_CONFIG", f"layer {k}: parameters must be finite")
            status = self._handle.set_layer_params(k, w.reshape(-1), b)
            if status != 0:
                raise TrainerError(_core.status_name(status),
                                   f"set_params layer {k} (a tensor this update does not change must keep the "
                                   "model's values)")
        self._raise(self._handle.set_anchor(), "set_params")
