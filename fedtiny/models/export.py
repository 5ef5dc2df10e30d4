"""Post-training int8 quantization of a PyTorch backbone and export to the trainer's format.

* Weights: per-channel symmetric int8 (scale = max|w| / 127 per output channel).
* Activations: per-tensor asymmetric int8 from the min/max observed on calibration data
  through the C trainer's float forward (so the same bytes on every machine; the range
  always includes 0; after ReLU the zero point is -128).
* Biases: int32 in units of input scale x weight scale; multiplier/shift pairs TFLite-style.
* The last ``trainable_layers`` layers stay float32 (the trainable suffix); pooling and
  flatten in the frozen prefix keep their input's quantization, as the int8 kernels need.

Layers are grouped as the trainer sees them: a Conv2d/Linear/pool/flatten plus the ReLU or
ReLU6 that follows it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedtiny.errors import ConfigError
from fedtiny.models.nets import to_nchw
from fedtiny.trainer import Model
from fedtiny.trainer.model_format import LayerSpec, ModelSpec
from fedtiny.trainer.quant import tflite_multipliers


@dataclass
class _Group:
    module: nn.Module
    act: str
    in_shape: tuple[int, int, int]   # NHWC, without batch
    out_shape: tuple[int, int, int]


def _act_name(m: nn.Module) -> str | None:
    if isinstance(m, nn.ReLU):
        return "relu"
    if isinstance(m, nn.ReLU6):
        return "relu6"
    return None


def _groups(net: nn.Sequential, x: torch.Tensor) -> list[_Group]:
    """Group the net's modules with their activation, and their shapes (from sample(s) `x`)."""
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
            groups.append(_Group(m, act, in_shape, _nhwc_shape(out)))
            cur = out
            i += 1
    return groups


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


def weight_axes(kind: str, ndim: int) -> tuple[int, ...]:
    """The axes a layer's weight reduces over for one scale per output channel (the output
    channel is axis 0, or the last axis of a depthwise weight (KH, KW, C_OUT))."""
    return (0, 1) if kind == "dwconv2d" else tuple(range(1, ndim))


def quantize_layer(layer: LayerSpec, w: np.ndarray, b: np.ndarray, in_scale: float, in_zp: int,
                   out_lo: float, out_hi: float) -> np.ndarray:
    """Make `layer` (conv2d, dwconv2d or fc, in the trainer's weight layout) a frozen int8 layer
    with TFLite's conventions: per-channel symmetric float32 weight scales, int32 bias in units of
    input scale x weight scale, the output's range [out_lo, out_hi] as asymmetric int8 and the
    requantization from float32 scales (:func:`~fedtiny.trainer.quant.tflite_multipliers`).
    Returns the weight scales (what a ``.tflite`` file stores)."""
    w, b = np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)
    w_scale = (np.maximum(np.abs(w).max(axis=weight_axes(layer.type, w.ndim)), 1e-12) / 127.0).astype(np.float32)
    shaped = w_scale.astype(np.float64) if layer.type == "dwconv2d" else \
        w_scale.astype(np.float64).reshape((-1,) + (1,) * (w.ndim - 1))
    out_scale, out_zp = _asym(out_lo, out_hi)
    layer.trainable = False
    layer.weights = np.clip(np.round(w / shaped), -127, 127).astype(np.int8)
    layer.bias = np.clip(np.round(b / (float(np.float32(in_scale)) * w_scale.astype(np.float64))),
                         -(2**31), 2**31 - 1).astype(np.int32)
    layer.multiplier, layer.shift = tflite_multipliers(in_scale, w_scale, out_scale)
    layer.input_offset, layer.output_offset, layer.out_scale = -int(in_zp), out_zp, out_scale
    layer.act_min, layer.act_max = activation_range(layer.act, out_scale, out_zp)
    return w_scale


def activation_range(act: str, scale: float, zero_point: int) -> tuple[int, int]:
    """The int8 clamp of a fused activation, as TFLite computes it (``zp + round(f / scale)`` in
    float32, halves away from zero)."""
    def q(f: float) -> int:
        v = np.float32(f) / np.float32(scale)
        return int(zero_point) + int(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)))

    lo = max(-128, q(0.0)) if act in ("relu", "relu6") else -128
    hi = min(127, q(6.0)) if act == "relu6" else 127
    return lo, hi


def float_spec(net: nn.Sequential, calib_x: np.ndarray, num_classes: int) -> ModelSpec:
    """`net` in the trainer's format with every layer trainable in float32 (the weights copied
    bit for bit into the trainer's layouts) and int8 inputs quantized over the range of the
    calibration samples `calib_x` (NHWC float32)."""
    x = to_nchw(calib_x[:1])
    groups = _groups(net, x)
    in_scale, in_zp = _asym(float(np.min(calib_x)), float(np.max(calib_x)))
    spec = ModelSpec(_nhwc_shape(x), in_scale, in_zp, num_classes)
    for g in groups:
        if isinstance(g.module, (nn.AdaptiveAvgPool2d, nn.Flatten)):
            is_pool = isinstance(g.module, nn.AdaptiveAvgPool2d)
            size = g.module.output_size if is_pool else 1
            if is_pool and tuple(size if isinstance(size, tuple) else (size, size)) != (1, 1):
                raise ConfigError("only global average pooling (output size 1) is supported")
            geo = dict(kernel=g.in_shape[:2]) if is_pool else {}
            spec.layers.append(LayerSpec("avgpool" if is_pool else "flatten", g.in_shape, g.out_shape, act=g.act,
                                         trainable=True, **geo))
            continue
        kind, w, b, geo = _layout(g.module, g.in_shape)
        spec.layers.append(LayerSpec(kind, g.in_shape, g.out_shape, act=g.act, trainable=True,
                                     weights=w.astype(np.float32), bias=b.astype(np.float32), **geo))
    return spec


def to_torch(spec: ModelSpec, net: nn.Sequential) -> nn.Sequential:
    """Copy the float weights of `spec` (as :func:`float_spec` lays them out) into `net`, bit
    for bit; returns `net` in eval mode."""
    layers = iter(spec.layers)
    with torch.no_grad():
        for m in net:
            if _act_name(m) is not None:
                continue
            lay = next(layers)
            if not lay.has_params:
                continue
            w = np.asarray(lay.weights, np.float32)
            if isinstance(m, nn.Linear):
                h, wd, c = lay.in_shape
                if h * wd > 1:
                    w = w.reshape(w.shape[0], h, wd, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
            elif lay.type == "conv2d":
                w = w.transpose(0, 3, 1, 2)
            else:
                w = w.transpose(2, 0, 1)[:, None]
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            if m.bias is not None:
                m.bias.copy_(torch.from_numpy(np.asarray(lay.bias, np.float32)))
    return net.eval()


def _quantize_layers(spec: ModelSpec, calib_q: np.ndarray, start: int, stop: int) -> None:
    """Make layers start..stop-1 of `spec` frozen int8 layers (:func:`quantize_layer`), each
    output range taken from the trainer's float forward of `calib_q` (int8 model inputs)
    through the layers as they are; pooling and flatten keep their input's quantization, as
    the int8 kernels need."""
    model = Model(spec)
    outputs = model.forward(calib_q)
    scale, zp = model.feature_quant
    for k in range(start, stop):
        lay = spec.layers[k]
        if lay.has_params:
            real = outputs[k].real
            quantize_layer(lay, lay.weights, lay.bias, scale, zp, float(real.min()), float(real.max()))
        else:
            lay.trainable, lay.out_scale, lay.output_offset = False, float(np.float32(scale)), int(zp)
            lay.act_min, lay.act_max = activation_range(lay.act, lay.out_scale, lay.output_offset)
        scale, zp = lay.out_scale, lay.output_offset


def export_int8(net: nn.Sequential | ModelSpec, calib_x: np.ndarray, num_classes: int,
                trainable_layers: int) -> ModelSpec:
    """Quantize a float backbone — a PyTorch `net`, or an all-float spec (:func:`float_spec`,
    whose input quantization is kept) — with calibration samples `calib_x` (NHWC float32): the
    layers before the last `trainable_layers` become the frozen int8 prefix, their activation
    ranges observed through the trainer's float forward (the same bytes on every machine)."""
    spec = copy.deepcopy(net) if isinstance(net, ModelSpec) else float_spec(net.eval(), calib_x, num_classes)
    if not 1 <= trainable_layers <= len(spec.layers):
        raise ConfigError(f"model.trainable_layers must be in [1, {len(spec.layers)}], got {trainable_layers}")
    calib_q = Model(spec).quantize_input(calib_x)
    _quantize_layers(spec, calib_q, 0, len(spec.layers) - trainable_layers)
    return spec


def quantize_head(model_bytes: bytes, params: list[tuple[np.ndarray, np.ndarray]], calib_q: np.ndarray) -> ModelSpec:
    """The model with its trainable head set to `params` and quantized to int8 like the frozen
    prefix (:func:`quantize_layer`): each head layer's output range from the float forward of
    `calib_q` (int8 model inputs). Every layer of the result is int8."""
    from fedtiny.trainer.model_format import from_bytes

    spec = from_bytes(model_bytes)
    first = spec.first_trainable
    head = [lay for lay in spec.layers[first:]]
    if len(params) != len(head):
        raise ConfigError(f"{len(params)} parameter pairs for a head of {len(head)} layers")
    for lay, (w, b) in zip(head, params):
        if lay.has_params:
            lay.weights, lay.bias = np.asarray(w, np.float32).reshape(lay.weights.shape), np.asarray(b, np.float32)
    _quantize_layers(spec, calib_q, first, len(spec.layers))
    return spec
