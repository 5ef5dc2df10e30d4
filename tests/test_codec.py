"""The update codec: C encoder (the device's) vs the numpy reference, exact round trips,
unbiased stochastic rounding with the Delta^2/4 variance bound, error feedback, and malformed
blobs rejected by both decoders with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedtiny import _core
from fedtiny.trainer import codec
from fedtiny.trainer.codec import BITS, CodecError, Layout, blob_bytes, decode, encode, encode_reference


def random_case(rng):
    bits = int(rng.choice(BITS))
    channels = int(rng.integers(1, 9))
    row = int(rng.integers(1, 24))
    n = channels * row
    layout = Layout(channels, bool(rng.integers(0, 2)))
    per_channel = bool(rng.integers(0, 2))
    v = (rng.standard_normal(n) * 10 ** rng.uniform(-5, 1)).astype(np.float32)
    if rng.random() < 0.2:
        v[:row] = 0.0  # a group of zeros
    residual = (rng.standard_normal(n) * 0.01).astype(np.float32) if rng.random() < 0.5 else None
    return bits, per_channel, layout, v, residual, int(rng.integers(0, 2**32)), bool(rng.random() < 0.4)


def c_decode(blob: np.ndarray, max_n: int):
    status, out, n, params = _core.codec_decode(np.ascontiguousarray(blob, np.uint8), max_n)
    return _core.status_name(status), out[:n], params


def _group_ids(n, per_channel, layout):
    if not per_channel:
        return np.zeros(n, int)
    return np.arange(n) % layout.channels if layout.channel_last else np.arange(n) // (n // layout.channels)


def grid_values(v, bits, per_channel, layout, residual=None):
    """Targets, grid scale (max-based) and grid step of stochastic/nearest rounding (from the format's definition)."""
    t = v + (residual if residual is not None else 0)
    g = _group_ids(v.size, per_channel, layout)
    amax = np.zeros(g.max() + 1, np.float32)
    np.maximum.at(amax, g, np.abs(t))
    levels = 1 if bits == 1 else 2 ** (bits - 1) - 1
    s = (amax / np.float32(levels))[g]
    step = 2 * s if bits == 1 else s
    return t, s, step


@pytest.mark.parametrize("seed", range(8))
def test_c_and_python_encoders_write_identical_bytes(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        bits, per_channel, layout, v, residual, key, nearest = random_case(rng)
        r_c = None if residual is None else residual.copy()
        r_py = None if residual is None else residual.copy()
        blob = encode(v, bits, per_channel, layout, key, r_c, nearest)
        assert blob.tobytes() == encode_reference(v, bits, per_channel, layout, key, r_py, nearest)
        assert blob.size == blob_bytes(bits, per_channel, layout, v.size)
        if residual is not None:
            assert r_c.tobytes() == r_py.tobytes()


@pytest.mark.parametrize("seed", range(8))
def test_round_trip_c_encode_python_decode_is_exact(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(60):
        bits, per_channel, layout, v, residual, key, nearest = random_case(rng)
        before = None if residual is None else residual.copy()
        blob = encode(v, bits, per_channel, layout, key, residual, nearest)
        values, header = decode(blob, v.size, layout)
        status, c_values, _ = c_decode(blob, v.size)
        assert status == "OK" and values.tobytes() == c_values.tobytes()
        assert header["bits"] == bits and header["layout"] == layout and header["nearest"] == nearest
        if before is not None:  # error feedback keeps exactly what was not sent
            t = v + before
            assert residual.tobytes() == (t - values).astype(np.float32).tobytes()
        if bits == 32:
            target = v + (before if before is not None else 0)
            assert values.tobytes() == target.astype(np.float32).tobytes()
            continue
        t, s, step = grid_values(v, bits, per_channel, layout, before)
        if nearest:  # deterministic: the key does not matter
            assert encode(v, bits, per_channel, layout, key + 1, None if before is None else before.copy(),
                          True).tobytes() == blob.tobytes()
        if nearest and bits == 1:  # scaled sign: mean |t| of the group, with t's sign
            g = _group_ids(v.size, per_channel, layout)
            mean = np.array([np.abs(t[g == k]).astype(np.float64).mean() for k in range(g.max() + 1)])[g]
            assert np.allclose(np.abs(values), mean, rtol=1e-5) and np.all((values >= 0) == (t >= 0))
            continue
        tol = (step / 2 if nearest else step) * (1 + 1e-5) + 4 * np.spacing(np.abs(t))  # + float32 rounding of q * s
        assert np.all(np.abs(values - t) <= tol)  # the nearest grid point, or one of the two around t
        k = (values / np.where(s > 0, s, 1)).astype(np.float64)
        if bits == 1:
            assert np.all(np.isin(np.round(k, 4), [-1.0, 1.0]) | (s == 0))
        else:
            assert np.allclose(k, np.round(k), atol=1e-3) and np.all(np.abs(np.round(k)) <= 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [16, 8, 4, 2, 1])
def test_stochastic_rounding_is_unbiased_with_bounded_variance(bits):
    rng = np.random.default_rng(bits)
    layout = Layout(4, False)
    v = rng.standard_normal(64).astype(np.float32)
    keys = 3000
    dec = np.stack([decode(encode(v, bits, True, layout, k), 64, layout)[0] for k in range(keys)]).astype(np.float64)
    t, s, step = grid_values(v, bits, True, layout)
    step = step.astype(np.float64)
    lo = np.floor((t / s) if bits > 1 else (t / s + 1) / 2)
    frac = ((t / s) if bits > 1 else (t / s + 1) / 2) - lo
    var_exact = frac * (1 - frac) * step**2  # Bernoulli between the two bracketing grid points
    err = dec.mean(axis=0) - t
    assert np.all(np.abs(err) <= 4.5 * np.sqrt(var_exact / keys) + 1e-6 * step)  # mean error -> 0
    assert abs(err.mean()) <= 4.5 * np.sqrt(var_exact.mean() / keys / v.size) + 1e-7
    var = dec.var(axis=0)
    assert np.all(var <= step**2 / 4 * 1.25 + 1e-12)  # the Delta^2 / 4 bound (sampling slack 25 %)
    busy = var_exact > 0.05 * step**2
    assert np.allclose(var[busy], var_exact[busy], rtol=0.2)  # and the variance is the Bernoulli one


def _blob(bits=4, per_channel=True, channels=3, row=5):
    v = np.linspace(-1, 1, channels * row).astype(np.float32)
    return encode(v, bits, per_channel, Layout(channels, False), 7), channels * row, Layout(channels, False)


def _with(blob, offset, data):
    b = blob.copy()
    b[offset : offset + len(data)] = np.frombuffer(bytes(data), np.uint8)
    return b


MALFORMED = {
    "truncated": (lambda b: b[:-2], "CODEC_LENGTH", "length"),
    "header only cut": (lambda b: b[:10], "CODEC_LENGTH", "truncated"),
    "bad magic": (lambda b: _with(b, 0, b"XQ"), "CODEC_HEADER", "magic"),
    "bad version": (lambda b: _with(b, 2, b"\x02"), "CODEC_HEADER", "version"),
    "bits 3": (lambda b: _with(b, 4, b"\x03"), "CODEC_BITS", "bits"),
    "bits vs scheme": (lambda b: _with(b, 3, b"\x00"), "CODEC_BITS", "bits"),
    "unknown flags": (lambda b: _with(b, 5, b"\x09"), "CODEC_HEADER", "flags"),
    "NaN scale": (lambda b: _with(b, 16, np.array([np.nan], "<f4").tobytes()), "CODEC_SCALE", "scale"),
    "Inf scale": (lambda b: _with(b, 20, np.array([np.inf], "<f4").tobytes()), "CODEC_SCALE", "scale"),
    "negative scale": (lambda b: _with(b, 16, np.array([-1.0], "<f4").tobytes()), "CODEC_SCALE", "scale"),
    "payload field": (lambda b: _with(b, 12, np.array([999], "<u4").tobytes()), "CODEC_LENGTH", "length"),
    "extra bytes": (lambda b: np.concatenate([b, np.zeros(4, np.uint8)]), "CODEC_LENGTH", "length"),
    "code off grid": (lambda b: _with(b, 16 + 12, b"\xff"), "CODEC_CODE", "grid"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_blobs_are_rejected_by_both_decoders(name):
    blob, n, layout = _blob()
    assert c_decode(blob, n)[0] == "OK"
    mutate, c_status, words = MALFORMED[name]
    bad = mutate(blob)
    assert c_decode(bad, n)[0] == c_status
    with pytest.raises(CodecError, match=words):
        decode(bad, n, layout)


def test_wrong_count_channels_and_size_limit_are_rejected():
    blob, n, layout = _blob()
    with pytest.raises(CodecError, match="values, expected"):
        decode(blob, n + 3, layout)
    with pytest.raises(CodecError, match="channels"):
        decode(blob, n, Layout(5, False))
    with pytest.raises(CodecError, match="limit"):
        decode(blob, n, layout, max_bytes=blob.size - 1)
    assert c_decode(blob, n - 1)[0] == "CODEC_LENGTH"  # the C decoder's output buffer is bounded too


def test_random_corruptions_never_crash_either_decoder():
    rng = np.random.default_rng(5)
    outcomes = {"ok": 0, "rejected": 0}
    for i in range(3000):
        blob, n, layout = _blob(bits=int(rng.choice(BITS)), per_channel=bool(i % 2))
        bad = blob.copy()
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(0, bad.size))] = rng.integers(0, 256)
        if rng.random() < 0.3:
            bad = bad[: int(rng.integers(0, bad.size + 1))]
        status = c_decode(bad, n)[0]
        try:
            values, _ = decode(bad, n, layout)
            assert status == "OK" and np.isfinite(values).all()
            outcomes["ok"] += 1
        except CodecError:
            assert status != "OK"
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 1000


def test_error_feedback_residual_lives_in_the_node_state():
    """The client keeps each tensor's residual in its Flower context between rounds."""
    from fedtiny.config import compose
    from fedtiny.client.simulated import encode_update

    cfg = compose(["codec.bits=2", "codec.error_feedback=true"])
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    rng = np.random.default_rng(0)
    deltas = {"layer0.weight": rng.standard_normal((3, 4)).astype(np.float32),
              "layer0.bias": rng.standard_normal(3).astype(np.float32)}
    axes = {"layer0.weight": 0, "layer0.bias": 0}
    _, carried = encode_update(deltas, axes, cfg.codec, (0, 1, 2), context)
    assert carried == 0.0  # nothing carried in the first round
    kept = {k: a.numpy().copy() for k, a in context.state.array_records["ef-residual"].items()}
    blobs, carried = encode_update(deltas, axes, cfg.codec, (0, 2, 2), context)
    assert carried == pytest.approx(np.sqrt(sum(np.sum(r.astype(np.float64) ** 2) for r in kept.values())))
    for index, key in enumerate(sorted(deltas)):
        r = kept[key].reshape(-1).copy()
        want = encode_reference(deltas[key], 2, key.endswith(".weight"), codec.layout_of(deltas[key].shape, 0),
                                codec.tensor_key(0, 2, 2, index), r, nearest=True)  # auto: nearest with feedback
        assert blobs[key].tobytes() == want
