"""int8 export of a PyTorch backbone: the int8 prefix tracks the float net, accuracy holds."""

from __future__ import annotations

import numpy as np
import torch

from fedtiny.config import compose
from fedtiny.data import build_task
from fedtiny.models.export import export_int8, to_torch
from fedtiny.models.float_train import float_accuracy
from fedtiny.models.nets import build_backbone, to_nchw
from fedtiny.models.pretrain import int8_accuracy, train_float
from fedtiny.trainer import Model


def test_int8_export_tracks_the_float_net():
    cfg = compose(["experiment=digits_quick"])
    task = build_task("digits", cfg.dataset)
    float_model = train_float(task, cfg.model, seed=0)
    net = to_torch(float_model, build_backbone(cfg.model, task.input_shape, task.num_classes))
    spec = export_int8(float_model, task.pretrain.x[:256], task.num_classes, trainable_layers=2)
    model = Model(spec)
    assert model.first_trainable == len(model.layers) - 2
    # the boundary features (int8, dequantized) follow the float activations at that point
    x = task.server_test.x[:64]
    scale, zp = model.feature_quant
    feats = scale * (model.prefix_features(model.quantize_input(x)).astype(np.float32) - zp)
    with torch.no_grad():
        ref = net[: len(net) - 3](to_nchw(x)).numpy()  # up to the flatten before the two FC layers
    ref = ref.reshape(feats.shape)
    err = np.abs(feats - ref).max()
    assert err < 0.15 * np.abs(ref).max(), err
    assert np.corrcoef(feats.ravel(), ref.ravel())[0, 1] > 0.99
    f_acc = float_accuracy(float_model, task.server_test.x, task.server_test.y)
    q_acc = int8_accuracy(model, task.server_test)
    assert f_acc > 0.6 and abs(f_acc - q_acc) <= 0.03, (f_acc, q_acc)


def test_trainable_suffix_is_the_float_head():
    cfg = compose(["experiment=digits_quick"])
    task = build_task("digits", cfg.dataset)
    torch.manual_seed(0)
    from fedtiny.models.nets import build_net

    net = build_net("image_cnn", task.input_shape, 10, 16).eval()
    spec = export_int8(net, task.pretrain.x[:64], 10, trainable_layers=2)
    head = spec.layers[-1]
    np.testing.assert_array_equal(head.weights, net[-1].weight.detach().numpy())
    np.testing.assert_array_equal(head.bias, net[-1].bias.detach().numpy())
