"""Post-training int8 quantization of a PyTorch backbone and export to the trainer's format.

* Weights: per-channel symmetric int8 (scale = max|w| / 127 per output channel).
* Activations: per-tensor asymmetric int8 from the min/max observed on calibration data
  (the range always includes 0; after ReLU the zero point is -128).
* Biases: int32 in units of input scale x weight scale; multiplier/shift pairs TFLite-style.
* The last ``trainable_layers`` layers stay float32 (the trainable suffix); pooling and
  flatten in the frozen prefix keep their input's quantization, as the int8 kernels need.

Layers are grouped as the trainer sees them: a Conv2d/Linear/pool/flatten plus the ReLU or
ReLU6 that follows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedtiny.errors import ConfigError
from fedtiny.models.nets import to_nchw
from fedtiny.trainer.model_format import LayerSpec, ModelSpec
from fedtiny.trainer.quant import quantize_multipliers


@dataclass
class _Group:
    module: nn.Module
    act: str
    in_shape: tuple[int, int, int]   # NHWC, without batch
    out_shape: tuple[int, int, int]
    out_min: float
    out_max: float


def _act_name(m: nn.Module) -> str | None:
    if isinstance(m, nn.ReLU):
        return "relu"
    if isinstance(m, nn.ReLU6):
        return "relu6"
    return None


def _groups(net: nn.Sequential, x: torch.Tensor) -> tuple[list[_Group], float, float]:
    """Run calibration data through the net, grouping modules with their activation."""
    mods = list(net)
    groups: list[_Group] = []
    cur = x
    i = 0
    with torch.no_grad():
        while i < len(mods):
            m = mods[i]
            if not isinstance(m, (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d, nn.Flatten)):
                raise ConfigError(f"cannot export layer {i} ({type(m).__name__}): not supported by the device trainer")
            in_shape = _nhwc_shape(cur)
            out = m(cur)
            act = "none"
            if i + 1 < len(mods) and _act_name(mods[i + 1]):
                act = _act_name(mods[i + 1])
                out = mods[i + 1](out)
                i += 1
            groups.append(_Group(m, act, in_shape, _nhwc_shape(out), float(out.min()), float(out.max())))
            cur = out
            i += 1
    return groups, float(x.min()), float(x.max())


def _nhwc_shape(t: torch.Tensor) -> tuple[int, int, int]:
    if t.dim() == 4:
        return (int(t.shape[2]), int(t.shape[3]), int(t.shape[1]))
    return (1, 1, int(t.shape[1]))


def _asym(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return float(np.float32(scale)), zp


def _layout(m: nn.Module, in_shape: tuple[int, int, int]) -> tuple[str, np.ndarray, np.ndarray, dict]:
    """fedtiny layer type, weight in the trainer's layout, bias, and geometry of a module."""
    if isinstance(m, nn.Linear):
        w = m.weight.detach().numpy().astype(np.float64)
        h, wd, c = in_shape
        if h * wd > 1:  # torch flattened (C, H, W); the trainer flattens (H, W, C)
            w = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        return "fc", w, m.bias.detach().numpy().astype(np.float64), {}
    geo = dict(kernel=tuple(m.kernel_size), stride=tuple(m.stride), padding=tuple(m.padding), dilation=tuple(m.dilation))
    w = m.weight.detach().numpy().astype(np.float64)
    bias = m.bias.detach().numpy().astype(np.float64) if m.bias is not None else np.zeros(w.shape[0])
    if m.groups == 1:
        return "conv2d", w.transpose(0, 2, 3, 1), bias, geo  # (O, I, KH, KW) -> (O, KH, KW, I)
    if m.groups == m.in_channels and w.shape[1] == 1:
        geo["ch_mult"] = m.out_channels // m.in_channels
        return "dwconv2d", w[:, 0].transpose(1, 2, 0), bias, geo  # (O, 1, KH, KW) -> (KH, KW, O)
    raise ConfigError(f"grouped convolution with {m.groups} groups is not supported by the device trainer")


def export_int8(net: nn.Sequential, calib_x: np.ndarray, num_classes: int, trainable_layers: int) -> ModelSpec:
    """Quantize `net` (eval mode) with calibration samples `calib_x` (NHWC float32)."""
    net.eval()
    x = to_nchw(calib_x)
    groups, in_lo, in_hi = _groups(net, x)
    if not 1 <= trainable_layers <= len(groups):
        raise ConfigError(f"model.trainable_layers must be in [1, {len(groups)}], got {trainable_layers}")
    first_trainable = len(groups) - trainable_layers
    in_scale, in_zp = _asym(in_lo, in_hi)
    spec = ModelSpec(_nhwc_shape(x), in_scale, in_zp, num_classes)
    scale, zp = in_scale, in_zp
    for k, g in enumerate(groups):
        trainable = k >= first_trainable
        if isinstance(g.module, (nn.AdaptiveAvgPool2d, nn.Flatten)):
            is_pool = isinstance(g.module, nn.AdaptiveAvgPool2d)
            if is_pool and tuple(g.module.output_size if isinstance(g.module.output_size, tuple) else (g.module.output_size,) * 2) != (1, 1):
                raise ConfigError("only global average pooling (output size 1) is supported")
            geo = dict(kernel=g.in_shape[:2]) if is_pool else {}
            spec.layers.append(LayerSpec("avgpool" if is_pool else "flatten", g.in_shape, g.out_shape, act=g.act,
                                         trainable=trainable, out_scale=scale, output_offset=zp, **geo))
            continue
        kind, w, b, geo = _layout(g.module, g.in_shape)
        if trainable:
            spec.layers.append(LayerSpec(kind, g.in_shape, g.out_shape, act=g.act, trainable=True,
                                         weights=w.astype(np.float32), bias=b.astype(np.float32), **geo))
            continue
        axes = tuple(range(1, w.ndim)) if kind != "dwconv2d" else (0, 1)
        w_scale = np.maximum(np.abs(w).max(axis=axes), 1e-12) / 127.0
        shaped = w_scale.reshape((-1,) + (1,) * (w.ndim - 1)) if kind != "dwconv2d" else w_scale
        w_q = np.clip(np.round(w / shaped), -127, 127).astype(np.int8)
        out_scale, out_zp = _asym(g.out_min, g.out_max)
        b_q = np.clip(np.round(b / (scale * w_scale)), -(2**31), 2**31 - 1).astype(np.int32)
        mult, shift = quantize_multipliers(scale * w_scale / out_scale)
        lo = out_zp if g.act in ("relu", "relu6") else -128
        hi = min(127, out_zp + int(round(6.0 / out_scale))) if g.act == "relu6" else 127
        spec.layers.append(LayerSpec(kind, g.in_shape, g.out_shape, act=g.act, input_offset=-zp, output_offset=out_zp,
                                     act_min=lo, act_max=hi, out_scale=out_scale, weights=w_q, bias=b_q,
                                     multiplier=mult, shift=shift, **geo))
        scale, zp = out_scale, out_zp
    return spec
