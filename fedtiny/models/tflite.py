"""int8 TFLite models in and out of fedtiny, through the TFLite flatbuffer schema (no TensorFlow).

**In** (:func:`read_tflite`, :func:`import_tflite`): a fully int8 ``.tflite`` with one subgraph
that is a chain of these operators, as TFLite's converters emit them:

=====================  ==================================================================
``CONV_2D``            per-channel (or per-tensor) int8 weights, int32 bias, SAME/VALID
                       padding, strides, dilation, fused NONE/RELU/RELU6
``DEPTHWISE_CONV_2D``  the same, with a depth multiplier
``FULLY_CONNECTED``    per-tensor or per-channel int8 weights (default weight format)
``AVERAGE_POOL_2D``    input and output quantized alike (the converter's output)
``MEAN``               over height and width (global average pooling as Keras and
                       litert-torch emit it): a depthwise layer of ones with TFLite Micro's
                       multiplier for 1/(H*W), so the sum and its rounding are TFLite's
``RESHAPE``            flattening to ``[1, N]`` (or a shape equal to its input's)
``SOFTMAX``            last: dropped (fedtiny's head outputs logits; its loss applies softmax)
``PAD``                before a VALID CONV_2D or DEPTHWISE_CONV_2D: becomes its padding
``QUANTIZE``           first, from a float32 input: becomes the model's input quantization
``DEQUANTIZE``         last: dropped
=====================  ==================================================================

Anything else (another operator, a graph with branches, uint8/int16 activations, float
weights, non-zero weight zero points, sparsity, several subgraphs) is refused with a
:class:`~fedtiny.errors.TFLiteError` naming the operator, its index and the reason. Each
operator becomes one fedtiny layer with the requantization TFLite Micro computes from the same
float32 scales (:func:`~fedtiny.trainer.quant.tflite_multipliers`), so fedtiny's int8 forward
equals TFLite Micro's byte for byte. :func:`make_head` then turns the last layers into the float
trainable head (weights dequantized with their scales).

**Out** (:func:`to_tflite`): a model whose layers are all int8 becomes a ``.tflite`` file of
the same operators (input int8, output the int8 logits of the last layer; no SOFTMAX). The
weight scales TFLite stores are recovered from each layer's multiplier: the float32 scale that
gives exactly that multiplier (every model quantized with TFLite's conventions has one).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fedtiny.errors import ModelFormatError, TFLiteError
from fedtiny.trainer import model_format
from fedtiny.trainer.model_format import LayerSpec, ModelSpec
from fedtiny.trainer.quant import quantize_multiplier, tflite_multipliers

SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MEAN", "RESHAPE", "PAD",
                 "SOFTMAX", "QUANTIZE", "DEQUANTIZE")
_ACTS = {0: "none", 1: "relu", 3: "relu6"}  # ActivationFunctionType NONE, RELU, RELU6
_ACT_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
_TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8", 10: "float64"}
_NP_TYPES = {0: np.float32, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


def schema():
    """TFLite's flatbuffer schema (object API), as the ``tflite-micro`` package ships it."""
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated
    except ImportError as err:  # pragma: no cover - a dependency of fedtiny
        raise TFLiteError(f"reading and writing .tflite files needs the tflite-micro package ({err})") from err
    return schema_py_generated


@dataclass
class _Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    type: int
    scale: np.ndarray  # float32, empty when not quantized
    zero_point: np.ndarray  # int64
    axis: int
    data: np.ndarray | None  # constant data, or None for activations

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, f"type {self.type}")

    def describe(self) -> str:
        return f"tensor {self.index} '{self.name}' {self.type_name}{list(self.shape)}"


@dataclass
class ImportedLayer:
    """How one operator became one fedtiny layer (for the import table)."""

    op_index: int
    op: str
    layer: int | None  # index in the ModelSpec, None when the operator was dropped
    note: str = ""


@dataclass
class Imported:
    """An imported model: every layer int8 (``spec``), the float32 weight scales of its layers
    with weights (None for the others), and what each operator became."""

    spec: ModelSpec
    weight_scales: list[np.ndarray | None]
    ops: list[ImportedLayer] = field(default_factory=list)
    sha256: str = ""
    source: str = ""

    def table(self) -> list[tuple[str, ...]]:
        """Rows (operator, fedtiny layer, input -> output shape, quantization) for printing."""
        rows = []
        for o in self.ops:
            if o.layer is None:
                rows.append((f"{o.op_index} {o.op}", "-", "", o.note))
                continue
            lay = self.spec.layers[o.layer]
            quant = f"out scale {lay.out_scale:.4g} zp {lay.output_offset}"
            if lay.multiplier is not None:
                quant += f", {'per-channel' if len(set(self._scales(o.layer))) > 1 else 'per-tensor'} weights"
            rows.append((f"{o.op_index} {o.op}", f"{o.layer} {lay.type}{'+' + lay.act if lay.act != 'none' else ''}",
                         f"{lay.in_shape} -> {lay.out_shape}", quant + (f"; {o.note}" if o.note else "")))
        return rows

    def _scales(self, layer: int) -> list[float]:
        s = self.weight_scales[layer]
        return [] if s is None else [float(v) for v in s]


def _read_buffer(raw: bytes, model, index: int, what: str) -> np.ndarray | None:
    if not 0 <= index < len(model.buffers or []):
        raise TFLiteError(f"{what} names buffer {index}; the model has {len(model.buffers or [])}")
    buf = model.buffers[index]
    if buf.data is not None and len(buf.data) > 0:
        return np.asarray(buf.data, dtype=np.uint8)
    if buf.offset > 1:  # large models keep their data after the flatbuffer
        if buf.offset + buf.size > len(raw):
            raise TFLiteError(f"{what}: buffer {index} lies outside the file (offset {buf.offset}, size {buf.size}, "
                              f"file {len(raw)} bytes)")
        return np.frombuffer(raw, dtype=np.uint8, count=buf.size, offset=buf.offset)
    return None


def _tensor(raw: bytes, model, sg, index: int, what: str) -> _Tensor:
    tensors = sg.tensors or []
    if not 0 <= index < len(tensors):
        raise TFLiteError(f"{what} names tensor {index}; the subgraph has {len(tensors)}")
    t = tensors[index]
    name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else str(t.name or "")
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
    if any(d < 0 for d in shape[1:]):
        raise TFLiteError(f"{what}: tensor {index} '{name}' has a dynamic shape {list(shape)}")
    if getattr(t, "sparsity", None) is not None:
        raise TFLiteError(f"{what}: tensor {index} '{name}' is sparse; fedtiny imports dense tensors")
    q = t.quantization
    scale = np.asarray(q.scale if q is not None and q.scale is not None else [], dtype=np.float32)
    zp = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], dtype=np.int64)
    if q is not None and q.details is not None and getattr(q, "detailsType", 0):
        raise TFLiteError(f"{what}: tensor {index} '{name}' uses custom quantization; fedtiny imports affine int8")
    data = _read_buffer(raw, model, int(t.buffer), f"{what}: tensor {index} '{name}'")
    tt = _Tensor(index, name, shape, int(t.type), scale, zp, int(q.quantizedDimension) if q is not None else 0, None)
    if data is not None:
        dtype = _NP_TYPES.get(tt.type)
        if dtype is None:
            raise TFLiteError(f"{what}: {tt.describe()} has an unsupported data type")
        count = int(np.prod(shape)) if shape else 1
        if data.size != count * np.dtype(dtype).itemsize:
            raise TFLiteError(f"{what}: {tt.describe()} holds {data.size} bytes, its shape needs "
                              f"{count * np.dtype(dtype).itemsize}")
        tt.data = data.view(np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype)
    return tt


def _parse(raw: bytes, source: str):
    S = schema()
    if len(raw) < 8:
        raise TFLiteError(f"{source}: {len(raw)} bytes, too short for a TFLite model")
    if raw[4:8] != b"TFL3":
        raise TFLiteError(f"{source}: not a TFLite model (file identifier {raw[4:8]!r}, expected b'TFL3')")
    if struct.unpack_from("<I", raw, 0)[0] + 4 > len(raw):
        raise TFLiteError(f"{source}: truncated (the root table lies outside the {len(raw)}-byte file)")
    try:
        return S.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    except Exception as err:  # noqa: BLE001 - whatever a damaged flatbuffer raises while it is walked
        raise TFLiteError(f"{source}: damaged TFLite flatbuffer ({type(err).__name__}: {err})") from err


def _op_names() -> dict[int, str]:
    S = schema()
    return {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def _per_tensor(t: _Tensor, what: str) -> tuple[float, int]:
    if t.type != 9:
        raise TFLiteError(f"{what}: {t.describe()} is {t.type_name}; fedtiny imports int8 activations "
                          "(convert with full-integer quantization)")
    if t.scale.size != 1 or t.zero_point.size != 1:
        raise TFLiteError(f"{what}: {t.describe()} needs one scale and zero point (has {t.scale.size})")
    s, zp = float(t.scale[0]), int(t.zero_point[0])
    if not (math.isfinite(s) and s > 0) or not -128 <= zp <= 127:
        raise TFLiteError(f"{what}: {t.describe()} has scale {s} and zero point {zp}")
    return s, zp


def _weights(t: _Tensor, what: str, channels: int, axis: int) -> np.ndarray:
    """The float32 per-channel scales of an int8 weight tensor (one scale repeated when per tensor)."""
    if t.data is None:
        raise TFLiteError(f"{what}: {t.describe()} is not a constant; fedtiny imports constant weights")
    if t.type != 9:
        raise TFLiteError(f"{what}: weights {t.describe()} are {t.type_name}; fedtiny imports int8 weights")
    if t.scale.size not in (1, channels) or (t.scale.size > 1 and t.axis != axis):
        raise TFLiteError(f"{what}: weights {t.describe()} have {t.scale.size} scales on axis {t.axis}; "
                          f"fedtiny imports one per tensor or one per output channel (axis {axis})")
    if np.any(t.zero_point != 0):
        raise TFLiteError(f"{what}: weights {t.describe()} have non-zero zero points; int8 weights are symmetric")
    if not np.all(np.isfinite(t.scale)) or np.any(t.scale <= 0):
        raise TFLiteError(f"{what}: weights {t.describe()} have a scale that is not positive")
    return np.broadcast_to(t.scale, (channels,)).astype(np.float32)


def _bias(t: _Tensor | None, what: str, channels: int) -> np.ndarray:
    if t is None:
        return np.zeros(channels, dtype=np.int32)
    if t.data is None or t.type != 2 or t.data.size != channels:
        raise TFLiteError(f"{what}: bias {t.describe()} must be a constant int32 vector of {channels}")
    return t.data.astype(np.int32).ravel()


def _hwc(shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """An activation's shape as fedtiny's (H, W, C), batch 1."""
    if not shape or shape[0] not in (1, -1):
        raise TFLiteError(f"{what}: shape {list(shape)} is not a batch of one")
    dims = shape[1:]
    if len(dims) == 3:
        return tuple(int(d) for d in dims)
    if len(dims) == 2:
        return (1, int(dims[0]), int(dims[1]))
    if len(dims) == 1:
        return (1, 1, int(dims[0]))
    raise TFLiteError(f"{what}: shape {list(shape)} has no (H, W, C) reading")


def _window(in_hw: tuple[int, int], out_hw: tuple[int, int], k: tuple[int, int], stride: tuple[int, int],
            dil: tuple[int, int], padding: int, what: str) -> tuple[int, int]:
    """TFLite's padding (top, left) for SAME (0) or VALID (1), checking the output size."""
    pads = []
    for i, name in ((0, "height"), (1, "width")):
        eff = dil[i] * (k[i] - 1) + 1
        if padding == 0:
            out = (in_hw[i] + stride[i] - 1) // stride[i]
            total = max((out - 1) * stride[i] + eff - in_hw[i], 0)
            pad = total // 2
        elif padding == 1:
            out = (in_hw[i] + stride[i] - eff) // stride[i]
            pad = 0
        else:
            raise TFLiteError(f"{what}: unknown padding {padding}")
        if out != out_hw[i]:
            raise TFLiteError(f"{what}: output {name} {out_hw[i]} differs from the {out} its padding and stride give")
        pads.append(pad)
    return pads[0], pads[1]


def _act(code: int, what: str) -> str:
    if code not in _ACTS:
        raise TFLiteError(f"{what}: fused activation {_ACT_NAMES.get(code, code)} is not supported "
                          "(fedtiny's layers have NONE, RELU and RELU6)")
    return _ACTS[code]


def read_tflite(data: bytes | bytearray | str | Path, source: str | None = None) -> Imported:
    """Read an int8 ``.tflite`` (bytes or a path) into fedtiny's layers, all int8."""
    from fedtiny.models.export import activation_range

    if isinstance(data, (str, Path)):
        source = source or str(data)
        try:
            raw = Path(data).read_bytes()
        except OSError as err:
            raise TFLiteError(f"{data}: cannot read ({err.strerror or err})") from err
    else:
        raw = bytes(data)
    source = source or "model"
    m = _parse(raw, source)
    if len(m.subgraphs or []) != 1:
        raise TFLiteError(f"{source}: {len(m.subgraphs or [])} subgraphs; fedtiny imports models of one subgraph")
    sg = m.subgraphs[0]
    codes = m.operatorCodes or []
    names = _op_names()
    if len(sg.inputs if sg.inputs is not None else []) != 1 or len(sg.outputs if sg.outputs is not None else []) != 1:
        raise TFLiteError(f"{source}: the model must have one input and one output")
    ops = list(sg.operators or [])
    if not ops:
        raise TFLiteError(f"{source}: the model has no operators")

    def tensor(i: int, what: str) -> _Tensor:
        return _tensor(raw, m, sg, int(i), what)

    cur = int(sg.inputs[0])
    x = tensor(cur, f"{source}: input")
    start = 0
    opnames = []
    for i, op in enumerate(ops):
        if not 0 <= op.opcodeIndex < len(codes):
            raise TFLiteError(f"{source}: operator {i} names opcode {op.opcodeIndex}; the model has {len(codes)}")
        c = codes[op.opcodeIndex]
        code = max(int(c.builtinCode), int(c.deprecatedBuiltinCode))
        name = names.get(code, f"builtin {code}")
        if name == "CUSTOM":
            custom = c.customCode.decode(errors="replace") if isinstance(c.customCode, bytes) else c.customCode
            name = f"CUSTOM '{custom}'"
        opnames.append(name)
    fake = [i for i, n in enumerate(opnames) if n == "DEQUANTIZE" and i != len(opnames) - 1]
    if fake:
        raise TFLiteError(f"{source}: a float model with QUANTIZE/DEQUANTIZE pairs (DEQUANTIZE at operators "
                          f"{', '.join(map(str, fake[:5]))}{'...' if len(fake) > 5 else ''}: fake quantization, its "
                          "kernels run in float); fedtiny imports fully int8 models (TFLite converter: full-integer "
                          "quantization; litert-torch: convert with quant_config)")
    ops_out: list[ImportedLayer] = []
    if opnames[0] == "QUANTIZE":
        if int(ops[0].inputs[0]) != cur:
            raise TFLiteError(f"{source}: operator 0 QUANTIZE reads tensor {int(ops[0].inputs[0])}, not the model's "
                              f"input {cur}")  # a float input the model quantizes itself: its quantization is the input's
        if x.type != 0:
            raise TFLiteError(f"{source}: operator 0 QUANTIZE requantizes {x.describe()}; fedtiny takes a float32 "
                              "or int8 input")
        cur = int(ops[0].outputs[0])
        x = tensor(cur, f"{source}: operator 0 QUANTIZE")
        ops_out.append(ImportedLayer(0, "QUANTIZE", None, "float32 input quantized as the model's input"))
        start = 1
    in_scale, in_zp = _per_tensor(x, f"{source}: input")
    spec = ModelSpec(_hwc(x.shape, f"{source}: input"), in_scale, in_zp, 0)
    scales: list[np.ndarray | None] = []
    shape, scale, zp = spec.input_shape, in_scale, in_zp
    ended = False
    pending_pad: tuple[tuple[int, int, int], tuple[int, int]] | None = None  # (unpadded shape, (top, left))
    for i in range(start, len(ops)):
        op, name = ops[i], opnames[i]
        what = f"{source}: operator {i} {name}"
        if name not in SUPPORTED_OPS:
            raise TFLiteError(f"{what} is not supported (fedtiny imports {', '.join(SUPPORTED_OPS[:8])}; QUANTIZE "
                              "first and DEQUANTIZE last)")
        ins = [int(v) for v in (op.inputs if op.inputs is not None else [])]
        outs = [int(v) for v in (op.outputs if op.outputs is not None else [])]
        if not ins or len(outs) != 1:
            raise TFLiteError(f"{what}: has {len(ins)} inputs and {len(outs)} outputs")
        if ins[0] != cur:
            raise TFLiteError(f"{what} reads tensor {ins[0]}, not the previous operator's output {cur}: fedtiny "
                              "imports a chain of operators (no branches)")
        if ended and name != "DEQUANTIZE":
            raise TFLiteError(f"{what} follows SOFTMAX; fedtiny imports SOFTMAX only as the last operator")
        opts = op.builtinOptions
        y = tensor(outs[0], what)
        cur = outs[0]
        if name == "QUANTIZE":
            raise TFLiteError(f"{what}: requantizing inside the model is not supported (only a float input's QUANTIZE)")
        if name == "DEQUANTIZE":
            if i != len(ops) - 1:
                raise TFLiteError(f"{what} is not the last operator")
            ops_out.append(ImportedLayer(i, name, None, "dropped: fedtiny's outputs are its int8/float logits"))
            continue
        if name == "SOFTMAX":
            ended = True
            beta = float(getattr(opts, "beta", 1.0) or 1.0)
            ops_out.append(ImportedLayer(i, name, None, f"dropped (beta {beta:g}): the head outputs logits"))
            continue
        out_scale, out_zp = _per_tensor(y, what)
        in_scale_here, in_zp_here = _per_tensor(tensor(ins[0], what), what)
        if (in_scale_here, in_zp_here) != (float(np.float32(scale)), zp):
            raise TFLiteError(f"{what}: its input's quantization differs from the previous output's")
        out_hwc = _hwc(y.shape, what)
        if pending_pad is not None and name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            raise TFLiteError(f"{what} follows a PAD; fedtiny imports PAD only before CONV_2D or DEPTHWISE_CONV_2D")
        if name == "PAD":
            p = tensor(ins[1], what) if len(ins) > 1 else None
            if p is None or p.data is None or p.data.shape != (4, 2):
                raise TFLiteError(f"{what}: its paddings must be a constant [4, 2] tensor")
            pads = p.data.astype(np.int64)
            if pads[0].any() or pads[3].any() or (pads < 0).any():
                raise TFLiteError(f"{what}: pads the batch or channel axis, or pads negatively ({pads.tolist()})")
            if (out_scale, out_zp) != (float(np.float32(scale)), zp):
                raise TFLiteError(f"{what}: input and output are quantized differently")
            pending_pad = (shape, (int(pads[1, 0]), int(pads[2, 0])))
            ops_out.append(ImportedLayer(i, name, None, f"merged into operator {i + 1}'s padding {pads[1:3].tolist()}"))
            shape = out_hwc
            continue
        if name == "RESHAPE":
            n = int(np.prod(shape))
            if int(np.prod(out_hwc)) != n or (out_scale, out_zp) != (float(np.float32(scale)), zp):
                raise TFLiteError(f"{what}: a reshape must keep the element count and the quantization")
            if out_hwc == shape:
                ops_out.append(ImportedLayer(i, name, None, "dropped: the shape does not change"))
                continue
            if out_hwc != (1, 1, n):
                raise TFLiteError(f"{what} to {list(y.shape)}: fedtiny imports reshapes that flatten to [1, {n}]")
            spec.layers.append(LayerSpec("flatten", shape, out_hwc, out_scale=out_scale, output_offset=out_zp))
            scales.append(None)
            ops_out.append(ImportedLayer(i, name, len(spec.layers) - 1))
            shape = out_hwc
            continue
        if name == "MEAN":
            axes_t = tensor(ins[1], what) if len(ins) > 1 else None
            axes = sorted(int(a) % 4 for a in axes_t.data.ravel()) if axes_t is not None and axes_t.data is not None \
                else None
            if axes != [1, 2] or len(tensor(ins[0], what).shape) != 4 or int(np.prod(out_hwc)) != shape[2]:
                raise TFLiteError(f"{what}: fedtiny imports MEAN over height and width of a [1, H, W, C] tensor "
                                  f"(axes {axes})")
            h, w_, c = shape
            m2, s2 = mean_multiplier(scale, out_scale, h * w_)
            spec.layers.append(LayerSpec("dwconv2d", shape, (1, 1, c), kernel=(h, w_), weights=np.ones((h, w_, c), np.int8),
                                         bias=np.zeros(c, np.int32), multiplier=np.full(c, m2, np.int32),
                                         shift=np.full(c, s2, np.int32), input_offset=-zp, output_offset=out_zp,
                                         out_scale=out_scale))
            scales.append(np.full(c, 1.0 / (h * w_), np.float32))
            ops_out.append(ImportedLayer(i, name, len(spec.layers) - 1, "a depthwise layer of ones (mean)"))
            shape, scale, zp = (1, 1, c), out_scale, out_zp
            continue
        act = _act(int(getattr(opts, "fusedActivationFunction", 0) or 0), what)
        lo, hi = activation_range(act, out_scale, out_zp)
        if name == "AVERAGE_POOL_2D":
            if (out_scale, out_zp) != (float(np.float32(scale)), zp):
                raise TFLiteError(f"{what}: input and output are quantized differently; int8 average pooling keeps "
                                  "its input's quantization")
            k, st = (int(opts.filterHeight), int(opts.filterWidth)), (int(opts.strideH), int(opts.strideW))
            pad = _window(shape[:2], out_hwc[:2], k, st, (1, 1), int(opts.padding), what)
            if out_hwc[2] != shape[2]:
                raise TFLiteError(f"{what}: output channels {out_hwc[2]} differ from the input's {shape[2]}")
            spec.layers.append(LayerSpec("avgpool", shape, out_hwc, act=act, kernel=k, stride=st, padding=pad,
                                         act_min=lo, act_max=hi, out_scale=out_scale, output_offset=out_zp))
            scales.append(None)
        else:
            if len(ins) < 2:
                raise TFLiteError(f"{what}: has no weights")
            w = tensor(ins[1], what)
            b = tensor(ins[2], what) if len(ins) > 2 and ins[2] >= 0 else None
            if w.data is None:
                raise TFLiteError(f"{what}: weights {w.describe()} are not constant")
            if name == "FULLY_CONNECTED":
                if int(getattr(opts, "weightsFormat", 0) or 0) != 0:
                    raise TFLiteError(f"{what}: shuffled weights are not supported (default weight format only)")
                if w.data.ndim != 2 or w.data.shape[1] != int(np.prod(shape)) or int(np.prod(out_hwc)) != w.data.shape[0]:
                    raise TFLiteError(f"{what}: weights {list(w.shape)} do not map {int(np.prod(shape))} inputs to "
                                      f"{int(np.prod(out_hwc))} outputs")
                n_out = int(w.data.shape[0])
                ws = _weights(w, what, n_out, 0)
                layer = LayerSpec("fc", shape, (1, 1, n_out), act=act)
                weights = w.data
            elif name == "CONV_2D":
                if w.data.ndim != 4 or w.data.shape[3] != shape[2]:
                    raise TFLiteError(f"{what}: weights {list(w.shape)} do not fit {shape[2]} input channels "
                                      "(grouped convolutions are not supported)")
                n_out = int(w.data.shape[0])
                ws = _weights(w, what, n_out, 0)
                k = (int(w.data.shape[1]), int(w.data.shape[2]))
                st, dil = (int(opts.strideH), int(opts.strideW)), (int(opts.dilationHFactor), int(opts.dilationWFactor))
                pad = _window(shape[:2], out_hwc[:2], k, st, dil, int(opts.padding), what)
                layer = LayerSpec("conv2d", shape, out_hwc, act=act, kernel=k, stride=st, padding=pad, dilation=dil)
                _merge_pad(layer, pending_pad, int(opts.padding), what)
                weights = w.data
            else:  # DEPTHWISE_CONV_2D
                if w.data.ndim != 4 or w.data.shape[0] != 1 or w.data.shape[3] % shape[2] != 0:
                    raise TFLiteError(f"{what}: weights {list(w.shape)} are not [1, KH, KW, {shape[2]} x multiplier]")
                n_out = int(w.data.shape[3])
                ws = _weights(w, what, n_out, 3)
                k = (int(w.data.shape[1]), int(w.data.shape[2]))
                st, dil = (int(opts.strideH), int(opts.strideW)), (int(opts.dilationHFactor), int(opts.dilationWFactor))
                pad = _window(shape[:2], out_hwc[:2], k, st, dil, int(opts.padding), what)
                layer = LayerSpec("dwconv2d", shape, out_hwc, act=act, kernel=k, stride=st, padding=pad, dilation=dil,
                                  ch_mult=n_out // shape[2])
                _merge_pad(layer, pending_pad, int(opts.padding), what)
                weights = w.data[0]
            if out_hwc[2] != n_out and layer.type != "fc":
                raise TFLiteError(f"{what}: output channels {out_hwc[2]} differ from the weights' {n_out}")
            layer.weights = weights.astype(np.int8)
            layer.bias = _bias(b, what, n_out)
            try:
                layer.multiplier, layer.shift = tflite_multipliers(scale, ws, out_scale)
            except ValueError as err:
                raise TFLiteError(f"{what}: requantization out of range ({err})") from err
            layer.input_offset, layer.output_offset, layer.out_scale = -zp, out_zp, out_scale
            layer.act_min, layer.act_max = lo, hi
            pending_pad = None
            spec.layers.append(layer)
            scales.append(ws)
        ops_out.append(ImportedLayer(i, name, len(spec.layers) - 1))
        shape, scale, zp = spec.layers[-1].out_shape, out_scale, out_zp
    if cur != int(sg.outputs[0]):
        raise TFLiteError(f"{source}: the last operator's output is not the model's output")
    if not spec.layers:
        raise TFLiteError(f"{source}: no layer fedtiny can train")
    spec.num_classes = int(np.prod(spec.layers[-1].out_shape))
    try:
        model_format.validate(model_format.to_bytes(spec))
    except ModelFormatError as err:
        raise TFLiteError(f"{source}: fedtiny's trainer cannot hold the imported model ({err}); its output is "
                          f"{spec.layers[-1].out_shape} (a classifier's logits are expected)") from err
    return Imported(spec, scales, ops_out, hashlib.sha256(raw).hexdigest(), source)


def mean_multiplier(in_scale: float, out_scale: float, count: int) -> tuple[int, int]:
    """TFLite Micro's requantization of an int8 MEAN over `count` elements: the multiplier of
    ``in_scale / out_scale``, divided by `count` with up to 32 extra bits of precision."""
    m, sh = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    extra = min(count.bit_length() - 1, 32, 31 + sh)
    return int((m << extra) // count), sh - extra


def _is_mean(lay: LayerSpec, in_scale: float) -> bool:
    """A depthwise layer that is exactly a MEAN over height and width (as :func:`read_tflite` makes one)."""
    h, w, c = lay.in_shape
    if lay.type != "dwconv2d" or lay.kernel != (h, w) or lay.out_shape != (1, 1, c) or lay.ch_mult != 1:
        return False
    if lay.padding != (0, 0) or lay.stride != (1, 1) or lay.act_min != -128 or lay.act_max != 127:
        return False
    if np.any(lay.weights != 1) or np.any(lay.bias != 0):
        return False
    m2, s2 = mean_multiplier(in_scale, lay.out_scale, h * w)
    return bool(np.all(lay.multiplier == m2) and np.all(lay.shift == s2))


def _merge_pad(layer: LayerSpec, pending, padding: int, what: str) -> None:
    """A PAD before this VALID window layer becomes its padding (input: the unpadded shape)."""
    if pending is None:
        return
    if padding != 1:
        raise TFLiteError(f"{what}: SAME padding after a PAD is not supported")
    layer.in_shape, layer.padding = pending


def make_head(imported: Imported, trainable_layers: int) -> ModelSpec:
    """The imported model with its last `trainable_layers` layers as the float32 trainable head:
    weights and biases dequantized with their scales; the layers before stay int8."""
    spec = imported.spec
    n = len(spec.layers)
    if not 0 <= trainable_layers <= n:
        raise TFLiteError(f"model.trainable_layers must be in [1, {n}] for {imported.source or 'this model'} "
                          f"({n} layers), got {trainable_layers}")
    layers = []
    in_scale = spec.input_scale
    for i, lay in enumerate(spec.layers):
        if i < n - trainable_layers:
            layers.append(lay)
        elif lay.has_params:
            ws = imported.weight_scales[i].astype(np.float64)
            shaped = ws if lay.type == "dwconv2d" else ws.reshape((-1,) + (1,) * (lay.weights.ndim - 1))
            layers.append(replace(lay, trainable=True, weights=(lay.weights.astype(np.float64) * shaped).astype(np.float32),
                                  bias=(lay.bias.astype(np.float64) * float(in_scale) * ws).astype(np.float32),
                                  multiplier=None, shift=None))
        else:
            layers.append(replace(lay, trainable=True))
        in_scale = lay.out_scale
    return replace(spec, layers=layers)


def import_tflite(data: bytes | bytearray | str | Path, trainable_layers: int, source: str | None = None) -> tuple[ModelSpec, Imported]:
    """:func:`read_tflite` then :func:`make_head`: fedtiny's model of an int8 ``.tflite``."""
    imported = read_tflite(data, source)
    if trainable_layers < 1:
        raise TFLiteError(f"model.trainable_layers must be at least 1, got {trainable_layers}")
    return make_head(imported, trainable_layers), imported


# -- out ----------------------------------------------------------------------------------------

def recover_weight_scales(layer: LayerSpec, in_scale: float) -> np.ndarray:
    """The float32 weight scale of each output channel that gives exactly the layer's
    (multiplier, shift) when TFLite computes it from ``in_scale`` and the layer's output scale."""
    out = []
    for c, (m, s) in enumerate(zip(layer.multiplier.tolist(), layer.shift.tolist())):
        if m == 0:  # a channel whose requantization flushes to zero (a dead channel: all its weights 0)
            guess = np.float32(2.0 ** -40 * float(np.float32(layer.out_scale)) / float(np.float32(in_scale)))
        else:
            guess = np.float32(m * 2.0 ** (s - 31) * float(np.float32(layer.out_scale)) / float(np.float32(in_scale)))
        found = None
        for step in range(64):  # the estimate is within a few float32 steps of the scale that made it
            for cand in {_nudge(guess, step), _nudge(guess, -step)}:
                mm, ss = tflite_multipliers(in_scale, np.array([cand], np.float32), layer.out_scale)
                if (int(mm[0]), int(ss[0])) == (m, s):
                    found = cand
                    break
            if found is not None:
                break
        if found is None:
            raise TFLiteError(f"{layer.type} layer: channel {c}'s multiplier {m}, shift {s} has no float32 weight "
                              "scale (the model was not quantized with TFLite's conventions)")
        out.append(found)
    return np.array(out, dtype=np.float32)


def _nudge(x: np.float32, steps: int) -> np.float32:
    v = np.float32(x)
    toward = np.float32(np.inf) if steps > 0 else np.float32(0)
    for _ in range(abs(steps)):
        v = np.nextafter(v, toward, dtype=np.float32)
    return np.float32(v)


def to_tflite(spec: ModelSpec, description: str = "fedtiny") -> bytes:
    """A ``.tflite`` of `spec` (every layer int8): int8 input, one operator per layer, the int8
    logits as output. TFLite Micro runs it bit-exact with fedtiny's int8 forward."""
    import flatbuffers

    S = schema()
    if spec.first_trainable != len(spec.layers):
        raise TFLiteError("only a model whose layers are all int8 can be written as .tflite "
                          "(quantize the trainable head first: fedtiny export does)")
    buffers = [S.BufferT()]  # buffer 0 is empty by convention
    tensors: list = []
    codes: dict[int, int] = {}
    operators = []

    def buffer(arr: np.ndarray | None) -> int:
        b = S.BufferT()
        if arr is not None:
            b.data = np.frombuffer(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes(), np.uint8)
        buffers.append(b)
        return len(buffers) - 1

    def tensor(name: str, shape, ttype: int, scale, zp, data: np.ndarray | None = None, axis: int = 0) -> int:
        t = S.TensorT()
        t.name, t.shape, t.type = name, np.array(shape, np.int32), ttype
        t.buffer = buffer(data)
        q = S.QuantizationParametersT()
        q.scale = np.asarray(scale, np.float32).ravel()
        q.zeroPoint = np.asarray(zp, np.int64).ravel()
        q.quantizedDimension = axis
        t.quantization = q
        tensors.append(t)
        return len(tensors) - 1

    def opcode(builtin: int, version: int) -> int:
        if builtin not in codes:
            codes[builtin] = len(codes)
            oc = S.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = builtin, min(builtin, 127), version
            _opcodes.append(oc)
        return codes[builtin]

    _opcodes: list = []
    h, w, c = spec.input_shape
    cur = tensor("input", [1, h, w, c], S.TensorType.INT8, [spec.input_scale], [spec.input_zero_point])
    first = cur
    in_scale = spec.input_scale
    B, A = S.BuiltinOperator, S.ActivationFunctionType
    acts = {"none": A.NONE, "relu": A.RELU, "relu6": A.RELU6}
    for i, lay in enumerate(spec.layers):
        oh, ow, oc_ = lay.out_shape
        out_shape = [1, oc_] if lay.type in ("fc", "flatten") else [1, oh, ow, oc_]
        out = tensor(f"layer{i}_{lay.type}", out_shape, S.TensorType.INT8, [lay.out_scale], [lay.output_offset])
        op = S.OperatorT()
        ins = [cur]
        if _is_mean(lay, in_scale):
            op.opcodeIndex = opcode(B.MEAN, 2)
            o = S.ReducerOptionsT()
            o.keepDims = False
            axes_t = tensor(f"layer{i}_axes", [2], S.TensorType.INT32, [], [], np.array([1, 2], np.int32))
            tensors[axes_t].quantization = None
            tensors[out].shape = np.array([1, oc_], np.int32)
            op.builtinOptionsType, op.builtinOptions = S.BuiltinOptions.ReducerOptions, o
            op.inputs, op.outputs = np.array([cur, axes_t], np.int32), np.array([out], np.int32)
            operators.append(op)
            cur, in_scale = out, lay.out_scale
            continue
        if lay.has_params:
            ws = recover_weight_scales(lay, in_scale)
            if lay.type == "dwconv2d":
                wdata, axis = lay.weights.reshape((1,) + lay.weights.shape), 3
            else:
                wdata, axis = lay.weights, 0
            wt = tensor(f"layer{i}_weights", list(wdata.shape), S.TensorType.INT8, ws, np.zeros(ws.size, np.int64),
                        wdata.astype(np.int8), axis)
            bt = tensor(f"layer{i}_bias", [ws.size], S.TensorType.INT32,
                        (np.float64(np.float32(in_scale)) * ws.astype(np.float64)).astype(np.float32),
                        np.zeros(ws.size, np.int64), lay.bias.astype(np.int32), 0)
            ins += [wt, bt]
        pad = S.Padding.VALID
        if lay.type in ("conv2d", "dwconv2d", "avgpool"):
            mode, pads = _padding_mode(lay)
            if mode == "SAME":
                pad = S.Padding.SAME
            elif mode == "PAD":  # explicit zero-point padding, then a VALID window (as converters emit it)
                if lay.type == "avgpool":
                    raise TFLiteError(f"layer {i} (avgpool): padding {lay.padding} is not TFLite's SAME or VALID "
                                      "(a PAD operator would change the pooling's divisor)")
                pt, pb, pl, pr = pads
                padded = tensor(f"layer{i}_padded", [1, lay.in_shape[0] + pt + pb, lay.in_shape[1] + pl + pr,
                                                     lay.in_shape[2]], S.TensorType.INT8, [in_scale], [-lay.input_offset])
                pads_t = tensor(f"layer{i}_paddings", [4, 2], S.TensorType.INT32, [], [],
                                np.array([[0, 0], [pt, pb], [pl, pr], [0, 0]], np.int32))
                tensors[pads_t].quantization = None
                pad_op = S.OperatorT()
                pad_op.opcodeIndex = opcode(B.PAD, 2)
                pad_op.builtinOptionsType, pad_op.builtinOptions = S.BuiltinOptions.PadOptions, S.PadOptionsT()
                pad_op.inputs, pad_op.outputs = np.array([cur, pads_t], np.int32), np.array([padded], np.int32)
                operators.append(pad_op)
                ins[0] = padded
        if lay.type == "conv2d":
            op.opcodeIndex = opcode(B.CONV_2D, 3)
            o = S.Conv2DOptionsT()
            o.padding, o.strideH, o.strideW = pad, *lay.stride
            o.dilationHFactor, o.dilationWFactor = lay.dilation
            o.fusedActivationFunction = acts[lay.act]
            op.builtinOptionsType = S.BuiltinOptions.Conv2DOptions
        elif lay.type == "dwconv2d":
            op.opcodeIndex = opcode(B.DEPTHWISE_CONV_2D, 3)
            o = S.DepthwiseConv2DOptionsT()
            o.padding, o.strideH, o.strideW = pad, *lay.stride
            o.dilationHFactor, o.dilationWFactor = lay.dilation
            o.depthMultiplier = lay.ch_mult
            o.fusedActivationFunction = acts[lay.act]
            op.builtinOptionsType = S.BuiltinOptions.DepthwiseConv2DOptions
        elif lay.type == "fc":
            op.opcodeIndex = opcode(B.FULLY_CONNECTED, 4 if len(set(ws.tolist())) == 1 else 13)
            o = S.FullyConnectedOptionsT()
            o.fusedActivationFunction = acts[lay.act]
            op.builtinOptionsType = S.BuiltinOptions.FullyConnectedOptions
        elif lay.type == "avgpool":
            op.opcodeIndex = opcode(B.AVERAGE_POOL_2D, 2)
            o = S.Pool2DOptionsT()
            o.padding, o.strideH, o.strideW = pad, *lay.stride
            o.filterHeight, o.filterWidth = lay.kernel
            o.fusedActivationFunction = acts[lay.act]
            op.builtinOptionsType = S.BuiltinOptions.Pool2DOptions
        else:  # flatten
            op.opcodeIndex = opcode(B.RESHAPE, 1)
            o = S.ReshapeOptionsT()
            o.newShape = np.array(out_shape, np.int32)
            shape_t = tensor(f"layer{i}_shape", [2], S.TensorType.INT32, [], [], np.array(out_shape, np.int32))
            tensors[shape_t].quantization = None
            ins.append(shape_t)
            op.builtinOptionsType = S.BuiltinOptions.ReshapeOptions
        op.builtinOptions = o
        op.inputs, op.outputs = np.array(ins, np.int32), np.array([out], np.int32)
        operators.append(op)
        cur, in_scale = out, lay.out_scale
    sg = S.SubGraphT()
    sg.tensors, sg.operators, sg.name = tensors, operators, "main"
    sg.inputs, sg.outputs = np.array([first], np.int32), np.array([cur], np.int32)
    model = S.ModelT()
    model.version, model.description = 3, description
    model.subgraphs, model.buffers, model.operatorCodes = [sg], buffers, _opcodes
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _padding_mode(lay: LayerSpec) -> tuple[str, tuple[int, int, int, int] | None]:
    """How a .tflite computes this window layer: ``VALID`` or ``SAME`` padding when one gives
    its output size and top/left padding, else ``PAD`` with (top, bottom, left, right)."""
    for mode, code in (("VALID", 1), ("SAME", 0)):
        try:
            pads = _window(lay.in_shape[:2], lay.out_shape[:2], lay.kernel, lay.stride, lay.dilation, code, "")
        except TFLiteError:
            continue
        if pads == tuple(lay.padding):
            return mode, None
    extra = []
    for i in range(2):
        eff = lay.dilation[i] * (lay.kernel[i] - 1) + 1
        extra.append(max((lay.out_shape[i] - 1) * lay.stride[i] + eff - lay.in_shape[i] - lay.padding[i], 0))
    return "PAD", (lay.padding[0], extra[0], lay.padding[1], extra[1])


def c_array(data: bytes, name: str = "fedtiny_model") -> str:
    """A C header holding `data` as an aligned byte array ``name`` and its length ``name_len``."""
    guard = name.upper() + "_H"
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    body = ",\n    ".join(rows)
    return (f"/* Generated by fedtiny export: {len(data)} bytes. */\n#ifndef {guard}\n#define {guard}\n\n"
            f"#include <stdint.h>\n\n/* TFLite Micro wants the model 16-byte aligned. */\n"
            f"static const uint8_t {name}[{len(data)}] __attribute__((aligned(16))) = {{\n    {body}\n}};\n"
            f"static const uint32_t {name}_len = {len(data)}u;\n\n#endif /* {guard} */\n")


def int8_view(raw: bytes, last_op: int | None = None) -> bytes:
    """The same ``.tflite`` cut to the operators fedtiny imports: without a leading float-input
    QUANTIZE and a trailing SOFTMAX/DEQUANTIZE, ending after operator `last_op` when given, so
    its input and output are the int8 tensors fedtiny's layers read and write."""
    import flatbuffers

    m = _parse(bytes(raw), "model")
    names = _op_names()
    sg = m.subgraphs[0]

    def name(op) -> str:
        c = m.operatorCodes[op.opcodeIndex]
        return names.get(max(int(c.builtinCode), int(c.deprecatedBuiltinCode)), "")

    ops = list(sg.operators)
    if ops and name(ops[0]) == "QUANTIZE":
        sg.inputs = np.array([int(ops[0].outputs[0])], np.int32)
        ops = ops[1:]
        last_op = None if last_op is None else last_op - 1
    if last_op is not None:
        ops = ops[: last_op + 1]
    while ops and name(ops[-1]) in ("SOFTMAX", "DEQUANTIZE"):
        ops = ops[:-1]
    sg.operators = ops
    sg.outputs = np.array([int(ops[-1].outputs[0])], np.int32)
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_micro_outputs(blob: bytes, xq: np.ndarray) -> np.ndarray | None:
    """TFLite Micro's interpreter's int8 output for each int8 sample of `xq` (None when the
    ``tflite-micro`` package is missing)."""
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        return None
    it = runtime.Interpreter.from_bytes(bytes(blob))
    shape = [1] + [int(d) for d in it.get_input_details(0)["shape"][1:]]
    out = []
    for n in range(len(xq)):
        it.set_input(np.ascontiguousarray(xq[n]).reshape(shape), 0)
        it.invoke()
        out.append(np.array(it.get_output(0)).reshape(-1))
    return np.stack(out)
