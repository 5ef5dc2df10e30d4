"""Quantized updates: the device encodes, the server validates and decodes.

The wire format (one uint8 blob per tensor in the reply's ArrayRecord) is documented byte by
byte in ``device_trainer_c/include/fedtiny/ft_codec.h``: a 16-byte header (magic ``FQ``,
version, scheme, bits, flags, channels, value count, payload length), float32 scales (per
channel or per tensor) and the codes packed LSB first. A device sends the *change* of each
tensor it trained, ``w_local - w_global`` (channel subsets compact), quantized with unbiased
stochastic rounding — or, with error feedback, deterministic rounding (to nearest; one bit:
the scaled sign, s = mean|v|), the contractive compressor error feedback needs: it adds the
residual it kept from its last update and keeps the new one.

* :func:`encode` runs the C encoder (what a board runs);
* :func:`encode_reference` / :func:`decode` are independent numpy implementations of the same
  format — the encoder is bit-exact with C (tested), the decoder validates everything before
  it trusts a byte and raises :class:`CodecError` with the reason;
* :func:`tensor_key` derives each tensor's rounding key from (seed, round, device, tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedtiny import _core
from fedtiny.trainer.updates import declared_subset

HEADER_BYTES = 16
VERSION = 1
BITS = (32, 16, 8, 4, 2, 1)
SCHEME_FLOAT32, SCHEME_UNIFORM, SCHEME_SIGN = 0, 1, 2


class CodecError(ValueError):
    """A malformed update blob; the message is the reason the server records."""


@dataclass(frozen=True)
class Layout:
    """How a tensor's values map to output channels: `channels` groups, channel axis last
    (depthwise weights) or first (everything else, rows of n / channels values)."""

    channels: int
    channel_last: bool


def layout_of(shape: tuple[int, ...], axis: int) -> Layout:
    return Layout(int(shape[axis]), axis == len(shape) - 1 and len(shape) > 1)


def blob_bytes(bits: int, per_channel: bool, layout: Layout, n: int) -> int:
    """Bytes of one blob (header included), from the format's definition."""
    if bits == 32:
        return HEADER_BYTES + 4 * n
    return HEADER_BYTES + 4 * (layout.channels if per_channel else 1) + (n * bits + 7) // 8


def tensor_key(seed: int, server_round: int, partition_id: int, index: int) -> int:
    """Rounding key of tensor `index` of a device's update in a round."""
    return hash32(hash32(seed) ^ hash32(server_round * 0x9E3779B9 + partition_id) ^ (index * 0x85EBCA6B))


def hash32(x):
    """ft_hash32 on a Python int or a numpy uint32 array."""
    if isinstance(x, np.ndarray):
        x = x.astype(np.uint32)
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
        return x
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def uniforms(key: int, n: int) -> np.ndarray:
    """ft_uniform(key, i) for i in [0, n), float32."""
    h = hash32(np.uint32(key) ^ hash32(np.arange(n, dtype=np.uint32)))
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def _groups(n: int, per_channel: bool, layout: Layout) -> np.ndarray:
    if not per_channel:
        return np.zeros(n, np.int64)
    i = np.arange(n)
    return i % layout.channels if layout.channel_last else i // (n // layout.channels)


def _levels(bits: int) -> int:
    return 1 if bits == 1 else (1 << (bits - 1)) - 1


def _check_params(bits: int, layout: Layout, n: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if not (1 <= layout.channels <= 0xFFFF and n >= 1 and n % layout.channels == 0 and n <= 1 << 26):
        raise ValueError(f"{n} values cannot form {layout.channels} channels")


def encode(v: np.ndarray, bits: int, per_channel: bool, layout: Layout, key: int,
           residual: np.ndarray | None = None, nearest: bool = False) -> np.ndarray:
    """Encode with the C encoder (the device's code). `residual` (float32, same size) is updated
    in place (error feedback); `nearest` selects deterministic rounding. Returns the blob as uint8."""
    v = np.ascontiguousarray(v, np.float32).reshape(-1)
    _check_params(bits, layout, v.size)
    r = np.zeros(0, np.float32) if residual is None else residual
    if residual is not None and (r.dtype != np.float32 or r.size != v.size or not r.flags.c_contiguous):
        raise ValueError("residual must be a C-contiguous float32 array of the update's size")
    status, blob = _core.codec_encode(bits, int(per_channel), layout.channels, int(layout.channel_last), int(nearest),
                                      v, key & 0xFFFFFFFF, r.reshape(-1))
    if status != 0:
        raise ValueError(f"encode failed: {_core.status_name(status)}")
    return blob


def encode_reference(v: np.ndarray, bits: int, per_channel: bool, layout: Layout, key: int,
                     residual: np.ndarray | None = None, nearest: bool = False) -> bytes:
    """The numpy reference encoder: the same bytes as the C encoder (same float32 steps)."""
    v = np.asarray(v, np.float32).reshape(-1)
    n = v.size
    _check_params(bits, layout, n)
    t = v + residual.reshape(-1) if residual is not None else v.copy()
    scheme = SCHEME_FLOAT32 if bits == 32 else (SCHEME_SIGN if bits == 1 else SCHEME_UNIFORM)
    flags = int(per_channel) | (int(layout.channel_last) << 1) | (int(nearest) << 2)
    size = blob_bytes(bits, per_channel, layout, n)
    header = b"FQ" + bytes([VERSION, scheme, bits, flags]) + np.array([layout.channels], "<u2").tobytes() + \
        np.array([n, size - HEADER_BYTES], "<u4").tobytes()
    if bits == 32:
        if residual is not None:
            residual.reshape(-1)[:] = 0
        return header + t.astype("<f4").tobytes()
    g = _groups(n, per_channel, layout)
    a = np.abs(t)
    ngroups = layout.channels if per_channel else 1
    amax = np.zeros(ngroups, np.float32)
    np.maximum.at(amax, g, np.where(np.isfinite(a), a, np.float32(0)))
    amax[np.bincount(g, weights=~np.isfinite(a), minlength=ngroups) > 0] = np.nan
    levels = np.float32(_levels(bits))
    if bits == 1 and nearest:  # scaled sign: mean |t| per group, summed in index order (as the C loop)
        sums = amax.copy()  # NaN marks the groups with a non-finite value
        for grp in range(ngroups):
            if not np.isnan(sums[grp]):
                sums[grp] = np.cumsum(a[g == grp], dtype=np.float32)[-1]
        count = np.float32(n // layout.channels if per_channel else n)
        scales = (sums / count).astype(np.float32)
        s = scales[g]
        codes = (t >= 0).astype(np.uint32)
        if residual is not None:
            residual.reshape(-1)[:] = t - _dequant(bits, codes, s)
        return header + scales.astype("<f4").tobytes() + _pack(codes, bits)
    scales = (amax / levels).astype(np.float32)
    s = scales[g]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(s > 0, t / np.where(s > 0, s, np.float32(1)), np.float32(0)).astype(np.float32)
    if bits == 1:
        x = ((x + np.float32(1)) * np.float32(0.5)).astype(np.float32)
        lo, hi = np.float32(0), np.float32(1)
    else:
        lo, hi = -levels, levels
    x = np.where(~(x > lo), lo, np.where(x > hi, hi, x)).astype(np.float32)
    if nearest:
        tr = np.trunc(x)
        frac = x - tr
        q = tr.astype(np.int64) + (frac >= 0.5) - (frac <= -0.5)
    else:
        fl = np.floor(x)
        q = fl.astype(np.int64) + (uniforms(key, n) < (x - fl)).astype(np.int64)
    if bits == 1:
        codes = (q > 0).astype(np.uint32)
    else:
        L = _levels(bits)
        codes = (np.clip(q, -L, L) + L).astype(np.uint32)
    if residual is not None:
        residual.reshape(-1)[:] = t - _dequant(bits, codes, s)
    return header + scales.astype("<f4").tobytes() + _pack(codes, bits)


def _dequant(bits: int, codes: np.ndarray, s: np.ndarray) -> np.ndarray:
    if bits == 1:
        return np.where(codes > 0, s, -s).astype(np.float32)
    return ((codes.astype(np.int64) - _levels(bits)).astype(np.float32) * s).astype(np.float32)


def _pack(codes: np.ndarray, bits: int) -> bytes:
    planes = ((codes[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(planes, bitorder="little").tobytes()


def _unpack(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    planes = np.unpackbits(data, bitorder="little")[: n * bits].reshape(n, bits).astype(np.uint32)
    return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)


def decode(blob: np.ndarray | bytes, expect_n: int | None = None, expect_layout: Layout | None = None,
           max_bytes: int | None = None) -> tuple[np.ndarray, dict]:
    """Validate and decode one blob; returns (float32 values, header fields). Raises
    CodecError naming the first problem found."""
    b = np.frombuffer(bytes(blob), np.uint8) if not isinstance(blob, np.ndarray) else blob
    if b.dtype != np.uint8 or b.ndim != 1:
        raise CodecError(f"blob must be a 1-D uint8 array, got {b.dtype} {b.shape}")
    size = b.size
    if max_bytes is not None and size > max_bytes:
        raise CodecError(f"{size} bytes exceed the {max_bytes}-byte limit")
    if size < HEADER_BYTES:
        raise CodecError(f"truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    head = b[:HEADER_BYTES].tobytes()
    if head[:2] != b"FQ" or head[2] != VERSION:
        raise CodecError(f"bad magic or version {head[:3]!r}")
    scheme, bits, flags = head[3], head[4], head[5]
    if scheme > SCHEME_SIGN or flags & ~7:
        raise CodecError(f"bad scheme {scheme} or flags {flags:#x}")
    if bits not in BITS or (scheme == SCHEME_FLOAT32) != (bits == 32) or (scheme == SCHEME_SIGN) != (bits == 1):
        raise CodecError(f"bits {bits} invalid for scheme {scheme}")
    channels = int(np.frombuffer(head[6:8], "<u2")[0])
    n, payload = (int(x) for x in np.frombuffer(head[8:16], "<u4"))
    per_channel, channel_last = bool(flags & 1), bool(flags & 2)
    layout = Layout(channels, channel_last)
    if expect_n is not None and n != expect_n:
        raise CodecError(f"{n} values, expected {expect_n}")
    if expect_layout is not None and layout != expect_layout:
        raise CodecError(f"{channels} channels (axis {'last' if channel_last else 'first'}), expected "
                         f"{expect_layout.channels} (axis {'last' if expect_layout.channel_last else 'first'})")
    if not (1 <= channels and n >= 1 and n % channels == 0 and n <= 1 << 26):
        raise CodecError(f"{n} values cannot form {channels} channels")
    want = blob_bytes(bits, per_channel, layout, n)
    if payload != size - HEADER_BYTES or size != want:
        raise CodecError(f"length {size} B (payload field {payload}), expected {want} B")
    body = b[HEADER_BYTES:]
    if bits == 32:
        return body.view("<f4").astype(np.float32), {"bits": bits, "per_channel": per_channel, "layout": layout,
                                                     "nearest": bool(flags & 4)}
    ngroups = channels if per_channel else 1
    scales = body[: 4 * ngroups].view("<f4").astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        top = scales * np.float32(_levels(bits))  # the largest magnitude a code decodes to
    if not (np.isfinite(top).all() and (scales >= 0).all()):
        raise CodecError("a scale is negative, NaN, infinite or overflows")
    codes = _unpack(body[4 * ngroups :], bits, n)
    if bits > 1 and codes.max(initial=0) > 2 * _levels(bits):
        raise CodecError(f"a code outside the {bits}-bit grid")
    values = _dequant(bits, codes, scales[_groups(n, per_channel, layout)])
    return values, {"bits": bits, "per_channel": per_channel, "layout": layout, "nearest": bool(flags & 4)}


def payload_bytes(blob_size: int) -> int:
    """Scales and codes (or float32 values): the blob minus its header."""
    return max(0, blob_size - HEADER_BYTES)


def decode_update(blobs: dict[str, np.ndarray], subset: dict, shapes: dict[str, tuple], axes: dict[str, int],
                  global_arrays: dict[str, np.ndarray], max_bytes: int) -> tuple[dict | None, str | None]:
    """Server side: check and decode every tensor blob of a reply against what this tensor
    should carry (value count and channels from its shape and declared subset), and rebuild
    the device's parameters as global + change. Returns (float32 arrays, None) or (None, reason)."""
    out = {}
    for key in sorted(blobs):
        if key not in shapes:
            return None, f"unexpected arrays ['{key}']"
        axis, g = axes[key], global_arrays[key]
        channels, shape, reason = declared_subset(subset, key, tuple(shapes[key]), axis)
        if reason is not None:
            return None, reason
        if channels is not None:
            g = np.take(g, channels, axis=axis)
        try:
            delta, _ = decode(blobs[key], int(np.prod(shape)), layout_of(shape, axis), max_bytes)
        except CodecError as err:
            return None, f"{key}: {err}"
        out[key] = (g.astype(np.float32) + delta.reshape(shape)).astype(np.float32)
    return out, None
