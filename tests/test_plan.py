"""The plan's arena size equals the memory the trainer really touches.

The arena is painted with a byte pattern, the trainer initialises, trains and evaluates in
it, and the highest changed byte is found from Python (two patterns, so a written byte equal
to one pattern cannot hide)."""

from __future__ import annotations

import numpy as np
import pytest

from fedtiny.errors import TrainerError
from fedtiny.trainer import LayerSpec, Model, ModelSpec, TrainConfig, Trainer, plan
from tests.models import random_model

SUFFIXES = [("fc",), ("fc", "fc"), ("conv2d", "fc"), ("dwconv2d", "avgpool", "fc"),
            ("conv2d", "avgpool", "flatten", "fc"), ("conv2d", "dwconv2d", "flatten", "fc", "fc")]


def _painted_peak(model: Model, config: TrainConfig, x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    need = plan(model, config).arena_bytes
    peak = 0
    hwm = -1
    for pattern in (0xA5, 0x5A):
        backing = np.full(need + 4096 + 8, pattern, dtype=np.uint8)
        start = (-backing.ctypes.data) % 8
        arena = backing[start : start + need + 4096]  # more than needed: the trainer must stay below `need`
        trainer = Trainer(model, config, arena=arena)
        trainer.train_epochs(x, y, epochs=1, seed=1)
        trainer.evaluate(x, y)
        touched = np.flatnonzero(arena != pattern)
        peak = max(peak, int(touched[-1]) + 1 if touched.size else 0)
        hwm = trainer.arena_hwm
    return peak, hwm


@pytest.mark.parametrize("suffix", SUFFIXES, ids="-".join)
@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("momentum,prox_mu", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.1)])
def test_plan_equals_measured_high_water_mark(suffix, with_prefix, momentum, prox_mu):
    rng = np.random.default_rng(len(suffix) * 10 + int(with_prefix))
    spec = random_model(rng, frozen=("conv2d", "dwconv2d"), trainable=suffix)
    model = Model(spec)
    config = TrainConfig(lr=0.01, momentum=momentum, batch_size=3, with_prefix=with_prefix, prox_mu=prox_mu)
    x = rng.integers(-128, 128, (7, *model.input_shape)).astype(np.int8)
    samples = x if with_prefix else model.prefix_features(x)
    y = rng.integers(0, model.num_classes, 7)
    p = plan(model, config)
    peak, hwm = _painted_peak(model, config, samples, y)
    assert peak == p.arena_bytes == hwm
    assert p.anchor_bytes == (p.params_bytes if prox_mu > 0 else 0)
    parts = (p.params_bytes + p.momentum_bytes + p.grads_bytes + p.anchor_bytes + p.prefix_bytes + p.scratch_bytes + p.acts_bytes
             + p.grad_acts_bytes)
    assert parts <= p.arena_bytes < parts + 8 * (2 * len(suffix) + 8)  # only alignment padding in between


def test_plan_by_hand():
    """FC head 12 -> 3 on a frozen FC 16 -> 12, momentum on, prefix inside the trainer."""
    rng = np.random.default_rng(0)
    frozen = LayerSpec("fc", (1, 1, 16), (1, 1, 12), out_scale=0.05, weights=np.ones((12, 16), np.int8),
                       bias=np.zeros(12, np.int32), multiplier=np.full(12, 2**30, np.int32), shift=np.full(12, -8, np.int32))
    head = LayerSpec("fc", (1, 1, 12), (1, 1, 3), trainable=True, weights=rng.normal(size=(3, 12)).astype(np.float32),
                     bias=np.zeros(3, np.float32))
    model = Model(ModelSpec((1, 1, 16), 0.1, 0, 3, [frozen, head]))
    p = plan(model, TrainConfig(momentum=0.9, with_prefix=True))
    params = (12 * 3 + 3) * 4  # 156
    assert (p.params_bytes, p.momentum_bytes, p.grads_bytes) == (params, params, params)
    assert p.prefix_bytes == 12  # one int8 output buffer of the frozen FC
    assert p.acts_bytes == (12 + 3) * 4  # boundary features and logits, float32
    assert p.grad_acts_bytes == 3 * 4  # dL/dlogits only: nothing below the head needs a gradient
    # buffers start 8-byte aligned: params [0, 156) momentum [160, 316) grads [320, 476)
    # prefix [480, 492) features [496, 544) logits [544, 556) dL/dlogits [560, 572)
    assert p.arena_bytes == 572
    # no momentum, cached features: params [0, 156) grads [160, 316) features [320, 368)
    # logits [368, 380) dL/dlogits [384, 396)
    assert plan(model, TrainConfig(momentum=0.0, with_prefix=False)).arena_bytes == 396


def test_arena_too_small_is_refused():
    rng = np.random.default_rng(1)
    model = Model(random_model(rng, frozen=("conv2d",), trainable=("fc",)))
    cfg = TrainConfig()
    need = plan(model, cfg).arena_bytes
    with pytest.raises(TrainerError, match="ARENA_TOO_SMALL"):
        Trainer(model, cfg, arena=np.zeros(need - 1, np.uint8))
