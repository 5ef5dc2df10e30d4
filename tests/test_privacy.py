"""Privacy budgets: epsilon against an independent dp-accounting computation, the noise
multiplier for a target epsilon, clipping of what really leaves a device, server noise of the
stated size, and invalid settings refused before a run."""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedtiny import _core
from fedtiny.budgets.privacy import Accounting, epsilon, noise_for_target, noisy_sum_mean
from fedtiny.config import compose
from fedtiny.errors import ConfigError
from fedtiny.trainer.codec import Layout, decode

from tests.dp_oracle import gaussian_epsilon, wor_gaussian_epsilon


def _independent(q, z, T, delta, accountant, sampling="poisson", n=12, k=3):
    if q >= 1:
        event = dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), T)
    elif sampling == "poisson":
        event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), T)
    else:
        event = dpa.SelfComposedDpEvent(dpa.SampledWithoutReplacementDpEvent(n, k, dpa.GaussianDpEvent(z)), T)
    if accountant == "pld":
        acc = pld_privacy_accountant.PLDAccountant()
    else:
        rel = dpa.NeighboringRelation.REPLACE_ONE if sampling == "fixed" else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
        acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=rel)
    return acc.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("q,z,T,delta,accountant", [
    (0.25, 1.0, 10, 1e-5, "pld"), (0.1, 2.0, 50, 1e-6, "pld"), (1.0, 3.0, 10, 1e-5, "pld"),
    (0.25, 1.0, 10, 1e-5, "rdp"), (0.5, 0.8, 20, 1e-4, "rdp"),
])
def test_epsilon_equals_an_independent_dp_accounting_computation(q, z, T, delta, accountant):
    a = Accounting(q=q, rounds=T, delta=delta, accountant=accountant)
    assert epsilon(z, a) == pytest.approx(_independent(q, z, T, delta, accountant), rel=1e-9)


def test_flower_accountant_is_our_rdp_without_amplification():
    """Flower 1.41's RDP accountant (the no-amplification mode its DP wrappers accept) gives the
    epsilon of our RDP accountant at q = 1, and more than ours with Poisson amplification."""
    from fedtiny.budgets.privacy import flower_epsilon

    for z, T in ((1.0, 10), (2.5, 30)):
        ours = epsilon(z, Accounting(q=1.0, rounds=T, delta=1e-5, accountant="rdp"))
        assert flower_epsilon(z, T, 1e-5, 12, 3) == pytest.approx(ours, rel=1e-6)
        assert flower_epsilon(z, T, 1e-5, 12, 3) > epsilon(z, Accounting(q=0.25, rounds=T, delta=1e-5))


@pytest.mark.parametrize("n,k,z,T,delta", [
    (100, 5, 1.1, 400, 1e-5),  # the audit's example: 12.1 was reported, 61.3 is right
    (12, 3, 1.0, 10, 1e-5), (50, 10, 2.0, 30, 1e-6), (1000, 10, 0.8, 100, 1e-5),
])
def test_fixed_size_sampling_charges_twice_the_clip(n, k, z, T, delta):
    """Replace-one moves the sum by up to 2 clip, so the sampled Gaussian's multiplier is z / 2:
    checked against Wang-Balle-Kasiviswanathan's bound written in tests/dp_oracle.py."""
    a = Accounting(q=k / n, rounds=T, delta=delta, accountant="rdp", sampling="fixed", population=n, sample_size=k)
    assert epsilon(z, a) == pytest.approx(wor_gaussian_epsilon(n, k, z / 2, T, delta), rel=1e-6)
    if (n, k, z, T) == (100, 5, 1.1, 400):
        assert epsilon(z, a) == pytest.approx(61.3, abs=0.05)


def test_fixed_size_target_epsilon_is_met_by_the_independent_computation():
    a = Accounting(q=0.05, rounds=400, delta=1e-5, accountant="rdp", sampling="fixed", population=100, sample_size=5)
    z = noise_for_target(2.0, a)
    # the oracle evaluates integer orders only, so it may sit a little above dp-accounting's
    # fractional orders (1 % here); a z calibrated with the old sensitivity gave 4.6
    assert wor_gaussian_epsilon(100, 5, z / 2, 400, 1e-5) == pytest.approx(2.0, rel=0.02)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_local_dp_charges_any_two_inputs_of_a_device(accountant):
    """Local DP hides any two inputs of a device: sensitivity 2 clip, exact Gaussian composition."""
    for z, T in ((2.0, 10), (5.0, 50)):
        a = Accounting(q=1.0, rounds=T, delta=1e-5, accountant=accountant, local=True)
        want = gaussian_epsilon(z / 2, T, 1e-5)
        got = epsilon(z, a)
        assert got >= want * (1 - 1e-3)  # no accountant reports less than the exact value
        assert got == pytest.approx(want, rel=1e-3 if accountant == "pld" else 0.35)


@pytest.mark.parametrize("kwargs,message", [
    (dict(q=0.05, sampling="fixed"), "needs population and sample_size"),
    (dict(q=0.05, sampling="fixed", population=100), "needs population and sample_size"),
    (dict(q=0.05, sampling="fixed", population=100, sample_size=6), "is not sample_size / population"),
    (dict(q=0.5, sampling="fixed", population=4, sample_size=4), "1 <= sample_size < population"),
    (dict(q=0.0), "q must be in"), (dict(q=1.5), "q must be in"),
    (dict(q=0.5, sampling="uniform"), "sampling must be"), (dict(q=0.5, accountant="moments"), "accountant must be"),
    (dict(q=0.5, local=True), "local DP has no sampling"),
])
def test_accounting_refuses_what_it_cannot_account(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Accounting(rounds=10, delta=1e-5, **kwargs)


def test_noise_multiplier_for_a_target_epsilon_is_tight():
    a = Accounting(q=0.5, rounds=10, delta=1e-5)
    z = noise_for_target(4.0, a)
    assert epsilon(z, a) <= 4.0 < epsilon(z * 0.99, a)
    assert math.isinf(epsilon(0.0, a)) and epsilon(z, a, rounds=0) == 0.0
    with pytest.raises(ConfigError, match="unreachable"):
        noise_for_target(1e-4, a)


@pytest.mark.parametrize("bits", [32, 8, 2, 1])
def test_every_sent_update_is_within_the_clip_after_decoding(bits):
    """The device routine clips the *decoded* update: checked with the numpy decoder."""
    rng = np.random.default_rng(bits)
    clip = 0.5
    for case in range(40):
        shapes = [(int(rng.integers(1, 6)), int(rng.integers(1, 9))), (int(rng.integers(1, 6)),)]
        scale = 10 ** rng.uniform(-2, 1)
        tensors = []
        for i, shape in enumerate(shapes):
            v = (rng.standard_normal(shape) * scale).astype(np.float32)
            tensors.append((bits, int(i == 0), shape[0], 0, int(case % 2), v.reshape(-1), 1000 + i))
        status, blobs, before, sent = _core.codec_encode_update(tensors, clip, 0.0, 7)
        assert status == 0
        norm_sq = 0.0
        for (_, _, ch, _, _, v, _), blob in zip(tensors, blobs):
            values, _ = decode(blob, v.size, Layout(ch, False))
            norm_sq += float(np.sum(values.astype(np.float64) ** 2))
        assert math.sqrt(norm_sq) <= clip * (1 + 1e-6), (case, math.sqrt(norm_sq))
        assert before == pytest.approx(math.sqrt(sum(float(np.sum(t[5].astype(np.float64) ** 2)) for t in tensors)),
                                       rel=1e-5)
        if bits == 32 and before <= clip:  # nothing to clip: sent as is
            assert np.array_equal(decode(blobs[0], tensors[0][5].size, Layout(tensors[0][2], False))[0], tensors[0][5])


def test_local_noise_has_the_stated_std():
    v = np.zeros(4000, np.float32)
    status, blobs, _, _ = _core.codec_encode_update([(32, 0, 1, 0, 0, v, 1)], 1.0, 0.7, 99)
    x = decode(blobs[0], v.size, Layout(1, False))[0].astype(np.float64)
    assert status == 0
    assert abs(x.mean()) < 4 * 0.7 / math.sqrt(x.size)
    assert x.std() == pytest.approx(0.7, rel=4 / math.sqrt(2 * x.size))  # chi-square: sd(s)/s ~ 1/sqrt(2n)
    assert abs(float(np.mean(x**3)) / 0.7**3) < 0.2 and abs(float(np.mean(x**4)) / 0.7**4 - 3) < 0.4  # Gaussian


def test_server_noise_has_std_z_clip_over_the_denominator():
    """Central DP: with zero changes, the new global minus the old is pure noise N(0, (zC/den)^2)."""
    g = {"w": np.zeros((8, 50), np.float32)}
    z, clip, den = 1.3, 0.5, 4.0
    rng = np.random.default_rng(0)
    updates = [{"w": (np.zeros((8, 50), np.float32), None)} for _ in range(3)]
    out, counts = noisy_sum_mean(g, g, updates, {"w": 0}, clip, z, {"w": np.full(8, den)}, rng)
    noise = out["w"].astype(np.float64).ravel()
    assert list(counts["w"]) == [3] * 8
    want = z * clip / den
    assert noise.std() == pytest.approx(want, rel=4 / math.sqrt(2 * noise.size))
    assert abs(noise.mean()) < 4 * want / math.sqrt(noise.size)
    # an update moves the mean by change / denominator (the fixed DP-FedAvg denominator)
    moved = [{"w": (np.full((8, 50), 0.4, np.float32), None)}] * 2
    out, _ = noisy_sum_mean(g, g, moved, {"w": 0}, clip, 0.0, {"w": np.full(8, den)}, rng)
    assert np.allclose(out["w"], 0.8 / den)


@pytest.mark.parametrize("override,message", [
    (["privacy=central", "privacy.clip=0"], "privacy.clip must be > 0"),
    (["privacy=central", "privacy.clip=-1"], "privacy.clip must be > 0"),
    (["privacy=central", "privacy.noise_multiplier=-0.5"], "noise_multiplier must be >= 0"),
    (["privacy=central", "privacy.delta=1"], "privacy.delta must be in"),
    (["privacy=central", "privacy.delta=0"], "privacy.delta must be in"),
    (["privacy=central", "privacy.target_epsilon=-2"], "target_epsilon must be"),
    (["privacy=central", "privacy.accountant=moments"], "accountant"),
    (["privacy=central", "codec.bits=4", "codec.error_feedback=true"], "error feedback"),
])
def test_invalid_privacy_settings_fail_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message):
        compose(override)


def test_unreachable_target_fails_before_the_run(tmp_path, cache_dir):
    from fedtiny.server.prepare import prepare_output

    cfg = compose(["experiment=digits_quick", "privacy=central", "privacy.target_epsilon=0.0001",
                   f"cache_dir={cache_dir}", "progress=false"])
    with pytest.raises(ConfigError, match="unreachable"):
        prepare_output(cfg, tmp_path, log=lambda *_: None)
    cfg = compose(["experiment=digits_quick", "privacy=central", "privacy.sampling=fixed", "clients_per_round=3",
                   f"cache_dir={cache_dir}"])
    with pytest.raises(ConfigError, match="PLD accountant has no fixed-size sampling"):
        prepare_output(cfg, tmp_path, log=lambda *_: None)


def _sent_sq(tensors, blobs) -> float:
    """Exact (correctly rounded) squared norm of what the server decodes: the squares of float32
    values are exact in float64 and math.fsum rounds the sum once, so fsum <= clip^2 (clip^2
    exact in float64) holds exactly when the true norm is within the clip."""
    total = []
    for (_, _, ch, last, _, v, _), blob in zip(tensors, blobs):
        values, _ = decode(blob, v.size, Layout(ch, bool(last)))
        total.append(values.astype(np.float64) ** 2)
    return math.fsum(np.concatenate(total))


def _adversarial(rng):
    """(name, values) pairs: one large value and many small ones, long random vectors."""
    small = np.full(65536, 2.4e-4, np.float32)
    yield "audit: 1.0 then 65,536 x 2.4e-4", np.concatenate([[1.0], small]).astype(np.float32)
    yield "1e6 values, one large", np.concatenate([[3.0], np.full(999_999, 1e-3)]).astype(np.float32)
    yield "1e6 values, one large last", np.concatenate([np.full(999_999, 7e-4), [2.0]]).astype(np.float32)
    yield "1e6 normal", rng.standard_normal(1_000_000).astype(np.float32)
    yield "1e6 heavy tail", (rng.standard_cauchy(1_000_000) * 1e-3).astype(np.float32)
    yield "tiny values", (rng.standard_normal(5000) * 1e-30).astype(np.float32)
    yield "huge values", (rng.standard_normal(5000) * 1e30).astype(np.float32)


@pytest.mark.parametrize("bits", [32, 16, 8, 4, 2, 1])
def test_decoded_norm_never_exceeds_the_clip_on_adversarial_vectors(bits):
    rng = np.random.default_rng(bits)
    for name, v in _adversarial(rng):
        for per_channel, channels, nearest in ((0, 1, 0), (1, 8, 1), (1, 8, 0)):
            n = v.size - v.size % channels
            w = v[:n]
            for clip in (1.0, 0.37, float(np.float32(np.linalg.norm(w.astype(np.float64)) * 0.999))):
                tensors = [(bits, per_channel, channels, 0, nearest, w, 11), (bits, 0, 1, 0, nearest, w[:7] * 3, 12)]
                status, blobs, _, _ = _core.codec_encode_update(tensors, clip, 0.0, 5)
                assert status == 0, name
                c = float(np.float32(clip))
                sq = _sent_sq(tensors, blobs)
                assert sq <= c * c, (name, per_channel, nearest, clip, math.sqrt(sq) / c - 1)
                assert sq > 0, (name, "a nonzero update was sent as zeros")


def test_one_bit_stochastic_updates_are_never_zeroed():
    """The audit's case: 16,384 N(0,1) values, norm 5x the clip, 1-bit stochastic rounding; main
    sent about 40 % of draws as all zeros."""
    rng = np.random.default_rng(0)
    zeroed = 0
    worst = 0.0
    for draw in range(200):
        v = rng.standard_normal(16384).astype(np.float32)
        clip = float(np.float32(np.linalg.norm(v.astype(np.float64)) / 5))
        tensors = [(1, 0, 1, 0, 0, v, 1000 + draw)]
        status, blobs, _, _ = _core.codec_encode_update(tensors, clip, 0.0, draw)
        assert status == 0
        sq = _sent_sq(tensors, blobs)
        assert sq <= clip * clip
        zeroed += sq == 0
        worst = max(worst, math.sqrt(sq) / clip)
    assert zeroed == 0
    assert worst > 0.999  # clipped to the bound, not far below it


@pytest.mark.parametrize("bits", [32, 8, 1])
def test_local_dp_values_before_noise_are_within_the_clip(bits):
    """With a noise std of one subnormal ulp, the noise vanishes in the sum, so the 32-bit blob
    shows the clipped values the noise is added to."""
    rng = np.random.default_rng(3)
    for name, v in _adversarial(rng):
        clip = 0.5
        tensors = [(32, 0, 1, 0, 0, v, 1)]
        status, blobs, _, _ = _core.codec_encode_update(tensors, clip, 1e-45, 9)
        assert status == 0
        sq = _sent_sq(tensors, blobs)
        assert 0 < sq <= clip * clip, name


def test_updates_that_cannot_be_clipped_are_refused():
    nan = np.array([1.0, np.nan], np.float32)
    assert _core.codec_encode_update([(8, 0, 1, 0, 0, nan, 1)], 1.0, 0.0, 1)[0] != 0
    big = np.array([3e38, 3e38], np.float32)  # norm / clip = 4e45: beyond a float32 factor
    assert _core.codec_encode_update([(8, 0, 1, 0, 0, big, 1)], 1e-10, 0.0, 1)[0] != 0
    zero = np.zeros(100, np.float32)
    status, blobs, _, _ = _core.codec_encode_update([(8, 0, 1, 0, 0, zero, 1)], 1.0, 0.0, 1)
    assert status == 0 and _sent_sq([(8, 0, 1, 0, 0, zero, 1)], blobs) == 0
