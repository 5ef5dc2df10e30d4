"""Float gradients of every trainable layer type vs torch.autograd in float64.

Tolerance (float32 trainer vs float64 oracle): |got - want| <= 1e-4 * |want| + 1e-6 * max|want|
per tensor, i.e. rtol 1e-4 with an absolute floor scaled to the tensor's largest gradient."""

from __future__ import annotations

import numpy as np
import pytest

from fedtiny.trainer import Model, TrainConfig, Trainer
from tests import torch_oracle
from tests.models import random_model

SUFFIXES = [
    ("fc",),
    ("fc", "fc"),
    ("conv2d", "fc"),
    ("dwconv2d", "fc"),
    ("conv2d", "avgpool", "flatten", "fc"),
    ("dwconv2d", "conv2d", "avgpool", "fc"),
    ("conv2d", "dwconv2d", "flatten", "fc", "fc"),
    ("avgpool", "conv2d", "fc"),
]


def _features(model: Model, n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.integers(-128, 128, (n, *model.input_shape)).astype(np.int8)
    feats = model.prefix_features(x)
    scale, zp = model.feature_quant
    real = np.float32(scale) * (feats.astype(np.float32) - np.float32(zp))
    return x, feats, real


def _assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    floor = 1e-6 * max(1e-12, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=floor, err_msg=what)


@pytest.mark.parametrize("suffix", SUFFIXES, ids="-".join)
@pytest.mark.parametrize("seed", range(6))
def test_gradients_match_autograd(suffix, seed):
    rng = np.random.default_rng(seed * 100 + len(suffix))
    frozen = ("conv2d",) if seed % 2 else ("dwconv2d", "conv2d")
    spec = random_model(rng, frozen=frozen, trainable=suffix,
                        input_shape=(int(rng.integers(2, 6)), int(rng.integers(4, 9)), int(rng.integers(1, 4))))
    model = Model(spec)
    trainer = Trainer(model, TrainConfig(lr=0.1, batch_size=4))
    _, feats, real = _features(model, 5, rng)
    y = rng.integers(0, model.num_classes, 5)
    got = trainer.gradients(feats, y)
    layers = spec.layers[model.first_trainable :]
    loss, want, logits = torch_oracle.loss_and_grads(layers, [(l.weights, l.bias) for l in layers], real, y)
    assert abs(trainer.evaluate(feats, y).loss - loss) <= 1e-5 * max(1.0, loss)
    for k, (layer, (gw, gb), (ww, wb)) in enumerate(zip(layers, got, want)):
        if not layer.has_params:
            continue
        _assert_close(gw, ww, f"layer {k} {layer.type} weight")
        _assert_close(gb, wb, f"layer {k} {layer.type} bias")
    # forward: logits from the trainer and from the per-layer forward agree with torch
    np.testing.assert_allclose(trainer.evaluate(feats, y, return_logits=True).logits, logits, rtol=1e-4, atol=1e-5)


def test_prefix_inside_trainer_equals_cached_features():
    """Training on raw inputs (int8 prefix every step) and on cached features is bit-identical."""
    rng = np.random.default_rng(7)
    spec = random_model(rng, frozen=("conv2d", "avgpool", "flatten"), trainable=("fc", "fc"))
    model = Model(spec)
    x, feats, _ = _features(model, 40, rng)
    y = rng.integers(0, model.num_classes, 40)
    a = Trainer(model, TrainConfig(lr=0.05, batch_size=8, momentum=0.9, with_prefix=True))
    b = Trainer(model, TrainConfig(lr=0.05, batch_size=8, momentum=0.9, with_prefix=False))
    a.train_epochs(x, y, epochs=2, seed=3)
    b.train_epochs(feats, y, epochs=2, seed=3)
    for (wa, ba), (wb, bb) in zip(a.get_params(), b.get_params()):
        assert wa.tobytes() == wb.tobytes() and ba.tobytes() == bb.tobytes()


def test_forward_per_layer_outputs():
    """Model.forward: frozen layers chain through the int8 kernels; the last output is the logits."""
    rng = np.random.default_rng(11)
    spec = random_model(rng, frozen=("conv2d", "dwconv2d", "avgpool", "flatten"), trainable=("fc",))
    model = Model(spec)
    x, feats, real = _features(model, 3, rng)
    outs = model.forward(x)
    assert [o.type for o in outs] == [l.type for l in spec.layers]
    np.testing.assert_array_equal(outs[model.first_trainable - 1].int8, feats.reshape(3, -1))
    frozen_out = outs[0]
    scale, zp = spec.layers[0].out_scale, spec.layers[0].output_offset
    np.testing.assert_allclose(frozen_out.real, scale * (frozen_out.int8.astype(np.float32) - zp), rtol=1e-6)
    trainer = Trainer(model, TrainConfig())
    logits = trainer.evaluate(feats, np.zeros(3, np.uint8), return_logits=True).logits
    np.testing.assert_array_equal(outs[-1].real, logits)
