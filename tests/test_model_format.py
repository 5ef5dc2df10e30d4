"""Model files: round trip, and corrupted files rejected with a named error (never a crash)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from fedtiny.errors import ModelFormatError
from fedtiny.trainer import Model, from_bytes, to_bytes
from fedtiny.trainer.model_format import HEADER_BYTES
from tests.models import random_model


@pytest.fixture(scope="module")
def good() -> bytes:
    rng = np.random.default_rng(5)
    return to_bytes(random_model(rng, frozen=("conv2d", "dwconv2d", "avgpool", "flatten"), trainable=("fc", "fc")))


def _patch(data: bytes, offset: int, fmt: str, value, fix_crc: bool = True) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    if fix_crc:
        struct.pack_into("<I", b, 12, zlib.crc32(bytes(b[16:])) & 0xFFFFFFFF)
    return bytes(b)


def _status(data: bytes) -> str:
    with pytest.raises(ModelFormatError) as err:
        Model(data)
    return err.value.status


def test_round_trip(good):
    spec = from_bytes(good)
    assert to_bytes(spec) == good
    model = Model(good)
    assert model.to_bytes() == good
    assert model.num_classes == spec.num_classes


@pytest.mark.parametrize("cut", [0, 1, 15, 47, 48, 100, -1])
def test_truncated(good, cut):
    assert _status(good[:cut] if cut >= 0 else good[:-1]) == "TRUNCATED"


def test_named_errors(good):
    tt = struct.unpack_from("<I", good, 44)[0]
    first_layer, first_tensor = HEADER_BYTES, tt
    assert _status(b"XXXX" + good[4:]) == "BAD_MAGIC"
    assert _status(_patch(good, 4, "<H", 2, fix_crc=False)) == "BAD_VERSION"
    assert _status(_patch(good, 6, "<H", 40, fix_crc=False)) == "BAD_HEADER_SIZE"
    assert _status(good + b"\0\0\0\0") == "SIZE_MISMATCH"
    flipped = bytearray(good)
    flipped[-1] ^= 1
    assert _status(bytes(flipped)) == "BAD_CRC"
    assert _status(_patch(good, 16, "<H", 0)) == "TOO_MANY_LAYERS"
    assert _status(_patch(good, 16, "<H", 33)) == "TOO_MANY_LAYERS"
    assert _status(_patch(good, 44, "<I", tt + 4)) == "TABLE_OUT_OF_RANGE"
    assert _status(_patch(good, 18, "<H", 60000)) == "TABLE_OUT_OF_RANGE"
    assert _status(_patch(good, first_tensor + 4, "<I", 2**32 - 4)) == "TENSOR_OUT_OF_RANGE"
    assert _status(_patch(good, first_tensor + 4, "<I", 8)) == "TENSOR_OUT_OF_RANGE"  # inside the tables
    assert _status(_patch(good, first_tensor + 8, "<I", 2**31)) == "TENSOR_OUT_OF_RANGE"
    assert _status(_patch(good, first_tensor + 0, "<B", 9)) == "BAD_DTYPE"
    assert _status(_patch(good, first_layer + 0, "<B", 77)) == "BAD_LAYER_TYPE"
    assert _status(_patch(good, first_layer + 1, "<B", 5)) == "BAD_ACTIVATION"
    assert _status(_patch(good, first_layer + 4, "<H", 60000)) == "BAD_DIMS"  # absurd in_h
    assert _status(_patch(good, first_layer + 4 + 10, "<H", 0)) == "BAD_DIMS"  # out_c = 0
    assert _status(_patch(good, first_layer + 20, "<H", 0)) == "BAD_DIMS"  # stride 0
    assert _status(_patch(good, first_layer + 48, "<H", 200)) == "BAD_TENSOR_INDEX"
    assert _status(_patch(good, first_tensor + 8, "<I", 3)) == "TENSOR_SIZE"
    assert _status(_patch(good, first_layer + 36, "<i", 1000)) == "BAD_QUANT"
    assert _status(_patch(good, 32, "<f", float("nan"))) == "BAD_QUANT"
    assert _status(_patch(good, first_layer + 2, "<B", 1)) == "BAD_TRAINABLE_LAYOUT"
    assert _status(_patch(good, 22, "<H", 1)) == "BAD_DIMS"  # one class
    assert _status(_patch(good, 22, "<H", 9)) == "SHAPE_MISMATCH"  # head does not produce 9 classes


def test_misaligned_tensor_is_rejected(good):
    tt = struct.unpack_from("<I", good, 44)[0]
    off = struct.unpack_from("<I", good, tt + 4)[0]
    assert _status(_patch(good, tt + 4, "<I", off + 1)) == "TENSOR_MISALIGNED"


def test_random_corruption_never_crashes(good):
    """CRC-valid random corruption: every outcome is a load or a ModelFormatError."""
    rng = np.random.default_rng(0)
    statuses: dict[str, int] = {}
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(int(rng.integers(1, 5))):
            b[int(rng.integers(16, len(b)))] = int(rng.integers(0, 256))
        struct.pack_into("<I", b, 12, zlib.crc32(bytes(b[16:])) & 0xFFFFFFFF)
        try:
            Model(bytes(b))
            statuses["OK"] = statuses.get("OK", 0) + 1
        except ModelFormatError as err:
            statuses[err.status] = statuses.get(err.status, 0) + 1
    assert sum(v for k, v in statuses.items() if k != "OK") > 1000, statuses
    assert len(statuses) >= 8, statuses  # many different named errors, not one catch-all
