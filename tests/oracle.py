"""Independent numpy model of CMSIS-NN's int8 arithmetic (the tests' oracle).

Written from the arithmetic's definition, not from the C code: requantization is
``round_half_away(high_mul(wrap32(v * 2^left), m) / 2^right)`` with
``high_mul(a, b) = floor((a*b + 2^30) / 2^31)``; convolutions pad the offset-corrected
input with zeros and use whole-array products; pooling divides by the count of real inputs.
"""

from __future__ import annotations

import numpy as np


def wrap32(v: np.ndarray) -> np.ndarray:
    return ((v.astype(np.int64) + 2**31) % 2**32) - 2**31


def requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    acc, mult, shift = (np.asarray(a, dtype=np.int64) for a in np.broadcast_arrays(acc, mult, shift))
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    v = wrap32(acc * (np.int64(1) << left))
    high = np.floor_divide(v * mult + (1 << 30), 1 << 31)
    div = np.int64(1) << right
    mag, rem = np.divmod(np.abs(high), div)
    mag = mag + (2 * rem >= div)
    return np.where(high < 0, -mag, mag)


def _finish(acc: np.ndarray, mult, shift, out_off: int, act: tuple[int, int]) -> np.ndarray:
    return np.clip(requantize(acc, mult, shift) + out_off, act[0], act[1]).astype(np.int8)


def _pad(x: np.ndarray, pad: tuple[int, int], need: tuple[int, int]) -> np.ndarray:
    """Zero-pad (N, H, W, C) top/left by pad and bottom/right up to `need` rows/cols in total."""
    n, h, w, c = x.shape
    out = np.zeros((n, max(need[0], h + pad[0]), max(need[1], w + pad[1]), c), dtype=x.dtype)
    out[:, pad[0] : pad[0] + h, pad[1] : pad[1] + w] = x
    return out


def _taps(xp: np.ndarray, k, stride, dil, out_hw):
    """Yield (ky, kx, slab) with slab[n, oy, ox, c] = xp[n, oy*s + ky*d, ox*s + kx*d, c]."""
    for ky in range(k[0]):
        for kx in range(k[1]):
            y0, x0 = ky * dil[0], kx * dil[1]
            yield ky, kx, xp[:, y0 : y0 + stride[0] * out_hw[0] : stride[0], x0 : x0 + stride[1] * out_hw[1] : stride[1]]


def _need(k, stride, dil, out_hw):
    return tuple((out_hw[i] - 1) * stride[i] + dil[i] * (k[i] - 1) + 1 for i in range(2))


def conv(x, w, bias, mult, shift, in_off, out_off, stride, pad, dil, act, out_hw):
    k = w.shape[1:3]
    xp = _pad(x.astype(np.int64) + in_off, pad, _need(k, stride, dil, out_hw))
    acc = np.zeros((x.shape[0], *out_hw, w.shape[0]), dtype=np.int64)
    for ky, kx, slab in _taps(xp, k, stride, dil, out_hw):
        acc += np.einsum("nhwc,oc->nhwo", slab, w[:, ky, kx, :].astype(np.int64))
    if bias is not None:
        acc += bias.astype(np.int64)
    return _finish(acc, mult, shift, out_off, act)


def depthwise(x, w, bias, mult, shift, ch_mult, in_off, out_off, stride, pad, dil, act, out_hw):
    k = w.shape[0:2]
    xr = np.repeat(x.astype(np.int64) + in_off, ch_mult, axis=3)  # channel ic*ch_mult + m reads ic
    xp = _pad(xr, pad, _need(k, stride, dil, out_hw))
    acc = np.zeros((x.shape[0], *out_hw, w.shape[2]), dtype=np.int64)
    for ky, kx, slab in _taps(xp, k, stride, dil, out_hw):
        acc += slab * w[ky, kx, :].astype(np.int64)
    if bias is not None:
        acc += bias.astype(np.int64)
    return _finish(acc, mult, shift, out_off, act)


def fully_connected(x, w, bias, mult, shift, in_off, w_off, out_off, act):
    acc = (x.astype(np.int64) + in_off) @ (w.astype(np.int64) + w_off).T
    if bias is not None:
        acc += bias.astype(np.int64)
    return _finish(acc, mult, shift, out_off, act)


def avgpool(x, k, stride, pad, act, out_hw):
    need = _need(k, stride, (1, 1), out_hw)
    xp = _pad(x.astype(np.int64), pad, need)
    ones = _pad(np.ones_like(x, dtype=np.int64), pad, need)
    total = np.zeros((x.shape[0], *out_hw, x.shape[3]), dtype=np.int64)
    count = np.zeros_like(total)
    for (_, _, s), (_, _, c) in zip(_taps(xp, k, stride, (1, 1), out_hw), _taps(ones, k, stride, (1, 1), out_hw)):
        total += s
        count += c
    mag = (np.abs(total) + count // 2) // count  # C integer division truncates toward zero
    return np.clip(np.where(total < 0, -mag, mag), act[0], act[1]).astype(np.int8)
