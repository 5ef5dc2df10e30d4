"""int8 kernels vs the independent numpy oracle, on seeded random sweeps of shapes,
offsets, strides, padding, dilation, activation clamps and per-channel quantization."""

from __future__ import annotations

import numpy as np
import pytest

from fedtiny.errors import KernelError
from fedtiny.trainer import kernels
from fedtiny.trainer.quant import quantize_multipliers
from tests import oracle

CASES = 150


def _quant(rng: np.random.Generator, channels: int, depth: int):
    """Per-channel multipliers around 1/(depth*64), spread so some outputs clamp."""
    scale = np.exp2(rng.uniform(-2.5, 1.5, size=channels)) / (depth * 64.0)
    return quantize_multipliers(scale)


def _window_case(rng: np.random.Generator):
    """A random valid window geometry (redrawn until the output is non-empty)."""
    while True:
        case = _draw_window(rng)
        if case is not None:
            return case


def _draw_window(rng: np.random.Generator):
    n = int(rng.integers(1, 3))
    h, w = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    kh, kw = int(rng.integers(1, min(h, 4) + 1)), int(rng.integers(1, min(w, 4) + 1))
    sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    dh = int(rng.integers(1, 3)) if (kh - 1) * 2 + 1 <= h + 2 else 1
    dw = int(rng.integers(1, 3)) if (kw - 1) * 2 + 1 <= w + 2 else 1
    eff = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    ph, pw = int(rng.integers(0, eff[0])), int(rng.integers(0, eff[1]))
    oh = (h + 2 * ph - eff[0]) // sh + 1
    ow = (w + 2 * pw - eff[1]) // sw + 1
    if oh < 1 or ow < 1:
        return None
    # sometimes one more output row/col, as SAME padding with extra bottom/right padding gives
    if rng.random() < 0.3 and oh * sh - ph <= h - 1:
        oh += 1
    if rng.random() < 0.3 and ow * sw - pw <= w - 1:
        ow += 1
    return n, h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow)


def _act(rng):
    lo = int(rng.integers(-128, 20))
    return (lo, int(rng.integers(lo, 128))) if rng.random() < 0.5 else (-128, 127)


def test_requantize_matches_oracle_including_extremes():
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.integers(-(2**31), 2**31, 20000), [0, 1, -1, 2**31 - 1, -(2**31), 12345, -12345]])
    mult = rng.integers(2**30, 2**31, vals.size)
    shift = rng.integers(-31, 31, vals.size)
    mult[:50], shift[:50] = 2**31 - 1, 0
    vals, mult, shift = (a.astype(np.int32) for a in (vals, mult, shift))
    got = kernels.arm_nn_requantize(vals, mult, shift)
    np.testing.assert_array_equal(got, oracle.requantize(vals, mult, shift))
    # the doubling high multiply rounds ties up: -3 * 0.5 = -1.5 -> -1 ...
    half, zero = np.array([2**30], np.int32), np.zeros(1, np.int32)
    assert kernels.arm_nn_requantize(np.array([3, -3], np.int32), half, zero).tolist() == [2, -1]
    # ... and the divide by a power of two rounds ties away from zero: +-3 * ~1.0 / 2 -> +-2
    one, minus_one = np.array([2**31 - 1], np.int32), np.array([-1], np.int32)
    assert kernels.arm_nn_requantize(np.array([3, -3], np.int32), one, minus_one).tolist() == [2, -2]


@pytest.mark.parametrize("seed", range(CASES))
def test_convolve_s8(seed):
    rng = np.random.default_rng(1000 + seed)
    n, h, w, k, st, pd, dl, out_hw = _window_case(rng)
    cin, cout = int(rng.integers(1, 7)), int(rng.integers(1, 7))
    x = rng.integers(-128, 128, (n, h, w, cin)).astype(np.int8)
    wt = rng.integers(-127, 128, (cout, *k, cin)).astype(np.int8)
    bias = rng.integers(-5000, 5000, cout).astype(np.int32) if rng.random() < 0.8 else None
    mult, shift = _quant(rng, cout, k[0] * k[1] * cin)
    in_off, out_off, act = int(rng.integers(-127, 129)), int(rng.integers(-128, 128)), _act(rng)
    got = kernels.arm_convolve_s8(x, wt, bias, mult, shift, input_offset=in_off, output_offset=out_off, stride=st,
                                  padding=pd, dilation=dl, activation=act, output_hw=out_hw)
    want = oracle.conv(x, wt, bias, mult, shift, in_off, out_off, st, pd, dl, act, out_hw)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(CASES))
def test_depthwise_conv_s8(seed):
    rng = np.random.default_rng(2000 + seed)
    n, h, w, k, st, pd, dl, out_hw = _window_case(rng)
    cin, ch_mult = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    cout = cin * ch_mult
    x = rng.integers(-128, 128, (n, h, w, cin)).astype(np.int8)
    wt = rng.integers(-127, 128, (*k, cout)).astype(np.int8)
    bias = rng.integers(-3000, 3000, cout).astype(np.int32) if rng.random() < 0.8 else None
    mult, shift = _quant(rng, cout, k[0] * k[1])
    in_off, out_off, act = int(rng.integers(-127, 129)), int(rng.integers(-128, 128)), _act(rng)
    got = kernels.arm_depthwise_conv_s8(x, wt, bias, mult, shift, ch_mult=ch_mult, input_offset=in_off,
                                        output_offset=out_off, stride=st, padding=pd, dilation=dl, activation=act,
                                        output_hw=out_hw)
    want = oracle.depthwise(x, wt, bias, mult, shift, ch_mult, in_off, out_off, st, pd, dl, act, out_hw)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(CASES))
def test_fully_connected_s8(seed):
    rng = np.random.default_rng(3000 + seed)
    n, depth, cout = int(rng.integers(1, 4)), int(rng.integers(1, 200)), int(rng.integers(1, 20))
    x = rng.integers(-128, 128, (n, depth)).astype(np.int8)
    wt = rng.integers(-127, 128, (cout, depth)).astype(np.int8)
    bias = rng.integers(-20000, 20000, cout).astype(np.int32) if rng.random() < 0.8 else None
    in_off, out_off, act = int(rng.integers(-127, 129)), int(rng.integers(-128, 128)), _act(rng)
    mult, shift = _quant(rng, cout, depth)
    got = kernels.arm_fully_connected_per_channel_s8(x, wt, bias, mult, shift, input_offset=in_off,
                                                     output_offset=out_off, activation=act)
    np.testing.assert_array_equal(got, oracle.fully_connected(x, wt, bias, mult, shift, in_off, 0, out_off, act))
    w_off = int(rng.integers(-127, 129)) if rng.random() < 0.5 else 0
    got = kernels.arm_fully_connected_s8(x, wt, bias, int(mult[0]), int(shift[0]), input_offset=in_off,
                                         filter_offset=w_off, output_offset=out_off, activation=act)
    want = oracle.fully_connected(x, wt, bias, mult[0], shift[0], in_off, w_off, out_off, act)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(CASES))
def test_avgpool_s8(seed):
    rng = np.random.default_rng(4000 + seed)
    n, h, w, c = int(rng.integers(1, 3)), int(rng.integers(1, 10)), int(rng.integers(1, 10)), int(rng.integers(1, 6))
    k = (int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1)))
    st = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    pd = (int(rng.integers(0, k[0])), int(rng.integers(0, k[1])))
    out_hw = ((h + 2 * pd[0] - k[0]) // st[0] + 1, (w + 2 * pd[1] - k[1]) // st[1] + 1)
    x = rng.integers(-128, 128, (n, h, w, c)).astype(np.int8)
    act = _act(rng)
    got = kernels.arm_avgpool_s8(x, k, stride=st, padding=pd, activation=act)
    np.testing.assert_array_equal(got, oracle.avgpool(x, k, st, pd, act, out_hw))


def test_global_average_pool_rounds_half_away_from_zero():
    x = np.array([1, 2, -1, -2], dtype=np.int8).reshape(1, 1, 4, 1)
    assert kernels.arm_avgpool_s8(x[:, :, :2], (1, 2)).ravel().tolist() == [2]   # 1.5 -> 2
    assert kernels.arm_avgpool_s8(x[:, :, 2:], (1, 2)).ravel().tolist() == [-2]  # -1.5 -> -2


def test_kernel_arguments_are_checked():
    x = np.zeros((1, 4, 4, 2), np.int8)
    w = np.zeros((3, 2, 2, 2), np.int8)
    m, s = np.full(3, 2**30, np.int32), np.zeros(3, np.int32)
    with pytest.raises(KernelError, match="input must be int8"):
        kernels.arm_convolve_s8(x.astype(np.int16), w, None, m, s, input_offset=0, output_offset=0)
    with pytest.raises(KernelError, match="C_IN"):
        kernels.arm_convolve_s8(x, w[..., :1], None, m, s, input_offset=0, output_offset=0)
    with pytest.raises(KernelError, match="3 entries"):
        kernels.arm_convolve_s8(x, w, None, m[:2], s, input_offset=0, output_offset=0)
    with pytest.raises(KernelError, match="input_offset"):
        kernels.arm_convolve_s8(x, w, None, m, s, input_offset=500, output_offset=0)
    with pytest.raises(KernelError, match="activation clamp"):
        kernels.arm_convolve_s8(x, w, None, m, s, input_offset=0, output_offset=0, activation=(5, 1))
    with pytest.raises(KernelError, match="does not fit"):
        kernels.arm_convolve_s8(x, np.zeros((3, 9, 9, 2), np.int8), None, m, s, input_offset=0, output_offset=0)
