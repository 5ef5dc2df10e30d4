"""Sparse update schemes: per layer, all / no / top-k-channel weights and the bias.

Oracles: torch.autograd (float64) masked to the scheme, with the channel choice re-derived
here from its definition (largest weight L2 norm in the model, ties to the lower index); the
painted-arena measurement for memory."""

from __future__ import annotations

import numpy as np
import pytest

from fedtiny.errors import TrainerError
from fedtiny.trainer import LayerUpdate, Model, TrainConfig, Trainer, plan
from tests import torch_oracle
from tests.models import random_model
from tests.test_plan import _painted_peak

SUFFIX = ("conv2d", "dwconv2d", "avgpool", "flatten", "fc", "fc")


def random_scheme(rng, layers) -> tuple[LayerUpdate, ...]:
    scheme = []
    for layer in layers:
        if not layer.has_params:
            scheme.append(LayerUpdate("none", False))
            continue
        out_c = layer.out_shape[2]
        kind = rng.choice(["all", "none", "channels"])
        weights = int(rng.integers(1, out_c + 1)) if kind == "channels" else str(kind)
        scheme.append(LayerUpdate(weights, bool(rng.random() < 0.5)))
    if not any(u.weights != "none" or u.bias for u in scheme):
        scheme[-1] = LayerUpdate("all", True)
    return tuple(scheme)


def chosen_channels(layer, weights) -> list[int]:
    """Top-k output channels by weight L2 norm (float32 sums as on the device; ties: lower index)."""
    w = np.asarray(layer.weights, np.float32)
    rows = w.reshape(w.shape[0], -1) if layer.type != "dwconv2d" else w.reshape(-1, w.shape[-1]).T
    norms = [float(np.sum(r.astype(np.float64) ** 2)) for r in rows]
    order = sorted(range(len(norms)), key=lambda c: (-norms[c], c))
    return sorted(order[:weights])


def _mask(layer, channels) -> np.ndarray:
    mask = np.zeros(np.shape(layer.weights), bool)
    for c in channels:
        if layer.type == "dwconv2d":
            mask[..., c] = True
        else:
            mask[c] = True
    return mask


@pytest.mark.parametrize("seed", range(12))
def test_masked_gradients_match_autograd(seed):
    rng = np.random.default_rng(500 + seed)
    spec = random_model(rng, frozen=("conv2d",), trainable=SUFFIX,
                        input_shape=(int(rng.integers(2, 5)), int(rng.integers(4, 8)), int(rng.integers(1, 3))))
    model = Model(spec)
    layers = spec.layers[model.first_trainable :]
    scheme = random_scheme(rng, layers)
    trainer = Trainer(model, TrainConfig(lr=0.1, update=scheme))
    x = rng.integers(-128, 128, (6, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 6)
    feats = model.prefix_features(x)
    scale, zp = model.feature_quant
    real = np.float32(scale) * (feats.astype(np.float32) - np.float32(zp))
    got = trainer.gradients(feats, y)
    _, want, _ = torch_oracle.loss_and_grads(layers, [(l.weights, l.bias) for l in layers], real, y)
    assert plan(model, TrainConfig(update=scheme)).first_backward == min(
        k for k, u in enumerate(scheme) if u.weights != "none" or u.bias)
    for k, (layer, u, (gw, gb), (ww, wb)) in enumerate(zip(layers, scheme, got, want)):
        if not layer.has_params:
            continue
        if u.weights == "none":
            assert gw is None
        else:
            channels = list(range(layer.out_shape[2])) if u.weights == "all" else chosen_channels(layer, u.weights)
            assert trainer.updated_channels(k) == channels
            expect = np.where(_mask(layer, channels), ww, 0.0)
            np.testing.assert_allclose(gw, expect, rtol=1e-4, atol=1e-6 * max(1e-12, np.abs(ww).max()),
                                       err_msg=f"layer {k} weights")
        if u.bias:
            np.testing.assert_allclose(gb, wb, rtol=1e-4, atol=1e-6 * max(1e-12, np.abs(wb).max()))
        else:
            assert gb is None


@pytest.mark.parametrize("seed", range(6))
def test_untouched_parameters_stay_bit_identical(seed):
    rng = np.random.default_rng(600 + seed)
    spec = random_model(rng, frozen=("conv2d",), trainable=SUFFIX)
    model = Model(spec)
    layers = spec.layers[model.first_trainable :]
    scheme = random_scheme(rng, layers)
    trainer = Trainer(model, TrainConfig(lr=0.05, momentum=0.9, weight_decay=0.01, batch_size=4, update=scheme))
    x = model.prefix_features(rng.integers(-128, 128, (20, *model.input_shape)).astype(np.int8))
    y = rng.integers(0, model.num_classes, 20)
    trainer.train_epochs(x, y, epochs=2, seed=1)
    for k, (layer, u, (w, b)) in enumerate(zip(layers, scheme, trainer.get_params())):
        if not layer.has_params:
            continue
        frozen = ~_mask(layer, trainer.updated_channels(k))
        assert w[frozen].tobytes() == layer.weights[frozen].tobytes()
        if u.weights != "none":
            assert not np.array_equal(w[~frozen], layer.weights[~frozen])
        assert (b.tobytes() == layer.bias.tobytes()) == (not u.bias)


@pytest.mark.parametrize("seed", range(24))
def test_plan_equals_measured_high_water_mark_for_schemes(seed):
    rng = np.random.default_rng(700 + seed)
    suffix = [SUFFIX, ("fc", "fc"), ("conv2d", "fc"), ("dwconv2d", "conv2d", "flatten", "fc")][seed % 4]
    spec = random_model(rng, frozen=("conv2d", "dwconv2d"), trainable=suffix)
    model = Model(spec)
    scheme = random_scheme(rng, spec.layers[model.first_trainable :])
    config = TrainConfig(lr=0.01, momentum=0.9 if seed % 2 else 0.0, batch_size=3, with_prefix=bool(seed % 3 == 0),
                         prox_mu=0.1 if seed % 5 == 0 else 0.0, update=scheme)
    x = rng.integers(-128, 128, (6, *model.input_shape)).astype(np.int8)
    samples = x if config.with_prefix else model.prefix_features(x)
    peak, hwm = _painted_peak(model, config, samples, rng.integers(0, model.num_classes, 6))
    assert peak == plan(model, config).arena_bytes == hwm


def test_sparse_updates_use_less_memory_than_full():
    rng = np.random.default_rng(3)
    spec = random_model(rng, frozen=("conv2d",), trainable=SUFFIX, input_shape=(4, 8, 2))
    model = Model(spec)
    n = len(SUFFIX)
    full = plan(model, TrainConfig())
    bias_last = plan(model, TrainConfig(update=tuple([LayerUpdate("none", False)] * (n - 1) + [LayerUpdate("none", True)])))
    assert bias_last.update_count == model.num_classes and bias_last.first_backward == n - 1
    assert bias_last.params_bytes == 4 * model.num_classes  # only the last bias is copied to RAM
    assert bias_last.acts_bytes < full.acts_bytes and bias_last.grad_acts_bytes == 4 * model.num_classes
    assert bias_last.arena_bytes < full.arena_bytes / 2
    head = spec.layers[-1]
    half = plan(model, TrainConfig(update=tuple([LayerUpdate("none", False)] * (n - 1) + [LayerUpdate(1, False)])))
    assert half.update_count == head.weights.shape[1]  # one channel's weights
    assert half.index_bytes == 2 * model.num_classes  # int16 channel map


def test_bad_schemes_are_refused():
    rng = np.random.default_rng(4)
    spec = random_model(rng, frozen=("conv2d",), trainable=("conv2d", "avgpool", "fc"))
    model = Model(spec)
    none = LayerUpdate("none", False)
    with pytest.raises(TrainerError, match="one LayerUpdate per trainable layer"):
        plan(model, TrainConfig(update=(none, none)))
    with pytest.raises(TrainerError, match="BAD_CONFIG"):  # pooling has nothing to update
        plan(model, TrainConfig(update=(none, LayerUpdate("all", False), LayerUpdate("all", True))))
    with pytest.raises(TrainerError, match="BAD_CONFIG"):  # more channels than the layer has
        plan(model, TrainConfig(update=(LayerUpdate(1000, False), none, none)))
    with pytest.raises(TrainerError, match="BAD_CONFIG"):  # nothing updated
        plan(model, TrainConfig(update=(none, none, none)))
    trainer = Trainer(model, TrainConfig(update=(none, none, LayerUpdate("all", True))))
    params = trainer.get_params()
    params[0] = (params[0][0] + 1.0, params[0][1])  # a tensor that lives in the model
    with pytest.raises(TrainerError, match="must keep the model's values"):
        trainer.set_params(params)


@pytest.mark.parametrize("seed", range(8))
def test_cached_features_at_the_first_updated_layer(seed):
    """Samples cached as float activations at the scheme's first backward layer: the same
    parameters bit for bit as running the frozen float layers every step, in less memory,
    and the plan still equals the painted measurement."""
    rng = np.random.default_rng(800 + seed)
    spec = random_model(rng, frozen=("conv2d",), trainable=SUFFIX)
    model = Model(spec)
    layers = spec.layers[model.first_trainable :]
    scheme = random_scheme(rng, layers)
    k0 = plan(model, TrainConfig(update=scheme)).first_backward
    if k0 == 0:
        scheme = tuple([LayerUpdate("none", False)] * 2 + list(scheme[2:]))
        if not any(u.weights != "none" or u.bias for u in scheme):
            scheme = scheme[:-1] + (LayerUpdate("all", True),)
        k0 = plan(model, TrainConfig(update=scheme)).first_backward
    x = rng.integers(-128, 128, (12, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 12)
    base = dict(lr=0.05, momentum=0.9, batch_size=4, update=scheme)
    a = Trainer(model, TrainConfig(**base))
    a.train_epochs(model.prefix_features(x), y, epochs=2, seed=5)
    cfg = TrainConfig(**base, start_layer=k0)
    b = Trainer(model, cfg)
    feats = model.features_at(x, k0)
    b.train_epochs(feats, y, epochs=2, seed=5)
    for (wa, ba), (wb, bb) in zip(a.get_params(), b.get_params()):
        assert wa.tobytes() == wb.tobytes() and ba.tobytes() == bb.tobytes()
    assert b.plan.arena_bytes <= a.plan.arena_bytes
    peak, hwm = _painted_peak(model, cfg, feats, y)
    assert peak == b.plan.arena_bytes == hwm
    with pytest.raises(TrainerError, match="BAD_CONFIG"):
        plan(model, TrainConfig(**base, start_layer=k0 + 1))
