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
from fedtiny.fl.codec import Layout, decode


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


def test_fixed_size_sampling_uses_rdp_replace_one():
    a = Accounting(q=3 / 12, rounds=10, delta=1e-5, accountant="rdp", sampling="fixed", population=12, sample_size=3)
    assert epsilon(1.0, a) == pytest.approx(_independent(0.25, 1.0, 10, 1e-5, "rdp", "fixed"), rel=1e-9)


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
    from fedtiny.experiment import prepare_output

    cfg = compose(["experiment=digits_quick", "privacy=central", "privacy.target_epsilon=0.0001",
                   f"cache_dir={cache_dir}", "progress=false"])
    with pytest.raises(ConfigError, match="unreachable"):
        prepare_output(cfg, tmp_path, log=lambda *_: None)
    cfg = compose(["experiment=digits_quick", "privacy=central", "privacy.sampling=fixed", "clients_per_round=3",
                   f"cache_dir={cache_dir}"])
    with pytest.raises(ConfigError, match="PLD accountant has no fixed-size sampling"):
        prepare_output(cfg, tmp_path, log=lambda *_: None)
