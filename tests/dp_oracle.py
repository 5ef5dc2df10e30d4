"""Privacy formulas written from the papers, independently of dp-accounting, as test oracles.

* ``wor_gaussian_epsilon``: RDP of the Gaussian mechanism under sampling without replacement
  (Wang, Balle, Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical Moments
  Accountant", AISTATS 2019: Theorem 9's general bound, tightened for the Gaussian by Theorem 27's
  forward differences, evaluated exactly in mpmath), composed over T rounds and converted to
  (eps, delta) with Canonne, Kamath and Steinke 2020 (Prop. 12) over the integer orders 2..256.
* ``gaussian_epsilon``: the exact epsilon of T composed Gaussian mechanisms (Balle and Wang 2018,
  Theorem 8: a mu-GDP mechanism with mu = sqrt(T) / sigma).

``sigma`` is noise std / L2 sensitivity of the mechanism being sampled.
"""

from __future__ import annotations

import math


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _log_binom(a: int, j: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(j + 1) - math.lgamma(a - j + 1)


def _log_forward_diffs(sigma: float, n: int) -> list[float]:
    """log of the l-th forward difference at 0 of x -> exp(x (x + 1) / (2 sigma^2)), l = 0..n,
    in 80-digit arithmetic (the alternating sums cancel)."""
    import mpmath

    with mpmath.workdps(80):
        f = [mpmath.exp(mpmath.mpf(i) * (i + 1) / (2 * mpmath.mpf(sigma) ** 2)) for i in range(n + 1)]
        out = []
        for ell in range(n + 1):
            d = mpmath.fsum((-1) ** (ell - i) * mpmath.binomial(ell, i) * f[i] for i in range(ell + 1))
            out.append(float(mpmath.log(d)) if d > 0 else -math.inf)
    return out


def wor_gaussian_rdp(gamma: float, sigma: float, alpha: int, log_diffs: list[float]) -> float:
    """Renyi DP of order alpha (integer >= 2) of one round sampling a fraction gamma."""
    def eps(j: int) -> float:  # RDP of the Gaussian mechanism
        return j / (2 * sigma**2)

    terms = [0.0, 2 * math.log(gamma) + _log_binom(alpha, 2)
             + min(math.log(4) + math.log(math.expm1(eps(2))), math.log(2) + eps(2))]
    for j in range(3, alpha + 1):
        lo, hi = log_diffs[2 * (j // 2)], log_diffs[2 * ((j + 1) // 2)]
        bound = min(math.log(4) + 0.5 * (lo + hi), math.log(2) + (j - 1) * eps(j))
        terms.append(j * math.log(gamma) + _log_binom(alpha, j) + bound)
    return _logsumexp(terms) / (alpha - 1)


def wor_gaussian_epsilon(population: int, sample_size: int, sigma: float, rounds: int, delta: float) -> float:
    gamma = sample_size / population
    log_diffs = _log_forward_diffs(sigma, 258)
    best = math.inf
    for a in range(2, 257):
        rdp = rounds * wor_gaussian_rdp(gamma, sigma, a, log_diffs)
        best = min(best, rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return best


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def gaussian_epsilon(sigma: float, rounds: int, delta: float) -> float:
    mu = math.sqrt(rounds) / sigma

    def delta_of(e: float) -> float:
        return _phi(-e / mu + mu / 2) - math.exp(e) * _phi(-e / mu - mu / 2)

    lo, hi = 0.0, 1.0
    while delta_of(hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi
