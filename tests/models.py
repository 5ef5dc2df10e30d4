"""Random models for tests: a frozen int8 prefix and a float32 trainable suffix, built
layer by layer with consistent shapes and TFLite-style quantization parameters."""

from __future__ import annotations

import numpy as np

from fedtiny.trainer.model_format import LayerSpec, ModelSpec
from fedtiny.trainer.quant import quantize_multipliers

ACTS = ("none", "relu", "relu6")


def _window(rng, h, w, k_max=3, allow_dil=True):
    kh, kw = int(rng.integers(1, min(h, k_max) + 1)), int(rng.integers(1, min(w, k_max) + 1))
    dh = 2 if allow_dil and rng.random() < 0.2 and 2 * (kh - 1) + 1 <= h else 1
    dw = 2 if allow_dil and rng.random() < 0.2 and 2 * (kw - 1) + 1 <= w else 1
    sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    ph, pw = int(rng.integers(0, eh)), int(rng.integers(0, ew))
    oh, ow = (h + 2 * ph - eh) // sh + 1, (w + 2 * pw - ew) // sw + 1
    return dict(kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw)), (oh, ow)


def frozen_layer(rng, kind, shape, in_scale, in_zp, cout=None, act=None):
    """An int8 layer on input `shape` quantized with (in_scale, in_zp)."""
    h, w, c = shape
    act = act or str(rng.choice(ACTS))
    if kind in ("avgpool", "flatten"):
        if kind == "avgpool":
            geo, (oh, ow) = _window(rng, h, w, k_max=4, allow_dil=False)
            out = (oh, ow, c)
        else:
            geo, out = {}, (1, 1, h * w * c)
        return LayerSpec(kind, shape, out, out_scale=in_scale, output_offset=in_zp, **geo), in_scale, in_zp
    out_scale, out_zp = float(rng.uniform(0.02, 0.1)), int(rng.integers(-20, 20))
    if kind == "conv2d":
        geo, (oh, ow) = _window(rng, h, w)
        cout = cout or int(rng.integers(2, 6))
        wshape, depth = (cout, *geo["kernel"], c), geo["kernel"][0] * geo["kernel"][1] * c
        out, ch_mult = (oh, ow, cout), 1
    elif kind == "dwconv2d":
        geo, (oh, ow) = _window(rng, h, w)
        ch_mult = int(rng.integers(1, 3))
        cout = c * ch_mult
        wshape, depth, out = (*geo["kernel"], cout), geo["kernel"][0] * geo["kernel"][1], (oh, ow, cout)
    else:  # fc
        geo, cout = {}, cout or int(rng.integers(3, 10))
        wshape, depth, out, ch_mult = (cout, h * w * c), h * w * c, (1, 1, cout), 1
    w_scale = rng.uniform(0.5, 1.5, cout) / (np.sqrt(depth) * 64)
    weights = rng.integers(-127, 128, wshape).astype(np.int8)
    bias = rng.integers(-500, 500, cout).astype(np.int32)
    mult, shift = quantize_multipliers(in_scale * w_scale / out_scale)
    lo = -128 if act == "none" else max(-128, out_zp)
    hi = 127 if act != "relu6" else min(127, out_zp + int(round(6 / out_scale)))
    layer = LayerSpec(kind, shape, out, act=act, ch_mult=ch_mult, input_offset=-in_zp, output_offset=out_zp,
                      act_min=lo, act_max=hi, out_scale=out_scale, weights=weights, bias=bias, multiplier=mult,
                      shift=shift, **geo)
    return layer, out_scale, out_zp


def trainable_layer(rng, kind, shape, cout=None, act=None):
    h, w, c = shape
    act = act or str(rng.choice(ACTS))
    if kind == "avgpool":
        geo, (oh, ow) = _window(rng, h, w, k_max=4, allow_dil=False)
        return LayerSpec(kind, shape, (oh, ow, c), act="none", trainable=True, **geo)
    if kind == "flatten":
        return LayerSpec(kind, shape, (1, 1, h * w * c), trainable=True)
    if kind == "conv2d":
        geo, (oh, ow) = _window(rng, h, w)
        cout = cout or int(rng.integers(2, 5))
        wshape, out, ch_mult = (cout, *geo["kernel"], c), (oh, ow, cout), 1
    elif kind == "dwconv2d":
        geo, (oh, ow) = _window(rng, h, w)
        ch_mult = int(rng.integers(1, 3))
        cout = c * ch_mult
        wshape, out = (*geo["kernel"], cout), (oh, ow, cout)
    else:
        geo, cout, ch_mult = {}, cout or int(rng.integers(3, 8)), 1
        wshape, out = (cout, h * w * c), (1, 1, cout)
    weights = rng.normal(0, 0.5, wshape).astype(np.float32)
    bias = rng.normal(0, 0.1, cout).astype(np.float32)
    return LayerSpec(kind, shape, out, act=act, trainable=True, ch_mult=ch_mult, weights=weights, bias=bias, **geo)


def random_model(rng, frozen=("conv2d", "dwconv2d", "avgpool", "flatten"), trainable=("fc",), input_shape=None,
                 classes=None) -> ModelSpec:
    """Frozen kinds, then trainable kinds; the last trainable layer is forced to an FC head
    producing `classes` outputs with no activation."""
    input_shape = input_shape or (int(rng.integers(1, 6)), int(rng.integers(3, 9)), int(rng.integers(1, 4)))
    classes = classes or int(rng.integers(2, 6))
    scale, zp = float(rng.uniform(0.02, 0.1)), int(rng.integers(-10, 10))
    spec = ModelSpec(input_shape, scale, zp, classes)
    shape = input_shape
    for kind in frozen:
        layer, scale, zp = frozen_layer(rng, kind, shape, scale, zp)
        spec.layers.append(layer)
        shape = layer.out_shape
    for i, kind in enumerate(trainable):
        last = i == len(trainable) - 1
        layer = trainable_layer(rng, kind, shape, cout=classes if last else None, act="none" if last else None)
        spec.layers.append(layer)
        shape = layer.out_shape
    return spec
