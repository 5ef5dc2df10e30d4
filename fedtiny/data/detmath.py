"""Elementary functions and random variates built from IEEE 754 basic operations only.

numpy's and libm's ``exp``, ``log``, ``sin`` and ``cos`` are accurate but not bit-identical
across machines: numpy dispatches SIMD kernels by CPU (AVX2, AVX-512, NEON), glibc picks FMA
variants at load time, BLAS kernels sum in their own order, and ``Generator.normal`` /
``Generator.dirichlet`` call libm in their rejection steps. Everything here uses only addition,
subtraction, multiplication, division and square root (each correctly rounded, whatever SIMD
path numpy takes, one numpy operation at a time, so nothing is fused), plus exact operations
(``rint``, ``floor``, ``ldexp``, ``frexp``, comparisons). The same inputs and generator state
give the same bits on every machine. Accuracy: a few units in the last place (float64), which
the tests check against numpy's own functions.

Random variates draw only ``Generator.random`` (53 random bits turned into a double exactly)
from numpy's PCG64, whose integer stream is the same everywhere.
"""

from __future__ import annotations

import math

import numpy as np

_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_PIO2_HI = 1.57079632673412561417e00  # pi / 2 in two parts (Cody and Waite)
_PIO2_LO = 6.07710050650619224932e-11
_INV_PIO2 = 6.36619772367581382433e-01
TWO_PI = 6.283185307179586


def _horner(r: np.ndarray, coeffs: list[float]) -> np.ndarray:
    acc = np.full_like(r, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * r + c
    return acc


_EXP_TAYLOR = [1 / math.factorial(n) for n in range(15)]


def exp(x) -> np.ndarray:
    """e^x for finite |x| < 700 (the callers' domain): x = k ln 2 + r, |r| <= ln 2 / 2, a degree-14 Taylor polynomial in r."""
    x = np.asarray(x, dtype=np.float64)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    return np.ldexp(_horner(r, _EXP_TAYLOR), k.astype(np.int64))


def log(x) -> np.ndarray:
    """Natural log for finite x > 0 (the callers' domain): x = m 2^e with m in [sqrt(1/2), sqrt(2)), s = (m - 1) / (m + 1),
    log m = 2 (s + s^3/3 + ... + s^23/23)."""
    x = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(x)  # m in [0.5, 1)
    low = m < 0.7071067811865476
    m = np.where(low, m * 2.0, m)
    e = (e - low).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = _horner(s2, [1.0 / (2 * j + 1) for j in range(12)])
    return (e * _LN2_HI) + ((e * _LN2_LO) + 2.0 * s * series)


_SIN = [(-1) ** j / math.factorial(2 * j + 1) for j in range(10)]  # exact integers, one rounding each
_COS = [(-1) ** j / math.factorial(2 * j) for j in range(10)]


def _quadrant(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """r = x - k pi/2 with |r| <= pi/4, sin(r), cos(r) and k mod 4 (for |x| < 1e6)."""
    k = np.rint(x * _INV_PIO2)
    r = (x - k * _PIO2_HI) - k * _PIO2_LO
    r2 = r * r
    return r * _horner(r2, _SIN), _horner(r2, _COS), (k.astype(np.int64) % 4)


def sin(x) -> np.ndarray:
    s, c, q = _quadrant(np.asarray(x, dtype=np.float64))
    return np.select([q == 0, q == 1, q == 2], [s, c, -s], -c)


def cos(x) -> np.ndarray:
    s, c, q = _quadrant(np.asarray(x, dtype=np.float64))
    return np.select([q == 0, q == 1, q == 2], [c, -s, -c], s)


def normal(rng: np.random.Generator, size, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Gaussian variates by Box and Muller: sqrt(-2 log u1) cos(2 pi u2), u1 in (0, 1]."""
    shape = (size,) if np.isscalar(size) else tuple(size)
    u = rng.random((2,) + shape)
    z = np.sqrt(-2.0 * log(1.0 - u[0])) * cos(TWO_PI * u[1])
    return loc + scale * z


def uniform(rng: np.random.Generator, lo: float, hi: float, size=None):
    """Uniform on [lo, hi): lo + (hi - lo) u (what ``Generator.uniform`` computes)."""
    u = rng.random(size)
    return lo + (hi - lo) * u


def gamma(rng: np.random.Generator, shape: float, size: int) -> np.ndarray:
    """Gamma(shape, 1) variates by Marsaglia and Tsang (2000); shape < 1 through
    Gamma(shape + 1) * u^(1 / shape)."""
    a = float(shape)
    if a <= 0:
        raise ValueError(f"gamma shape must be > 0, got {a}")
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    out = np.empty(size, dtype=np.float64)
    todo = np.arange(size)
    while todo.size:
        x = normal(rng, todo.size)
        u = rng.random(todo.size)
        v = 1.0 + c * x
        v = v * v * v
        ok = v > 0
        lv = log(np.where(ok, v, 1.0))
        ok &= log(1.0 - u) < 0.5 * x * x + d - d * v + d * lv
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:
        out = out * exp(log(1.0 - rng.random(size)) / a)
    return out


def dirichlet(rng: np.random.Generator, alpha: float, k: int) -> np.ndarray:
    """A point of the symmetric Dirichlet(alpha) simplex in k dimensions (normalised gammas,
    summed in index order; drawn again if every gamma underflows to 0)."""
    while True:  # with a tiny alpha every gamma can underflow to 0: draw again
        g = gamma(rng, alpha, k)
        total = 0.0
        for v in g:
            total += float(v)
        if total > 0.0:
            return g / total
