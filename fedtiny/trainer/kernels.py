"""CMSIS-NN-named int8 kernels of the device trainer, callable on numpy arrays.

Each function checks dtypes, shapes and ranges, allocates the CMSIS-NN context buffer
(``*_get_buffer_size()``) and the output, and raises :class:`~fedtiny.errors.KernelError`
on bad arguments. Layouts are CMSIS-NN's (see ``device_trainer_c/include/fedtiny/ft_nn.h``):
activations ``(N, H, W, C)``; conv filters ``(C_OUT, KH, KW, C_IN)``; depthwise filters
``(KH, KW, C_OUT)``; fully connected filters ``(C_OUT, DEPTH)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedtiny import _core
from fedtiny.errors import KernelError

Pair = tuple[int, int]


def _arr(a: np.ndarray, dtype: type, name: str, ndim: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.dtype(dtype):
        raise KernelError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise KernelError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _pair(v: int | Sequence[int], name: str, minimum: int) -> Pair:
    h, w = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if h < minimum or w < minimum:
        raise KernelError(f"{name} must be >= {minimum}, got {(h, w)}")
    return int(h), int(w)


def _range(value: int, lo: int, hi: int, name: str) -> int:
    if not lo <= value <= hi:
        raise KernelError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _quant(mult: np.ndarray, shift: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    mult, shift = _arr(mult, np.int32, "multiplier", 1), _arr(shift, np.int32, "shift", 1)
    if mult.size != channels or shift.size != channels:
        raise KernelError(f"multiplier and shift need {channels} entries, got {mult.size} and {shift.size}")
    if (mult < 0).any() or (shift < -31).any() or (shift > 30).any():
        raise KernelError("multipliers must be >= 0 and shifts in [-31, 30]")
    return mult, shift


def _bias(bias: np.ndarray | None, channels: int) -> np.ndarray:
    if bias is None:
        return np.zeros(0, dtype=np.int32)
    bias = _arr(bias, np.int32, "bias", 1)
    if bias.size != channels:
        raise KernelError(f"bias needs {channels} entries, got {bias.size}")
    return bias


def _act(activation: Pair) -> Pair:
    lo, hi = activation
    if not -128 <= lo <= hi <= 127:
        raise KernelError(f"activation clamp must satisfy -128 <= min <= max <= 127, got {activation}")
    return int(lo), int(hi)


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _ctx(nbytes: int) -> np.ndarray:
    return np.zeros(max(0, int(nbytes)), dtype=np.uint8)


def _status(rc: int, name: str) -> None:
    if rc != 0:
        raise KernelError(f"{name} returned status {rc} (ARM_CMSIS_NN_ARG_ERROR = -1)")


def _window_out(x: np.ndarray, k: Pair, stride: Pair, pad: Pair, dil: Pair, out_hw: Pair | None) -> Pair:
    if out_hw is not None:
        return _pair(out_hw, "output size", 1)
    oh = _out_size(x.shape[1], k[0], stride[0], pad[0], dil[0])
    ow = _out_size(x.shape[2], k[1], stride[1], pad[1], dil[1])
    if oh < 1 or ow < 1:
        raise KernelError(f"window {k} with padding {pad} does not fit input {x.shape[1:3]}")
    return oh, ow


def _window_args(x, kernel, cout, bias, multiplier, shift, stride, padding, dilation, activation, output_hw):
    """Checked arguments shared by the convolutions: quantization, bias, geometry, output."""
    mult, sh = _quant(multiplier, shift, cout)
    st, pd, dl = _pair(stride, "stride", 1), _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    oh, ow = _window_out(x, kernel, st, pd, dl, output_hw)
    out = np.empty((x.shape[0], oh, ow, cout), dtype=np.int8)
    return mult, sh, _bias(bias, cout), st, pd, dl, _act(activation), out


def arm_convolve_s8(input: np.ndarray, filter: np.ndarray, bias: np.ndarray | None, multiplier: np.ndarray,
                    shift: np.ndarray, *, input_offset: int, output_offset: int, stride: int | Pair = 1,
                    padding: int | Pair = 0, dilation: int | Pair = 1, activation: Pair = (-128, 127),
                    output_hw: Pair | None = None) -> np.ndarray:
    """int8 convolution, per-channel requantization. Returns ``(N, OH, OW, C_OUT)`` int8."""
    x, w = _arr(input, np.int8, "input", 4), _arr(filter, np.int8, "filter", 4)
    if w.shape[3] != x.shape[3]:
        raise KernelError(f"filter C_IN {w.shape[3]} != input channels {x.shape[3]}")
    mult, sh, b, st, pd, dl, (lo, hi), out = _window_args(x, w.shape[1:3], w.shape[0], bias, multiplier, shift, stride,
                                                          padding, dilation, activation, output_hw)
    ctx = _ctx(_core.arm_convolve_s8_get_buffer_size(x.shape, w.shape))
    rc = _core.arm_convolve_s8(x, x.shape, w, w.shape, b, mult, sh, _range(input_offset, -127, 128, "input_offset"),
                               _range(output_offset, -128, 127, "output_offset"), st, pd, dl, lo, hi, out.shape,
                               out, ctx)
    _status(rc, "arm_convolve_s8")
    return out


def arm_depthwise_conv_s8(input: np.ndarray, filter: np.ndarray, bias: np.ndarray | None, multiplier: np.ndarray,
                          shift: np.ndarray, *, ch_mult: int = 1, input_offset: int, output_offset: int,
                          stride: int | Pair = 1, padding: int | Pair = 0, dilation: int | Pair = 1,
                          activation: Pair = (-128, 127), output_hw: Pair | None = None) -> np.ndarray:
    """int8 depthwise convolution. ``filter`` is ``(KH, KW, C_IN * ch_mult)``."""
    x, w = _arr(input, np.int8, "input", 4), _arr(filter, np.int8, "filter", 3)
    if ch_mult < 1 or w.shape[2] != x.shape[3] * ch_mult:
        raise KernelError(f"filter channels {w.shape[2]} != input channels {x.shape[3]} * ch_mult {ch_mult}")
    cout = w.shape[2]
    mult, sh, b, st, pd, dl, (lo, hi), out = _window_args(x, w.shape[0:2], cout, bias, multiplier, shift, stride,
                                                          padding, dilation, activation, output_hw)
    wdims = (1, w.shape[0], w.shape[1], cout)
    ctx = _ctx(_core.arm_depthwise_conv_wrapper_s8_get_buffer_size(x.shape, wdims, out.shape, int(ch_mult)))
    rc = _core.arm_depthwise_conv_s8(x, x.shape, w, wdims, b, mult, sh, int(ch_mult),
                                     _range(input_offset, -127, 128, "input_offset"),
                                     _range(output_offset, -128, 127, "output_offset"), st, pd, dl, lo, hi,
                                     out.shape, out, ctx)
    _status(rc, "arm_depthwise_conv_s8")
    return out


def _fc_shapes(input: np.ndarray, filter: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    x, w = _arr(input, np.int8, "input", 2), _arr(filter, np.int8, "filter", 2)
    if w.shape[1] != x.shape[1]:
        raise KernelError(f"filter depth {w.shape[1]} != input depth {x.shape[1]}")
    return x, w, (x.shape[0], 1, 1, x.shape[1]), (w.shape[1], 1, 1, w.shape[0])


def arm_fully_connected_s8(input: np.ndarray, filter: np.ndarray, bias: np.ndarray | None, multiplier: int,
                           shift: int, *, input_offset: int, filter_offset: int = 0, output_offset: int,
                           activation: Pair = (-128, 127)) -> np.ndarray:
    """int8 fully connected, per-tensor requantization. ``input`` ``(N, DEPTH)``."""
    x, w, idims, wdims = _fc_shapes(input, filter)
    b = _bias(bias, w.shape[0])
    _range(multiplier, 0, 2**31 - 1, "multiplier")
    _range(shift, -31, 30, "shift")
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.int8)
    lo, hi = _act(activation)
    ctx = _ctx(_core.arm_fully_connected_s8_get_buffer_size(wdims))
    rc = _core.arm_fully_connected_s8(x, idims, w, wdims, b, int(multiplier), int(shift),
                                      _range(input_offset, -127, 128, "input_offset"),
                                      _range(filter_offset, -127, 128, "filter_offset"),
                                      _range(output_offset, -128, 127, "output_offset"), lo, hi,
                                      (x.shape[0], 1, 1, w.shape[0]), out, ctx)
    _status(rc, "arm_fully_connected_s8")
    return out


def arm_fully_connected_per_channel_s8(input: np.ndarray, filter: np.ndarray, bias: np.ndarray | None,
                                       multiplier: np.ndarray, shift: np.ndarray, *, input_offset: int,
                                       output_offset: int, activation: Pair = (-128, 127)) -> np.ndarray:
    """int8 fully connected, per-channel requantization (symmetric filter)."""
    x, w, idims, wdims = _fc_shapes(input, filter)
    mult, sh = _quant(multiplier, shift, w.shape[0])
    b = _bias(bias, w.shape[0])
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.int8)
    lo, hi = _act(activation)
    ctx = _ctx(_core.arm_fully_connected_s8_get_buffer_size(wdims))
    rc = _core.arm_fully_connected_per_channel_s8(x, idims, w, wdims, b, mult, sh,
                                                  _range(input_offset, -127, 128, "input_offset"),
                                                  _range(output_offset, -128, 127, "output_offset"), lo, hi,
                                                  (x.shape[0], 1, 1, w.shape[0]), out, ctx)
    _status(rc, "arm_fully_connected_per_channel_s8")
    return out


def arm_avgpool_s8(input: np.ndarray, window: int | Pair, *, stride: int | Pair = 1, padding: int | Pair = 0,
                   activation: Pair = (-128, 127), output_hw: Pair | None = None) -> np.ndarray:
    """int8 average pooling (windows partly outside the input average what is inside)."""
    x = _arr(input, np.int8, "input", 4)
    k, st, pd = _pair(window, "window", 1), _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    if pd[0] >= k[0] or pd[1] >= k[1]:
        raise KernelError(f"padding {pd} must be smaller than the window {k}")
    oh, ow = _window_out(x, k, st, pd, (1, 1), output_hw)
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), dtype=np.int8)
    lo, hi = _act(activation)
    ctx = _ctx(_core.arm_avgpool_s8_get_buffer_size(ow, x.shape[3]))
    rc = _core.arm_avgpool_s8(x, x.shape, k, st, pd, lo, hi, out.shape, out, ctx)
    _status(rc, "arm_avgpool_s8")
    return out


def arm_nn_requantize(values: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Elementwise CMSIS-NN requantization (double rounding) of int32 values."""
    v = _arr(values, np.int32, "values").ravel()
    m = np.broadcast_to(_arr(multiplier, np.int32, "multiplier"), v.shape).copy()
    s = np.broadcast_to(_arr(shift, np.int32, "shift"), v.shape).copy()
    if (s < -31).any() or (s > 30).any():
        raise KernelError("shifts must be in [-31, 30]")
    return _core.arm_nn_requantize(v, m, s).reshape(np.shape(values))
