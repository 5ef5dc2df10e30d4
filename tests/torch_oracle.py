"""Float64 PyTorch model of a ModelSpec's trainable suffix (the gradient oracle).

Written from the layer definitions with torch primitives (explicit padding, grouped
convolutions, pooling as a ones-kernel convolution divided by the count of real inputs)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedtiny.trainer.model_format import LayerSpec


def _pad_nchw(x: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    """Pad top/left by the layer padding and bottom/right to exactly what the output needs."""
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = layer.padding, layer.stride, layer.dilation, layer.kernel
    oh, ow = layer.out_shape[:2]
    need_h, need_w = (oh - 1) * sh + dh * (kh - 1) + 1, (ow - 1) * sw + dw * (kw - 1) + 1
    h, w = x.shape[2], x.shape[3]
    return F.pad(x, (pw, need_w - w - pw, ph, need_h - h - ph))


def _act(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return torch.relu(y)
    if act == "relu6":
        return F.hardtanh(y, 0.0, 6.0)
    return y


def forward(layers: list[LayerSpec], params: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """x: (N, H, W, C) float64 features; returns logits (N, classes)."""
    cur = x
    for layer, (w, b) in zip(layers, params):
        h, wd, c = layer.in_shape
        if layer.type == "fc":
            y = cur.reshape(cur.shape[0], -1) @ w.T + b
            cur = _act(y, layer.act).reshape(-1, 1, 1, layer.out_shape[2])
            continue
        if layer.type == "flatten":
            cur = cur.reshape(cur.shape[0], 1, 1, -1)
            continue
        xin = _pad_nchw(cur.permute(0, 3, 1, 2), layer)
        if layer.type == "conv2d":
            y = F.conv2d(xin, w.permute(0, 3, 1, 2), b, stride=layer.stride, dilation=layer.dilation)
        elif layer.type == "dwconv2d":
            y = F.conv2d(xin, w.permute(2, 0, 1).unsqueeze(1), b, stride=layer.stride, dilation=layer.dilation,
                         groups=c)
        else:  # avgpool: sum of real inputs / their count
            ones = torch.ones(c, 1, *layer.kernel, dtype=xin.dtype)
            total = F.conv2d(xin, ones, stride=layer.stride, groups=c)
            mask = _pad_nchw(torch.ones(1, 1, h, wd, dtype=xin.dtype), layer)
            count = F.conv2d(mask, torch.ones(1, 1, *layer.kernel, dtype=xin.dtype), stride=layer.stride)
            y = total / count
        cur = _act(y, layer.act).permute(0, 2, 3, 1)
    return cur.reshape(cur.shape[0], -1)


def loss_and_grads(layers, params_np, x_np, y_np):
    """Mean cross-entropy and its gradients w.r.t. every (weight, bias), in float64."""
    params = []
    for layer, (w, b) in zip(layers, params_np):
        if layer.has_params:
            params.append((torch.tensor(np.asarray(w, np.float64), requires_grad=True),
                           torch.tensor(np.asarray(b, np.float64), requires_grad=True)))
        else:
            params.append((None, None))
    x = torch.tensor(np.asarray(x_np, np.float64))
    logits = forward(layers, params, x)
    loss = F.cross_entropy(logits, torch.tensor(np.asarray(y_np, np.int64)))
    loss.backward()
    grads = [(p[0].grad.numpy(), p[1].grad.numpy()) if p[0] is not None else (None, None) for p in params]
    return float(loss.detach()), grads, logits.detach().numpy()
