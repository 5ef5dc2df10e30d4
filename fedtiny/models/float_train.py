"""Pretraining through fedtiny's C float path: the same backbone bytes on every machine.

A backbone's architecture comes from PyTorch (:mod:`fedtiny.models.nets` or a plugin's
``nn.Sequential``), but its weights are drawn and trained here, without PyTorch's kernels,
whose vectorised reductions differ by instruction set (AVX2, AVX-512, NEON) and thread count:

* **Initialisation**: PyTorch's default ranges for Conv2d and Linear (weights and biases uniform
  in ``±1/sqrt(fan_in)``), drawn from numpy's PCG64 seeded by ``(seed, layer)``: integers turned
  into floats exactly, one multiplication by the bound, one rounding to float32.
* **Forward and backward**: the C trainer (``device_trainer_c``) with every layer trainable in
  float32 — the code that runs on the boards, compiled with ``-ffp-contract=off``, every sum in a
  fixed order, its own ``expf``/``logf`` — on the int8 model inputs a device sees.
* **Batches**: a batch's gradient is the sum of the gradients of fixed chunks of
  :data:`CHUNK` samples (each chunk summed one sample at a time by the C trainer), added in chunk
  order. Chunks run on worker threads (the C trainer releases the GIL), so the result does not
  depend on how many threads there are.
* **Optimizer**: Adam (Kingma and Ba, with PyTorch's L2 ``weight_decay``) in float32 numpy
  element-wise operations (multiply, add, divide, square root: each correctly rounded under
  IEEE 754, whatever SIMD path numpy takes); the bias corrections ``beta^t`` are running
  products, not ``pow``.
* **Sample order**: numpy's PCG64 permutation (integer arithmetic).

:data:`RECIPE` versions all of this and is part of the backbone cache key.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedtiny.trainer import Model, TrainConfig, Trainer
from fedtiny.trainer.model_format import ModelSpec

RECIPE = 1
CHUNK = 16  # samples per gradient chunk


def init_params(spec: ModelSpec, seed: int) -> None:
    """Draw every weight and bias of `spec` in place: uniform in ``±1/sqrt(fan_in)`` (PyTorch's
    default for Conv2d and Linear), float32, from PCG64 seeded by ``(seed, layer index)``."""
    for i, layer in enumerate(spec.layers):
        if not layer.has_params:
            continue
        fan_in = layer.weights.size // int(layer.out_shape[2])
        bound = 1.0 / math.sqrt(fan_in)
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x1417, i])
        layer.weights = ((rng.random(layer.weights.shape) * 2.0 - 1.0) * bound).astype(np.float32)
        layer.bias = ((rng.random(layer.bias.shape) * 2.0 - 1.0) * bound).astype(np.float32)


class Adam:
    """Adam on float32 numpy arrays, updated in place (PyTorch's form, L2 weight decay added to
    the gradient): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``."""

    def __init__(self, params: list[np.ndarray], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        f = np.float32
        self.lr, self.b1, self.b2, self.eps, self.wd = f(lr), f(betas[0]), f(betas[1]), f(eps), f(weight_decay)
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.p1 = self.p2 = f(1.0)  # b1^t, b2^t as running products

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        one = np.float32(1.0)
        self.p1, self.p2 = self.p1 * self.b1, self.p2 * self.b2
        c1, c2 = one - self.p1, one - self.p2
        for p, g, m, v in zip(params, grads, self.m, self.v):
            if self.wd:
                g = g + self.wd * p
            m *= self.b1
            m += (one - self.b1) * g
            v *= self.b2
            v += (one - self.b2) * (g * g)
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def spec_params(spec: ModelSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) per layer of an all-trainable spec, as the trainer takes them (empty
    arrays for pooling and flatten)."""
    empty = np.zeros(0, np.float32)
    return [(lay.weights, lay.bias) if lay.has_params else (empty, empty) for lay in spec.layers]


def fit(spec: ModelSpec, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch_size: int,
        weight_decay: float, seed: int, workers: int | None = None, progress=None) -> ModelSpec:
    """Train every layer of the all-float `spec` (in place, and returned) on int8 model inputs
    `x` and labels `y`: Adam over shuffled batches, gradients from the C trainer in chunks of
    :data:`CHUNK` samples, on `workers` threads (default: one per CPU this process may use; the
    result is the same for any number). `progress(epoch, epochs, mean_loss)` is called after
    each epoch."""
    if spec.first_trainable != 0:
        raise ValueError("fit trains an all-float model (every layer trainable)")
    model = Model(spec)
    config = TrainConfig(lr=1.0, batch_size=CHUNK, with_prefix=True)
    chunks_per_batch = -(-int(batch_size) // CHUNK)
    n_workers = max(1, min(int(workers or _cpus()), chunks_per_batch))
    trainers = [Trainer(model, config) for _ in range(n_workers)]
    pairs = [(np.array(w, dtype=np.float32), np.array(b, dtype=np.float32)) for w, b in spec_params(spec)]
    live = [a for pair in pairs for a in pair if a.size]  # in the order gradient_sums gives tensors
    opt = Adam(live, lr, weight_decay=weight_decay)
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=np.uint8)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xADA])

    def run(t: int, batch: np.ndarray) -> list[tuple[int, list, float]]:
        trainers[t].set_params(pairs)
        out = []
        for j in range(t, -(-len(batch) // CHUNK), n_workers):
            idx = batch[j * CHUNK : (j + 1) * CHUNK]
            sums, loss, _, _ = trainers[t].gradient_sums(x[idx], y[idx])
            out.append((j, sums, loss))
        return out

    with ThreadPoolExecutor(n_workers) as pool:
        for epoch in range(int(epochs)):
            order = rng.permutation(len(y))
            epoch_loss = 0.0
            for start in range(0, len(y), int(batch_size)):
                batch = order[start : start + int(batch_size)]
                results = sorted((r for part in pool.map(run, range(n_workers), [batch] * n_workers) for r in part),
                                 key=lambda r: r[0])
                total = None
                for _, sums, loss in results:
                    grads = [g for pair in sums for g in pair if g is not None]
                    total = grads if total is None else [a + b for a, b in zip(total, grads)]
                    epoch_loss += loss
                n = np.float32(len(batch))
                opt.step(live, [g / n for g in total])
            if progress is not None:
                progress(epoch + 1, int(epochs), epoch_loss / len(y))
    for lay, (w, b) in zip(spec.layers, pairs):
        if lay.has_params:
            lay.weights, lay.bias = w, b
    return spec


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def float_accuracy(spec: ModelSpec, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the all-float `spec` on real-valued inputs `x` (quantized to its int8 inputs)."""
    model = Model(spec)
    trainer = Trainer(model, TrainConfig(with_prefix=True))
    return trainer.evaluate(model.quantize_input(x), y).accuracy
