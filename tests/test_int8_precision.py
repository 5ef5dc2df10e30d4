"""Int8 trainable weights with quantization-aware scaling (precision="int8").

Oracles written here from the definitions in ft_trainer.h, not from the trainer's output:
per-channel quantization (s = max|w| / 127, round halves away from zero), the QAS step
q <- clamp(round(q - lr * d / s)) in float32 arithmetic, the counter-based rounding hash,
torch.autograd (float64) on the dequantized weights for gradients, and the painted arena
for memory."""

from __future__ import annotations

import numpy as np
import pytest

from fedtiny.errors import ConfigError
from fedtiny.trainer import LayerUpdate, Model, TrainConfig, Trainer, plan
from tests import torch_oracle
from tests.models import random_model
from tests.test_plan import _painted_peak
from tests.test_schemes import SUFFIX, _mask, chosen_channels, random_scheme

F32 = np.float32


def round_half_away(v: np.ndarray) -> np.ndarray:
    t = np.trunc(v)
    frac = v - t
    return t + (frac >= 0.5) - (frac <= -0.5)


def rows_of(layer, w: np.ndarray) -> np.ndarray:
    """Per output channel rows of a weight tensor (a view for conv/FC, a transposed copy for depthwise)."""
    return w.reshape(-1, w.shape[-1]).T if layer.type == "dwconv2d" else w.reshape(w.shape[0], -1)


def quantize(layer, w: np.ndarray, channels: list[int]) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, np.float32]]]:
    """Dequantized weights (other channels unchanged) and {channel: (q row, scale)}."""
    w = np.asarray(w, F32)
    rows = rows_of(layer, w)
    out = rows.copy()
    q = {}
    for c in channels:
        amax = F32(np.max(np.abs(rows[c])))
        s = amax / F32(127) if amax > 0 else F32(1)
        qc = np.clip(round_half_away(rows[c] / s), -127, 127).astype(np.int8)
        q[c] = (qc, F32(s))
        out[c] = qc.astype(F32) * F32(s)
    deq = out.T.reshape(w.shape) if layer.type == "dwconv2d" else out.reshape(w.shape)
    return deq, q


def hash32(x: int) -> int:
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def uniform(key: int, ctr: int) -> np.float32:
    return F32(hash32(key ^ hash32(ctr)) >> 8) * F32(1.0 / 16777216.0)


def int8_model(seed: int):
    rng = np.random.default_rng(seed)
    spec = random_model(rng, frozen=("conv2d",), trainable=SUFFIX,
                        input_shape=(int(rng.integers(2, 5)), int(rng.integers(4, 8)), int(rng.integers(1, 3))))
    model = Model(spec)
    layers = spec.layers[model.first_trainable :]
    scheme = random_scheme(rng, layers)
    if not any(u.weights != "none" for u in scheme):
        scheme = scheme[:-1] + (LayerUpdate("all", True),)
    return rng, model, layers, scheme


def updated(layer, u) -> list[int]:
    if u.weights == "none" or not layer.has_params:
        return []
    return list(range(layer.out_shape[2])) if u.weights == "all" else chosen_channels(layer, u.weights)


@pytest.mark.parametrize("seed", range(10))
def test_int8_weights_and_gradients_match_oracles(seed):
    """The int8 copies are the numpy quantization of the model's channels, bit for bit, and the
    gradients equal torch.autograd run on those dequantized weights."""
    rng, model, layers, scheme = int8_model(900 + seed)
    trainer = Trainer(model, TrainConfig(lr=0.1, update=scheme, precision="int8"))
    params = []
    for k, (layer, u, (w, b)) in enumerate(zip(layers, scheme, trainer.get_params())):
        if not layer.has_params:
            params.append((layer.weights, layer.bias))
            continue
        want, _ = quantize(layer, layer.weights, updated(layer, u))
        assert w.tobytes() == want.tobytes(), f"layer {k}"
        assert b.tobytes() == layer.bias.tobytes()
        params.append((want, layer.bias))
    x = rng.integers(-128, 128, (6, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 6)
    feats = model.prefix_features(x)
    scale, zp = model.feature_quant
    real = F32(scale) * (feats.astype(F32) - F32(zp))
    _, want, _ = torch_oracle.loss_and_grads(layers, params, real, y)
    for k, (layer, u, (gw, gb), (ww, wb)) in enumerate(zip(layers, scheme, trainer.gradients(feats, y), want)):
        if not layer.has_params:
            continue
        if u.weights != "none":
            expect = np.where(_mask(layer, updated(layer, u)), ww, 0.0)
            np.testing.assert_allclose(gw, expect, rtol=1e-4, atol=1e-6 * max(1e-12, np.abs(ww).max()),
                                       err_msg=f"layer {k} weights")
        if u.bias:
            np.testing.assert_allclose(gb, wb, rtol=1e-4, atol=1e-6 * max(1e-12, np.abs(wb).max()))


def qas_oracle(layers, scheme, params, grads, lr, wd, rounding, key=None):
    """One QAS step from the freshly initialised trainer (int8 copies quantized from the model)
    with dequantized parameters `params` and mean gradients `grads` (float32)."""
    out, ctr = [], 0
    for layer, u, (w, b), (gw, gb) in zip(layers, scheme, params, grads):
        if not layer.has_params:
            out.append((w, b))
            continue
        channels = updated(layer, u)
        _, q = quantize(layer, layer.weights, channels)
        rows = rows_of(layer, np.array(w, F32)).copy()
        grows = rows_of(layer, gw) if gw is not None else None
        for c in channels:
            qc, s = q[c]
            d = grows[c] + F32(wd) * rows[c]
            x = qc.astype(F32) - F32(lr) * d / s
            if rounding == "nearest":
                new = np.clip(round_half_away(x), -127, 127)
            else:
                xc = np.clip(x, -128, 128)
                fl = np.floor(xc)
                u_ = np.array([uniform(key, ctr + i) for i in range(x.size)], F32)
                ctr += x.size
                new = np.clip(fl + (u_ < xc - fl), -127, 127)
            rows[c] = new.astype(F32) * s
        nw = rows.T.reshape(np.shape(w)) if layer.type == "dwconv2d" else rows.reshape(np.shape(w))
        nb = b - F32(lr) * (gb + F32(wd) * b) if u.bias else b
        out.append((nw, nb))
    return out


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("seed", range(6))
def test_qas_step_matches_numpy(seed, rounding):
    """One step on one sample equals the QAS formula computed in numpy float32, bit for bit,
    including the stochastic rounding draws (ft_uniform with the training seed's key)."""
    rng, model, layers, scheme = int8_model(950 + seed)
    lr, wd = 0.5, 0.01
    x = model.prefix_features(rng.integers(-128, 128, (1, *model.input_shape)).astype(np.int8))
    y = rng.integers(0, model.num_classes, 1)
    cfg = TrainConfig(lr=lr, weight_decay=wd, batch_size=1, update=scheme, precision="int8", rounding=rounding)
    probe = Trainer(model, cfg)
    params, grads = probe.get_params(), probe.gradients(x, y)
    seed_train = 77 + seed
    key = hash32(seed_train ^ 0xA511E9B3)
    want = qas_oracle(layers, scheme, params, grads, lr, wd, rounding, key)
    trainer = Trainer(model, cfg)
    trainer.train_epochs(x, y, epochs=1, seed=seed_train)
    moved = 0
    for k, ((w, b), (ww, wb), (w0, _)) in enumerate(zip(trainer.get_params(), want, params)):
        assert w.tobytes() == ww.tobytes(), f"layer {k} weights"
        np.testing.assert_array_equal(b, wb)
        moved += int(np.sum(w != w0))
    assert moved > 0  # the step changed int8 weights (lr is large enough to cross grid points)


def test_stochastic_rounding_is_unbiased():
    """Over many training seeds, the mean int8 step equals the float step lr * d / s."""
    _, model, layers, scheme = int8_model(990)
    scheme = scheme[:-1] + (LayerUpdate("all", False),)  # the head has no ReLU: every weight gets a gradient
    rng = np.random.default_rng(1)
    x = model.prefix_features(rng.integers(-128, 128, (1, *model.input_shape)).astype(np.int8))
    y = rng.integers(0, model.num_classes, 1)
    probe = Trainer(model, TrainConfig(batch_size=1, update=scheme, precision="int8"))
    params, grads = probe.get_params(), probe.gradients(x, y)
    # a learning rate that makes the median step lr * |g| / s about 0.4 of a grid step
    ratios = []
    for layer, u, (gw, _) in zip(layers, scheme, grads):
        if not updated(layer, u):
            continue
        for c, (_, s) in quantize(layer, layer.weights, updated(layer, u))[1].items():
            ratios.append(np.abs(rows_of(layer, gw)[c]) / s)
    ratios = np.concatenate(ratios)
    lr = float(0.4 / np.median(ratios[ratios > 0]))
    cfg = TrainConfig(lr=lr, batch_size=1, update=scheme, precision="int8")
    nearest = qas_oracle(layers, scheme, params, grads, lr, 0.0, "nearest")
    seeds = 400
    total = [np.zeros_like(w, np.float64) for w, _ in params]
    for s in range(seeds):
        t = Trainer(model, cfg)
        t.train_epochs(x, y, epochs=1, seed=s)
        for i, (w, _) in enumerate(t.get_params()):
            total[i] += w
    checked, err_sr, err_nearest = 0, 0.0, 0.0
    for layer, u, (gw, _), tot, (wn, _) in zip(layers, scheme, grads, total, nearest):
        channels = updated(layer, u)
        if not channels:
            continue
        _, q = quantize(layer, layer.weights, channels)
        mean, g, rn = rows_of(layer, tot / seeds), rows_of(layer, gw), rows_of(layer, wn)
        for c in channels:
            qc, s = q[c]
            x_float = qc.astype(np.float64) - lr * g[c].astype(np.float64) / float(s)
            inside = np.abs(x_float) < 126  # clamping biases the mean at the range ends
            frac = x_float - np.floor(x_float)
            err = mean[c] / float(s) - x_float
            bound = 4.5 * np.sqrt(frac * (1 - frac) / seeds) + 1e-4  # Bernoulli std of the mean
            assert np.all(np.abs(err[inside]) <= bound[inside])
            checked += int(inside.sum())
            err_sr += float(np.abs(err[inside]).sum())
            err_nearest += float(np.abs(rn[c] / float(s) - x_float)[inside].sum())
    assert checked > 0
    assert err_sr < 0.25 * err_nearest  # rounding to nearest is biased; the stochastic mean is not


@pytest.mark.parametrize("seed", range(6))
def test_int8_untouched_parameters_stay_bit_identical(seed):
    rng, model, layers, scheme = int8_model(1000 + seed)
    trainer = Trainer(model, TrainConfig(lr=0.2, momentum=0.9, weight_decay=0.01, batch_size=4, update=scheme,
                                         precision="int8"))
    x = model.prefix_features(rng.integers(-128, 128, (20, *model.input_shape)).astype(np.int8))
    y = rng.integers(0, model.num_classes, 20)
    trainer.train_epochs(x, y, epochs=2, seed=1)
    for layer, u, (w, b) in zip(layers, scheme, trainer.get_params()):
        if not layer.has_params:
            continue
        frozen = ~_mask(layer, updated(layer, u))
        assert w[frozen].tobytes() == layer.weights[frozen].tobytes()
        assert (b.tobytes() == layer.bias.tobytes()) == (not u.bias)


@pytest.mark.parametrize("seed", range(12))
def test_int8_plan_equals_measured_high_water_mark(seed):
    rng, model, layers, scheme = int8_model(1100 + seed)
    config = TrainConfig(lr=0.01, momentum=0.9 if seed % 2 else 0.0, batch_size=3, prox_mu=0.1 if seed % 3 == 0 else 0.0,
                         with_prefix=seed % 4 == 1, update=scheme, precision="int8",
                         rounding=("stochastic", "nearest")[seed % 2])
    x = rng.integers(-128, 128, (6, *model.input_shape)).astype(np.int8)
    samples = x if config.with_prefix else model.prefix_features(x)
    peak, hwm = _painted_peak(model, config, samples, rng.integers(0, model.num_classes, 6))
    p = plan(model, config)
    assert peak == p.arena_bytes == hwm
    counts = [len(updated(layer, u)) for layer, u in zip(layers, scheme)]
    rows = [int(np.prod(np.shape(layer.weights))) // layer.out_shape[2] if layer.has_params else 0 for layer in layers]
    assert p.qparams_bytes == sum(c * r for c, r in zip(counts, rows))  # one byte per updated weight
    assert p.qscale_bytes == 4 * sum(counts)
    assert p.params_bytes == 4 * sum(layer.out_shape[2] for layer, u in zip(layers, scheme) if u.bias)
    f32 = plan(model, TrainConfig(lr=0.01, momentum=config.momentum, batch_size=3, prox_mu=config.prox_mu,
                                  with_prefix=config.with_prefix, update=scheme))
    # float32 holds a RAM copy of every updated weight tensor (4 B per weight), int8 only the updated
    # channels (1 B per weight + a 4 B scale per channel); everything else is the same
    copied = sum(int(np.prod(np.shape(layer.weights))) for layer, u in zip(layers, scheme)
                 if layer.has_params and u.weights != "none")
    assert f32.params_bytes - p.params_bytes == 4 * copied
    for item in ("momentum_bytes", "grads_bytes", "anchor_bytes", "index_bytes", "acts_bytes", "grad_acts_bytes"):
        assert getattr(p, item) == getattr(f32, item)


def test_set_params_requantizes_and_bad_precision_is_refused():
    rng, model, layers, scheme = int8_model(1200)
    trainer = Trainer(model, TrainConfig(update=scheme, precision="int8"))
    new = [(w + F32(0.01) * rng.standard_normal(w.shape).astype(F32), b) for w, b in trainer.get_params()]
    merged = []
    for layer, u, (w, b), (w0, b0) in zip(layers, scheme, new, trainer.get_params()):
        if not layer.has_params:
            merged.append((w0, b0))
            continue
        keep = _mask(layer, updated(layer, u))
        merged.append((np.where(keep, w, w0).astype(F32), b if u.bias else b0))
    trainer.set_params(new, only_updated=True)
    for k, (layer, u, (w, _), (wm, _)) in enumerate(zip(layers, scheme, trainer.get_params(), merged)):
        if layer.has_params:
            want, _ = quantize(layer, wm, updated(layer, u))
            assert w.tobytes() == want.tobytes(), f"layer {k}"
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="int4")
    with pytest.raises(ConfigError, match="rounding"):
        TrainConfig(rounding="up")


def test_int8_training_learns(task, features):
    """Digits head: int8 weights with QAS reach nearly the accuracy of float32 weights."""
    f_train, f_test = features
    acc = {}
    for precision in ("float32", "int8"):
        t = Trainer(task.model, TrainConfig(lr=0.05, momentum=0.9, batch_size=16, precision=precision))
        before = t.evaluate(f_test, task.y_test).accuracy
        t.train_epochs(f_train, task.y_train, epochs=3, seed=0)
        acc[precision] = t.evaluate(f_test, task.y_test).accuracy
    assert acc["int8"] > before + 0.3
    assert acc["int8"] > acc["float32"] - 0.05, acc
