"""Builds int8 .tflite test fixtures through TFLite's flatbuffer schema (no TensorFlow), with
random weights and quantization, as a converter lays them out. Written apart from fedtiny's own
writer (fedtiny.models.tflite.to_tflite) so the import tests do not read what fedtiny wrote.

    g = Graph((8, 8, 3), rng)
    g.conv(8, 3, stride=2, padding="SAME", act="RELU")
    g.mean()
    g.fc(10)
    blob = g.bytes()
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as S

ACT = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3, "TANH": 4}
PAD = {"SAME": 0, "VALID": 1}


class Graph:
    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator, float_input: bool = False,
                 scale: float = 0.02, zp: int = -5):
        self.rng = rng
        self.buffers = [S.BufferT()]
        self.tensors: list = []
        self.ops: list = []
        self.codes: list = []
        self.shape = [1, *shape]
        self.scale, self.zp = np.float32(scale), zp
        if float_input:
            self.input = self._tensor("input_f32", self.shape, S.TensorType.FLOAT32, None, None)
            self.cur = self._tensor("input_q", self.shape, S.TensorType.INT8, [scale], [zp])
            self._op(S.BuiltinOperator.QUANTIZE, [self.input], [self.cur], None, None)
        else:
            self.input = self.cur = self._tensor("input", self.shape, S.TensorType.INT8, [scale], [zp])
        self.extra_subgraphs: list = []

    # -- plumbing -----------------------------------------------------------------------------------
    def _buffer(self, data: np.ndarray | None) -> int:
        b = S.BufferT()
        if data is not None:
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        self.buffers.append(b)
        return len(self.buffers) - 1

    def _tensor(self, name, shape, ttype, scale, zp, data=None, axis=0) -> int:
        t = S.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.array(shape, np.int32), ttype, self._buffer(data)
        if scale is not None:
            q = S.QuantizationParametersT()
            q.scale, q.zeroPoint = np.array(scale, np.float32), np.array(zp, np.int64)
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def _op(self, builtin: int, ins, outs, opt_type, opts) -> S.OperatorT:
        if builtin not in self.codes:
            self.codes.append(builtin)
        op = S.OperatorT()
        op.opcodeIndex = self.codes.index(builtin)
        op.inputs, op.outputs = np.array(ins, np.int32), np.array(outs, np.int32)
        if opt_type is not None:
            op.builtinOptionsType, op.builtinOptions = opt_type, opts
        self.ops.append(op)
        return op

    def _out(self, shape, scale=None, zp=None, name="act") -> int:
        scale = np.float32(scale if scale is not None else self.rng.uniform(0.01, 0.08))
        zp = int(zp if zp is not None else self.rng.integers(-20, 20))
        return self._tensor(f"{name}{len(self.tensors)}", shape, S.TensorType.INT8, [scale], [zp])

    def _weights(self, shape, per_channel: bool, axis: int, fan_in: int):
        w = self.rng.integers(-127, 128, shape).astype(np.int8)
        n = shape[axis]
        ws = self.rng.uniform(0.5, 1.5, n if per_channel else 1).astype(np.float32) * np.float32(0.02)
        return w, ws

    def _advance(self, out: int, shape) -> None:
        self.cur, self.shape = out, list(shape)
        q = self.tensors[out].quantization
        self.scale, self.zp = q.scale[0], int(q.zeroPoint[0])

    def _out_scale(self, ws: np.ndarray, fan_in: int) -> float:
        # spread the accumulator over the int8 range: |acc| ~ 64 * 64 * sqrt(fan_in) units
        return float(self.scale) * float(ws.mean()) * 64 * 64 * np.sqrt(fan_in) / 100.0

    @staticmethod
    def _size(n: int, k: int, s: int, d: int, padding: str) -> int:
        eff = d * (k - 1) + 1
        return (n + s - 1) // s if padding == "SAME" else (n + s - eff) // s

    # -- operators ----------------------------------------------------------------------------------
    def conv(self, out_c: int, k: int, stride: int = 1, padding: str = "SAME", dilation: int = 1, act: str = "RELU",
             per_channel: bool = True, bias: bool = True) -> None:
        _, h, w, c = self.shape
        wq, ws = self._weights((out_c, k, k, c), per_channel, 0, k * k * c)
        oh, ow = self._size(h, k, stride, dilation, padding), self._size(w, k, stride, dilation, padding)
        out = self._out([1, oh, ow, out_c], self._out_scale(ws, k * k * c))
        wt = self._tensor("w", [out_c, k, k, c], S.TensorType.INT8, ws, np.zeros(ws.size, np.int64), wq)
        ins = [self.cur, wt]
        if bias:
            ins.append(self._tensor("b", [out_c], S.TensorType.INT32, self.scale * ws, np.zeros(ws.size, np.int64),
                                    self.rng.integers(-2000, 2000, out_c).astype(np.int32)))
        o = S.Conv2DOptionsT()
        o.padding, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor = PAD[padding], stride, stride, \
            dilation, dilation
        o.fusedActivationFunction = ACT[act]
        self._op(S.BuiltinOperator.CONV_2D, ins, [out], S.BuiltinOptions.Conv2DOptions, o)
        self._advance(out, [1, oh, ow, out_c])

    def dw(self, mult: int, k: int, stride: int = 1, padding: str = "SAME", dilation: int = 1, act: str = "RELU6",
           per_channel: bool = True) -> None:
        _, h, w, c = self.shape
        oc = c * mult
        wq, ws = self._weights((1, k, k, oc), per_channel, 3, k * k)
        oh, ow = self._size(h, k, stride, dilation, padding), self._size(w, k, stride, dilation, padding)
        out = self._out([1, oh, ow, oc], self._out_scale(ws, k * k))
        wt = self._tensor("w", [1, k, k, oc], S.TensorType.INT8, ws, np.zeros(ws.size, np.int64), wq, axis=3)
        bt = self._tensor("b", [oc], S.TensorType.INT32, self.scale * ws, np.zeros(ws.size, np.int64),
                          self.rng.integers(-2000, 2000, oc).astype(np.int32))
        o = S.DepthwiseConv2DOptionsT()
        o.padding, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor = PAD[padding], stride, stride, \
            dilation, dilation
        o.depthMultiplier, o.fusedActivationFunction = mult, ACT[act]
        self._op(S.BuiltinOperator.DEPTHWISE_CONV_2D, [self.cur, wt, bt], [out], S.BuiltinOptions.DepthwiseConv2DOptions, o)
        self._advance(out, [1, oh, ow, oc])

    def fc(self, out_n: int, act: str = "NONE", per_channel: bool = False) -> None:
        n = int(np.prod(self.shape[1:]))
        wq, ws = self._weights((out_n, n), per_channel, 0, n)
        out = self._out([1, out_n], self._out_scale(ws, n))
        wt = self._tensor("w", [out_n, n], S.TensorType.INT8, ws, np.zeros(ws.size, np.int64), wq)
        bt = self._tensor("b", [out_n], S.TensorType.INT32, self.scale * ws, np.zeros(ws.size, np.int64),
                          self.rng.integers(-2000, 2000, out_n).astype(np.int32))
        o = S.FullyConnectedOptionsT()
        o.fusedActivationFunction = ACT[act]
        self._op(S.BuiltinOperator.FULLY_CONNECTED, [self.cur, wt, bt], [out], S.BuiltinOptions.FullyConnectedOptions, o)
        self._advance(out, [1, out_n])

    def avgpool(self, k: int, stride: int, padding: str = "VALID", act: str = "NONE") -> None:
        _, h, w, c = self.shape
        oh, ow = self._size(h, k, stride, 1, padding), self._size(w, k, stride, 1, padding)
        out = self._out([1, oh, ow, c], float(self.scale), self.zp)
        o = S.Pool2DOptionsT()
        o.padding, o.strideH, o.strideW, o.filterHeight, o.filterWidth = PAD[padding], stride, stride, k, k
        o.fusedActivationFunction = ACT[act]
        self._op(S.BuiltinOperator.AVERAGE_POOL_2D, [self.cur], [out], S.BuiltinOptions.Pool2DOptions, o)
        self._advance(out, [1, oh, ow, c])

    def mean(self, keep_dims: bool = False, same_quant: bool = True) -> None:
        c = self.shape[3]
        shape = [1, 1, 1, c] if keep_dims else [1, c]
        out = self._out(shape, float(self.scale) if same_quant else None, self.zp if same_quant else None)
        axes = self._tensor("axes", [2], S.TensorType.INT32, None, None, np.array([1, 2], np.int32))
        o = S.ReducerOptionsT()
        o.keepDims = keep_dims
        self._op(S.BuiltinOperator.MEAN, [self.cur, axes], [out], S.BuiltinOptions.ReducerOptions, o)
        self._advance(out, shape)

    def pad(self, top: int, bottom: int, left: int, right: int) -> None:
        _, h, w, c = self.shape
        shape = [1, h + top + bottom, w + left + right, c]
        out = self._out(shape, float(self.scale), self.zp)
        p = self._tensor("paddings", [4, 2], S.TensorType.INT32, None, None,
                         np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))
        self._op(S.BuiltinOperator.PAD, [self.cur, p], [out], S.BuiltinOptions.PadOptions, S.PadOptionsT())
        self._advance(out, shape)

    def flatten(self) -> None:
        n = int(np.prod(self.shape[1:]))
        out = self._out([1, n], float(self.scale), self.zp)
        s = self._tensor("shape", [2], S.TensorType.INT32, None, None, np.array([1, n], np.int32))
        o = S.ReshapeOptionsT()
        o.newShape = np.array([1, n], np.int32)
        self._op(S.BuiltinOperator.RESHAPE, [self.cur, s], [out], S.BuiltinOptions.ReshapeOptions, o)
        self._advance(out, [1, n])

    def softmax(self) -> None:
        out = self._out(list(self.shape), 1.0 / 256, -128)
        o = S.SoftmaxOptionsT()
        o.beta = 1.0
        self._op(S.BuiltinOperator.SOFTMAX, [self.cur], [out], S.BuiltinOptions.SoftmaxOptions, o)
        self._advance(out, self.shape)

    def dequantize(self) -> None:
        out = self._tensor("output_f32", list(self.shape), S.TensorType.FLOAT32, None, None)
        self._op(S.BuiltinOperator.DEQUANTIZE, [self.cur], [out], None, None)
        self.cur = out

    def unary(self, builtin: int) -> None:
        """An elementwise operator fedtiny does not import (TANH, LOGISTIC, ...)."""
        out = self._out(list(self.shape))
        self._op(builtin, [self.cur], [out], None, None)
        self._advance(out, self.shape)

    # -- the file -----------------------------------------------------------------------------------
    def model(self) -> S.ModelT:
        sg = S.SubGraphT()
        sg.tensors, sg.operators, sg.name = self.tensors, self.ops, "main"
        sg.inputs, sg.outputs = np.array([self.input], np.int32), np.array([self.cur], np.int32)
        m = S.ModelT()
        m.version, m.description = 3, "fedtiny test fixture"
        m.subgraphs, m.buffers = [sg, *self.extra_subgraphs], self.buffers
        m.operatorCodes = []
        for builtin in self.codes:
            oc = S.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = builtin, min(builtin, 127), 1
            m.operatorCodes.append(oc)
        return m

    def bytes(self, model: S.ModelT | None = None) -> bytes:
        b = flatbuffers.Builder(1024)
        b.Finish((model or self.model()).Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())
