"""Quantization helpers shared by model export and tests (TFLite conventions)."""

from __future__ import annotations

import math

import numpy as np


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Split a positive real multiplier into (int32 multiplier in [2^30, 2^31), shift).

    ``real ~= multiplier * 2**shift / 2**31``; a positive shift is a left shift, as in
    CMSIS-NN and TFLite. A zero multiplier gives (0, 0).
    """
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"multiplier must be finite and >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    mantissa, exponent = math.frexp(real)
    q = math.floor(mantissa * (1 << 31) + 0.5)  # TFLite rounds halves away from zero (Python's round: to even)
    if q == 1 << 31:
        q //= 2
        exponent += 1
    if exponent < -31:  # too small to represent: flush to zero
        return 0, 0
    if exponent > 30:
        raise ValueError(f"multiplier {real} too large for int32 requantization")
    return int(q), int(exponent)


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel :func:`quantize_multiplier`; returns int32 arrays."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, dtype=np.float64).ravel()]
    mult = np.array([p[0] for p in pairs], dtype=np.int32)
    shift = np.array([p[1] for p in pairs], dtype=np.int32)
    return mult, shift


def tflite_multipliers(input_scale: float, weight_scales: np.ndarray, output_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Requantization (multiplier, shift) per output channel of an int8 convolution or fully
    connected layer, computed from float32 scales exactly as TFLite (Micro) does when it prepares
    the layer: ``double(input_scale) * double(weight_scale) / double(output_scale)``, then
    :func:`quantize_multiplier`. A model whose multipliers come from here runs bit-exact in
    TFLite Micro from the scales its ``.tflite`` file stores."""
    s_in, s_out = float(np.float32(input_scale)), float(np.float32(output_scale))
    ws = np.asarray(weight_scales, dtype=np.float32).astype(np.float64).ravel()
    return quantize_multipliers(np.array([s_in * w / s_out for w in ws]))
