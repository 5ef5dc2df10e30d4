"""The fedtiny model file (format version 1), written and read in Python.

The layout is specified in ``device_trainer_c/include/fedtiny/ft_model.h``; the C loader is
the authority on validity. :func:`to_bytes` writes a :class:`ModelSpec`; :func:`from_bytes`
first runs the C loader (so corrupted files raise :class:`~fedtiny.errors.ModelFormatError`
with the loader's status name) and then decodes the file back into a :class:`ModelSpec`.

Weight layouts (NHWC activations, as CMSIS-NN):
``conv2d`` ``(C_OUT, KH, KW, C_IN)``; ``dwconv2d`` ``(KH, KW, C_OUT)``; ``fc`` ``(C_OUT, IN)``
where IN enumerates the input in (H, W, C) order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from fedtiny.errors import ModelFormatError

MAGIC = b"FTNY"
VERSION = 1
HEADER_BYTES = 48
LAYER_BYTES = 64
TENSOR_BYTES = 16
NO_TENSOR = 0xFFFF

LAYER_TYPES = {"conv2d": 1, "dwconv2d": 2, "fc": 3, "avgpool": 4, "flatten": 5}
LAYER_NAMES = {v: k for k, v in LAYER_TYPES.items()}
ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}
ACTIVATION_NAMES = {v: k for k, v in ACTIVATIONS.items()}
DTYPES = {1: np.int8, 2: np.int32, 3: np.float32}
DTYPE_CODES = {np.dtype(np.int8): 1, np.dtype(np.int32): 2, np.dtype(np.float32): 3}

_HEADER = struct.Struct("<4sHHIIHHHHHHHHfiII")
_LAYER = struct.Struct("<BBBB6H8HHHiihh4HfI")
_TENSOR = struct.Struct("<B3xIII")


@dataclass
class LayerSpec:
    """One layer. Frozen layers hold int8 weights, int32 bias, multiplier and shift;
    trainable layers hold float32 weights and bias."""

    type: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    act: str = "none"
    trainable: bool = False
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ch_mult: int = 1
    input_offset: int = 0
    output_offset: int = 0
    act_min: int = -128
    act_max: int = 127
    out_scale: float = 1.0
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    multiplier: np.ndarray | None = None
    shift: np.ndarray | None = None

    @property
    def has_params(self) -> bool:
        return self.type in ("conv2d", "dwconv2d", "fc")


@dataclass
class ModelSpec:
    """A whole model: input quantization, class count and layers (frozen prefix first)."""

    input_shape: tuple[int, int, int]
    input_scale: float
    input_zero_point: int
    num_classes: int
    layers: list[LayerSpec] = field(default_factory=list)

    @property
    def first_trainable(self) -> int:
        for i, layer in enumerate(self.layers):
            if layer.trainable:
                return i
        return len(self.layers)


def _crc32(body: bytes) -> int:
    import zlib

    return zlib.crc32(body) & 0xFFFFFFFF


def to_bytes(spec: ModelSpec) -> bytes:
    """Serialise ``spec``. Shapes are not validated here; load the result to validate it."""
    tensors: list[np.ndarray] = []

    def add(array: np.ndarray | None, dtype: type) -> int:
        if array is None:
            return NO_TENSOR
        tensors.append(np.ascontiguousarray(array, dtype=dtype).ravel())
        return len(tensors) - 1

    records = []
    for layer in spec.layers:
        if layer.has_params:
            wdt, bdt = (np.float32, np.float32) if layer.trainable else (np.int8, np.int32)
            t_w, t_b = add(layer.weights, wdt), add(layer.bias, bdt)
            t_m = NO_TENSOR if layer.trainable else add(layer.multiplier, np.int32)
            t_s = NO_TENSOR if layer.trainable else add(layer.shift, np.int32)
        else:
            t_w = t_b = t_m = t_s = NO_TENSOR
        records.append(
            _LAYER.pack(
                LAYER_TYPES[layer.type], ACTIVATIONS[layer.act], int(layer.trainable), 0,
                *layer.in_shape, *layer.out_shape, *layer.kernel, *layer.stride, *layer.padding,
                *layer.dilation, layer.ch_mult, 0, layer.input_offset, layer.output_offset,
                layer.act_min, layer.act_max, t_w, t_b, t_m, t_s, layer.out_scale, 0,
            )
        )
    layer_table = HEADER_BYTES
    tensor_table = layer_table + LAYER_BYTES * len(records)
    offset = tensor_table + TENSOR_BYTES * len(tensors)
    table, data = [], bytearray()
    for t in tensors:
        offset_aligned = (offset + 3) & ~3
        data += b"\0" * (offset_aligned - offset)
        table.append(_TENSOR.pack(DTYPE_CODES[t.dtype], offset_aligned, t.size, 0))
        raw = t.astype(t.dtype.newbyteorder("<"), copy=False).tobytes()
        data += raw
        offset = offset_aligned + len(raw)
    body_rest = b"".join(records) + b"".join(table) + bytes(data)
    total = HEADER_BYTES + len(body_rest)
    header = _HEADER.pack(
        MAGIC, VERSION, HEADER_BYTES, total, 0, len(spec.layers), len(tensors), spec.first_trainable,
        spec.num_classes, *spec.input_shape, 0, spec.input_scale, spec.input_zero_point, layer_table,
        tensor_table,
    )
    body = header[16:] + body_rest
    return header[:12] + struct.pack("<I", _crc32(body)) + body


def validate(data: bytes | bytearray | memoryview | np.ndarray) -> None:
    """Run the C loader on ``data``; raise ModelFormatError naming the problem."""
    from fedtiny import _core

    status, _ = _core.model_load(as_aligned_bytes(data))
    if status != 0:
        raise ModelFormatError(_core.status_name(status), "model rejected")


def as_aligned_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A C-contiguous, 8-byte aligned uint8 array holding ``data`` (copied once)."""
    src = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if src.dtype != np.uint8 or src.ndim != 1:
        raise ModelFormatError("TRUNCATED", "model bytes must be a 1-D uint8 buffer")
    out = np.empty(src.size + 8, dtype=np.uint8)
    start = (-out.ctypes.data) % 8
    aligned = out[start : start + src.size]
    aligned[:] = src
    return aligned


def from_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> ModelSpec:
    """Validate with the C loader, then decode into a :class:`ModelSpec`."""
    validate(data)
    raw = bytes(data)
    (_, _, _, _, _, n_layers, n_tensors, _, classes, in_h, in_w, in_c, _, in_scale, in_zp, lt, tt) = (
        _HEADER.unpack_from(raw, 0)
    )

    def tensor(index: int) -> np.ndarray | None:
        if index == NO_TENSOR:
            return None
        code, off, count, _ = _TENSOR.unpack_from(raw, tt + TENSOR_BYTES * index)
        return np.frombuffer(raw, dtype=np.dtype(DTYPES[code]).newbyteorder("<"), count=count, offset=off).copy()

    layers = []
    for i in range(n_layers):
        f = _LAYER.unpack_from(raw, lt + LAYER_BYTES * i)
        layer = LayerSpec(
            type=LAYER_NAMES[f[0]], act=ACTIVATION_NAMES[f[1]], trainable=bool(f[2]),
            in_shape=tuple(f[4:7]), out_shape=tuple(f[7:10]), kernel=tuple(f[10:12]),
            stride=tuple(f[12:14]), padding=tuple(f[14:16]), dilation=tuple(f[16:18]), ch_mult=f[18],
            input_offset=f[20], output_offset=f[21], act_min=f[22], act_max=f[23], out_scale=f[28],
        )
        # Only the tensors the loader resolved for this layer type are read (others are ignored).
        if layer.has_params:
            layer.weights = tensor(f[24]).reshape(weight_shape(layer))
            layer.bias = tensor(f[25])
            if not layer.trainable:
                layer.multiplier, layer.shift = tensor(f[26]), tensor(f[27])
        layers.append(layer)
    return ModelSpec((in_h, in_w, in_c), in_scale, in_zp, classes, layers)


def weight_shape(layer: LayerSpec) -> tuple[int, ...]:
    """Shape of a layer's weight tensor (see the module docstring)."""
    (ih, iw, ic), (_, _, oc) = layer.in_shape, layer.out_shape
    kh, kw = layer.kernel
    if layer.type == "conv2d":
        return (oc, kh, kw, ic)
    if layer.type == "dwconv2d":
        return (kh, kw, oc)
    if layer.type == "fc":
        return (oc, ih * iw * ic)
    return (0,)
