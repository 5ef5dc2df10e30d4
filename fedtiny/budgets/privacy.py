"""Privacy budgets: client-level differential privacy for federated rounds.

Modes (``privacy.mode``):

* ``central`` (DP-FedAvg, McMahan et al. 2018): each device clips its update (all tensors
  together) to L2 norm ``clip`` in C, *after* quantization — the device encodes, decodes, and
  shrinks until the decoded update's norm is <= clip (``ft_codec_encode_update``), so the bound
  holds for the bytes that leave it. The server sums the decoded changes, adds Gaussian noise
  N(0, (z clip)^2) to every coordinate of the sum, and divides each output channel by a fixed
  denominator: the expected number of participating devices able to update it (q times the
  devices whose scheme covers it; not the number that answered, which would leak).
* ``local``: each device adds N(0, (z clip)^2) to its clipped update before encoding; the server
  averages as usual. The guarantee is per device and needs no trust in the server; no sampling
  amplification applies.

Accounting uses Google's ``dp-accounting``: the round is a sampled Gaussian mechanism,
composed over the rounds. dp-accounting's Gaussian event takes noise std / L2 sensitivity, and the
sensitivity depends on the neighbouring relation the sampling is analysed under (derived in
``docs/privacy.md``):

* ``poisson`` (each device joins a round with probability q = clients_per_round / devices),
  add-or-remove-one: adding a device moves the noisy sum by at most ``clip``, so the event's
  multiplier is z (std z clip / sensitivity clip);
* ``fixed`` (exactly clients_per_round devices without replacement, as Flower samples),
  replace-one (the population size is public): replacing one device's clipped update by
  another moves the sum by up to ``2 clip``, so the multiplier is z / 2;
* ``local``: a device's release must hide any two of its inputs (local DP is replace-one by
  definition), so the multiplier is z / 2, with no amplification by the server's sampling;
* every device in every round (q = 1, central): add-or-remove-one, multiplier z.

PLD is the default accountant for reported epsilons; RDP is available (faster, looser) and is
the only one dp-accounting 0.6 offers for fixed-size sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedtiny.data.detmath import normal
from fedtiny.errors import ConfigError


@dataclass(frozen=True)
class Accounting:
    """What the accountant composes: ``q`` the sampling rate, ``rounds``, ``delta``; for
    ``sampling="fixed"`` (q < 1) also ``population`` and ``sample_size`` with q = sample_size /
    population; ``local`` for local DP (replace-one, no amplification: q must be 1)."""

    q: float  # sampling probability (fixed: k / n)
    rounds: int
    delta: float
    accountant: str = "pld"  # pld | rdp
    sampling: str = "poisson"  # poisson | fixed
    population: int | None = None  # devices (fixed sampling)
    sample_size: int | None = None  # devices per round (fixed sampling)
    local: bool = False  # local DP: each device's own release, any two of its inputs

    def __post_init__(self) -> None:
        if not 0 < self.q <= 1:
            raise ConfigError(f"privacy accounting: q must be in (0, 1], got {self.q}")
        if self.accountant not in ("pld", "rdp"):
            raise ConfigError(f"privacy accounting: accountant must be pld or rdp, got {self.accountant!r}")
        if self.sampling not in ("poisson", "fixed"):
            raise ConfigError(f"privacy accounting: sampling must be poisson or fixed, got {self.sampling!r}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy accounting: delta must be in (0, 1), got {self.delta}")
        if self.local and self.q < 1:
            raise ConfigError("privacy accounting: local DP has no sampling amplification; q must be 1")
        if self.sampling == "fixed" and self.q < 1:
            n, k = self.population, self.sample_size
            if n is None or k is None:
                raise ConfigError("privacy accounting: fixed-size sampling needs population and sample_size "
                                  "(devices, and devices per round)")
            if not (isinstance(n, int) and isinstance(k, int) and 1 <= k < n):
                raise ConfigError(f"privacy accounting: fixed-size sampling needs 1 <= sample_size < population, "
                                  f"got {k} of {n}")
            if not math.isclose(self.q, k / n, rel_tol=1e-12):
                raise ConfigError(f"privacy accounting: q={self.q} is not sample_size / population = {k}/{n}")

    @property
    def replace_one(self) -> bool:
        """Whether the neighbouring relation is replace-one (sensitivity 2 clip)."""
        return self.local or (self.sampling == "fixed" and self.q < 1)


def _event(z: float, a: Accounting, rounds: int):
    import dp_accounting as dpa

    # dp-accounting's multiplier is noise std / L2 sensitivity: std z clip over clip (add or
    # remove one device) or over 2 clip (replace one device's update by another)
    gauss = dpa.GaussianDpEvent(z / 2 if a.replace_one else z)
    if a.q >= 1.0:
        one = gauss
    elif a.sampling == "poisson":
        one = dpa.PoissonSampledDpEvent(a.q, gauss)
    else:
        one = dpa.SampledWithoutReplacementDpEvent(a.population, a.sample_size, gauss)
    return dpa.SelfComposedDpEvent(one, rounds)


def epsilon(z: float, a: Accounting, rounds: int | None = None) -> float:
    """Epsilon after `rounds` (default a.rounds) rounds at noise multiplier z and delta a.delta."""
    import logging

    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    logging.getLogger("absl").setLevel(logging.ERROR)  # RDP's per-order convergence notices
    rounds = a.rounds if rounds is None else rounds
    if rounds == 0:
        return 0.0
    if z <= 0:
        return math.inf
    # the sampled event's relation; at q = 1 the event is a plain Gaussian whose multiplier above
    # already carries the sensitivity, and the PLD accountant's default relation applies
    relation = (dpa.NeighboringRelation.REPLACE_ONE if a.sampling == "fixed" and a.q < 1
                else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    if a.accountant == "pld":
        acc = pld_privacy_accountant.PLDAccountant(neighboring_relation=relation)
    else:
        acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    acc.compose(_event(z, a, rounds))
    return float(acc.get_epsilon(a.delta))


def flower_epsilon(z: float, rounds: int, delta: float, population: int, sample_size: int) -> float:
    """Epsilon from Flower's own accountant (flwr.supercore.privacy_accounting, RDP) in the only
    mode its DP strategy wrappers accept: no sampling amplification."""
    import logging

    from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                                   SamplingMethod)
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    logging.getLogger("absl").setLevel(logging.ERROR)
    if rounds == 0:
        return 0.0
    if z <= 0:
        return math.inf
    acc = RdpAccountant(PrivacyConfig(target_delta=delta, population_size=population,
                                      neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                      sampling_method=SamplingMethod.NO_AMPLIFICATION))
    acc.compose(GaussianPrivacyEvent(noise_multiplier=z, sample_size=sample_size, population_size=population), rounds)
    return float(acc.get_epsilon(delta))


def noise_for_target(target: float, a: Accounting, z_max: float = 200.0) -> float:
    """The smallest noise multiplier (to 0.1 %) whose epsilon after a.rounds is <= target."""
    if not target > 0:
        raise ConfigError(f"privacy.target_epsilon must be > 0, got {target}")
    if epsilon(z_max, a) > target:
        raise ConfigError(f"privacy.target_epsilon={target} is unreachable: even noise multiplier {z_max:g} gives "
                          f"epsilon {epsilon(z_max, a):.3g} after {a.rounds} rounds (q={a.q:g}, delta={a.delta:g})")
    lo, hi = 0.0, z_max
    while hi - lo > 1e-3 * hi:
        mid = 0.5 * (lo + hi)
        if epsilon(mid, a) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def plan_privacy(cfg, devices: int) -> dict:
    """Noise multiplier, sampling rate, per-round cumulative epsilon and the rounds the budget
    allows, for a validated config; a ConfigError for settings that cannot run."""
    p = cfg.privacy
    if p.mode == "off":
        return {"mode": "off"}
    k = int(cfg.clients_per_round) or devices
    a = Accounting(q=k / devices, rounds=int(cfg.rounds), delta=float(p.delta), accountant=str(p.accountant),
                   sampling=str(p.sampling), population=devices, sample_size=k)
    if p.mode == "local":  # each device's own releases: no amplification by the server's sampling
        a = Accounting(q=1.0, rounds=int(cfg.rounds), delta=float(p.delta), accountant=str(p.accountant), local=True)
    if a.accountant == "pld" and a.sampling == "fixed" and a.q < 1:
        raise ConfigError("privacy: dp-accounting's PLD accountant has no fixed-size sampling; use "
                          "privacy.sampling=poisson or privacy.accountant=rdp")
    z = noise_for_target(float(p.target_epsilon), a) if p.target_epsilon is not None else float(p.noise_multiplier)
    eps = [epsilon(z, a, t) for t in range(1, int(cfg.rounds) + 1)]
    allowed = int(cfg.rounds)
    if p.max_epsilon is not None:
        allowed = sum(1 for e in eps if e <= float(p.max_epsilon))
        if allowed == 0:
            raise ConfigError(f"privacy.max_epsilon={p.max_epsilon} allows no round: one round costs epsilon "
                              f"{eps[0]:.3g} at noise multiplier {z:.3g}")
    no_amp = Accounting(q=1.0, rounds=int(cfg.rounds), delta=float(p.delta), accountant=str(p.accountant),
                        local=p.mode == "local")
    return {"mode": str(p.mode), "clip": float(p.clip), "noise_multiplier": z, "q": a.q, "delta": a.delta,
            "accountant": a.accountant, "sampling": a.sampling if a.q < 1 else "all devices every round",
            "epsilon_per_round": eps, "rounds_allowed": allowed,
            "epsilon_without_amplification": epsilon(z, no_amp, allowed),
            "epsilon_flower_accountant": flower_epsilon(z, allowed, a.delta, devices, k)}


def noisy_sum_mean(reference: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray],
                   updates: list[dict], axes: dict[str, int], clip: float, z: float,
                   denominators: dict[str, np.ndarray], rng: np.random.Generator
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Central DP aggregation. `updates`: parsed updates {key: (values, channels)}, values being
    the devices' rebuilt parameters (reference + change). Sums the changes per coordinate, adds
    N(0, (z clip)^2) to every coordinate, divides each output channel by its fixed denominator;
    channels with denominator 0 keep the global value. Returns (new arrays, contributor counts)."""
    out, counts = {}, {}
    std = z * clip
    for key, g in global_arrays.items():
        axis = axes[key]
        ref = np.moveaxis(reference[key].astype(np.float64), axis, 0)
        total = np.zeros_like(ref)
        count = np.zeros(ref.shape[0], np.int64)
        for parsed in updates:
            if key not in parsed:
                continue
            values, channels = parsed[key]
            idx = np.arange(ref.shape[0]) if channels is None else np.asarray(channels)
            total[idx] += np.moveaxis(values.astype(np.float64), axis, 0) - ref[idx]
            count[idx] += 1
        total += normal(rng, total.shape, 0.0, std) if std > 0 else 0.0  # the same bits on every machine
        den = np.asarray(denominators[key], np.float64).reshape((-1,) + (1,) * (ref.ndim - 1))
        moved_g = np.moveaxis(g.astype(np.float64), axis, 0)
        mean = np.where(den > 0, ref + total / np.maximum(den, 1e-300), moved_g)
        out[key] = np.moveaxis(mean, 0, axis).astype(np.float32)
        counts[key] = count
    return out, counts


def update_norm(parsed: dict, reference: dict[str, np.ndarray], axes: dict[str, int]) -> float:
    """L2 norm of a device's decoded change over all tensors it sent."""
    sq = 0.0
    for key, (values, channels) in parsed.items():
        ref = reference[key] if channels is None else np.take(reference[key], channels, axis=axes[key])
        sq += float(np.sum((values.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return math.sqrt(sq)
