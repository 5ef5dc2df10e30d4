"""TFLite in and out (issue 21): fedtiny's int8 forward of an imported model equals TFLite Micro's
interpreter byte for byte, layer by layer; unsupported files are refused by name; a run's model
exported as .tflite runs in TFLite Micro bit-exact with fedtiny's int8 forward.

Oracles: TFLite Micro's own interpreter (``tflite_micro.runtime``) on the same file; files built
through the flatbuffer schema by ``tests/tflite_builder.py`` (not fedtiny's writer) and one made
by a real converter (``tests/data/digits_litert_int8.tflite``, litert-torch 0.10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tflite_micro")

from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as S  # noqa: E402

from fedtiny.errors import TFLiteError  # noqa: E402
from fedtiny.models.tflite import (  # noqa: E402
    import_tflite,
    int8_view,
    read_tflite,
    tflite_micro_outputs,
    to_tflite,
)
from fedtiny.trainer import Model  # noqa: E402
from fedtiny.trainer.quant import quantize_multiplier  # noqa: E402
from tests.tflite_builder import Graph  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "digits_litert_int8.tflite"
FEDTINY = [sys.executable, "-m", "fedtiny"]


def layer_by_layer(raw: bytes, xq: np.ndarray) -> dict[str, int]:
    """Mismatching int8 values per imported layer: fedtiny's forward of the import against
    TFLite Micro running the same file cut after that layer's operator."""
    imported = read_tflite(raw)
    outs = Model(imported.spec).forward(xq)
    bad = {}
    for o in imported.ops:
        if o.layer is None:
            continue
        ref = tflite_micro_outputs(int8_view(raw, last_op=o.op_index), xq)
        got = outs[o.layer].int8.reshape(len(xq), -1)
        assert ref.shape == got.shape, (o, ref.shape, got.shape)
        bad[f"{o.op_index} {o.op}"] = int((ref != got).sum())
    return bad


def random_inputs(shape, n=60, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (n, *shape)).astype(np.int8)


def test_a_real_converters_model_runs_bit_exact_layer_by_layer():
    raw = FIXTURE.read_bytes()
    imported = read_tflite(raw)
    assert [o.op for o in imported.ops] == ["PAD", "DEPTHWISE_CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MEAN",
                                            "FULLY_CONNECTED", "FULLY_CONNECTED"]
    from fedtiny.data import build_task
    from omegaconf import OmegaConf

    task = build_task("digits", OmegaConf.create({"name": "digits", "pretrain_fraction": 0.3, "num_clients": 10,
                                                  "alpha": 1.0, "test_fraction": 0.25, "holdout_fraction": 0.2,
                                                  "seed": 0}))
    real = Model(imported.spec).quantize_input(task.server_test.x[:80])
    for xq in (random_inputs(imported.spec.input_shape), real):
        bad = layer_by_layer(raw, xq)
        assert len(bad) == 6 and all(v == 0 for v in bad.values()), bad


CASES = {
    "conv SAME stride 2 on an even input, relu": lambda g: (g.conv(6, 3, 2, "SAME"), g.conv(4, 3, 1, "VALID", act="NONE")),
    "conv dilation 2, relu6, per-tensor weights": lambda g: g.conv(5, 3, 1, "SAME", dilation=2, act="RELU6",
                                                                     per_channel=False),
    "conv without bias": lambda g: g.conv(4, 1, 1, "VALID", bias=False),
    "depthwise multiplier 2, SAME": lambda g: g.dw(2, 3, 1, "SAME"),
    "depthwise 3x3 stride 2 VALID, relu": lambda g: g.dw(1, 3, 2, "VALID", act="RELU"),
    "depthwise 5x5 stride 2 SAME (odd padding)": lambda g: g.dw(1, 5, 2, "SAME", act="NONE"),
    "PAD then VALID convolution": lambda g: (g.pad(1, 1, 1, 1), g.conv(4, 3, 2, "VALID")),
    "PAD (asymmetric) then VALID depthwise": lambda g: (g.pad(2, 1, 0, 1), g.dw(1, 3, 1, "VALID")),
    "average pool 2x2 VALID, then per-tensor FC on 4-D": lambda g: (g.avgpool(2, 2, "VALID"), g.fc(7)),
    "average pool 3x3 SAME (the padding outside the divisor)": lambda g: g.avgpool(3, 1, "SAME"),
    "MEAN (other output quantization), per-channel FC": lambda g: (g.conv(8, 3, 1, "SAME"), g.mean(same_quant=False),
                                                                    g.fc(5, act="RELU", per_channel=True)),
    "MEAN keep_dims": lambda g: (g.conv(8, 1, 1, "VALID"), g.mean(keep_dims=True), g.flatten(), g.fc(4)),
    "RESHAPE flatten, FC, FC": lambda g: (g.flatten(), g.fc(12, act="RELU"), g.fc(3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_supported_operator_case_is_bit_exact(case):
    g = Graph((8, 8, 3), np.random.default_rng(len(case)))
    CASES[case](g)
    if len(g.shape) == 4:  # a classifier's logits at the end, as fedtiny's models are
        g.mean()
        g.fc(6)
    raw = g.bytes()
    bad = layer_by_layer(raw, random_inputs((8, 8, 3), seed=len(case)))
    assert bad and all(v == 0 for v in bad.values()), bad


def test_a_float_input_and_a_softmax_tail_are_the_ends_fedtiny_drops():
    g = Graph((6, 6, 2), np.random.default_rng(3), float_input=True)
    g.conv(4, 3, 1, "SAME")
    g.mean()
    g.fc(5)
    g.softmax()
    g.dequantize()
    raw = g.bytes()
    imported = read_tflite(raw)
    assert [(o.op, o.layer is None) for o in imported.ops] == [
        ("QUANTIZE", True), ("CONV_2D", False), ("MEAN", False), ("FULLY_CONNECTED", False), ("SOFTMAX", True),
        ("DEQUANTIZE", True)]
    assert imported.spec.input_scale == pytest.approx(0.02) and imported.spec.input_zero_point == -5
    assert all(v == 0 for v in layer_by_layer(raw, random_inputs((6, 6, 2))).values())
    # the whole file, float in and out: fedtiny's logits give TFLite Micro's class on every sample
    from tflite_micro.python.tflite_micro import runtime

    it = runtime.Interpreter.from_bytes(raw)
    x = np.random.default_rng(4).uniform(-1.2, 1.2, (40, 6, 6, 2)).astype(np.float32)
    model = Model(imported.spec)
    logits = model.forward(model.quantize_input(x))[-1].int8.reshape(40, -1)
    probs = []
    for n in range(40):
        it.set_input(x[n : n + 1], 0)
        it.invoke()
        probs.append(it.get_output(0).reshape(-1))
    agree = np.mean(np.argmax(probs, 1) == np.argmax(logits, 1))
    assert agree >= 0.9, agree  # softmax ties and input rounding (TFLite: float32, halves away) aside


def test_the_head_is_the_imported_layers_dequantized():
    raw = FIXTURE.read_bytes()
    spec, imported = import_tflite(raw, 2)
    assert spec.first_trainable == 4 and [lay.trainable for lay in spec.layers] == [False] * 4 + [True] * 2
    fc = imported.spec.layers[4]
    ws = imported.weight_scales[4]
    np.testing.assert_allclose(spec.layers[4].weights, fc.weights * ws[:, None], rtol=1e-6)
    np.testing.assert_allclose(spec.layers[4].bias, fc.bias * imported.spec.layers[3].out_scale * ws, rtol=1e-6)
    # the float head computes what the int8 layers approximate: logits within a few output steps
    xq = random_inputs(spec.input_shape, n=100)
    ref = tflite_micro_outputs(int8_view(raw), xq).astype(np.float64)
    last = imported.spec.layers[-1]
    ref_real = last.out_scale * (ref - last.output_offset)
    got = Model(spec).forward(xq)[-1].real
    assert np.abs(got - ref_real).mean() < 2 * last.out_scale
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.95


def test_tflites_multiplier_rounds_halves_away_from_zero():
    # an exact tie: mantissa * 2^31 = 2^30 + 0.5; TFLite's std::round gives 2^30 + 1 (Python's round: 2^30)
    assert quantize_multiplier((2**30 + 0.5) / 2**31) == (2**30 + 1, 0)
    assert quantize_multiplier(0.75) == (3 * 2**29, 0)


def _mutate(edit):
    """The fixture file with its object tree edited by `edit(model)`."""
    import flatbuffers

    m = S.ModelT.InitFromPackedBuf(bytearray(FIXTURE.read_bytes()), 0)
    edit(m)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _set(obj, **kw):
    for k, v in kw.items():
        setattr(obj, k, v)


def _graph_with(op) -> bytes:
    g = Graph((6, 6, 2), np.random.default_rng(0))
    g.conv(4, 3)
    op(g)
    return g.bytes()


BAD = {
    "empty": (lambda: b"", "too short for a TFLite model"),
    "not a flatbuffer": (lambda: b"PK\x03\x04" + bytes(200), "not a TFLite model (file identifier"),
    "truncated": (lambda: FIXTURE.read_bytes()[:8], "truncated"),
    "cut in the middle": (lambda: FIXTURE.read_bytes()[: len(FIXTURE.read_bytes()) // 2], "damaged TFLite flatbuffer"),
    "an operator fedtiny has not": (lambda: _graph_with(lambda g: g.unary(S.BuiltinOperator.TANH)),
                                     "operator 1 TANH is not supported"),
    "a fused TANH": (lambda: _mutate(lambda m: _set(m.subgraphs[0].operators[3].builtinOptions,
                                                     fusedActivationFunction=4)),
                     "operator 3 CONV_2D: fused activation TANH is not supported"),
    "uint8 activations": (lambda: _mutate(lambda m: _set(m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]], type=3)),
                          "is uint8; fedtiny imports int8 activations"),
    "weights with a zero point": (lambda: _mutate(lambda m: _set(
        m.subgraphs[0].tensors[m.subgraphs[0].operators[3].inputs[1]].quantization,
        zeroPoint=np.full(16, 3, np.int64))), "non-zero zero points"),
    "a branch": (lambda: _mutate(lambda m: _set(m.subgraphs[0].operators[5], inputs=np.array(
        [m.subgraphs[0].inputs[0], *m.subgraphs[0].operators[5].inputs[1:]], np.int32))),
        "not the previous operator's output"),
    "two subgraphs": (lambda: _mutate(lambda m: _set(m, subgraphs=[m.subgraphs[0], m.subgraphs[0]])),
                      "2 subgraphs; fedtiny imports models of one subgraph"),
    "a buffer out of range": (lambda: _mutate(lambda m: _set(
        m.subgraphs[0].tensors[m.subgraphs[0].operators[3].inputs[1]], buffer=9999)), "names buffer 9999"),
    "weights of the wrong size": (lambda: _mutate(lambda m: _set(
        m.buffers[m.subgraphs[0].tensors[m.subgraphs[0].operators[3].inputs[1]].buffer],
        data=np.zeros(7, np.uint8))), "holds 7 bytes, its shape needs 128"),
    "fake quantization (QDQ)": (lambda: _graph_with(lambda g: (g.dequantize(), g._op(
        S.BuiltinOperator.QUANTIZE, [g.cur], [g._out(g.shape)], None, None))), "QUANTIZE/DEQUANTIZE pairs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_file_fedtiny_cannot_import_is_refused_with_its_reason(case):
    make, message = BAD[case]
    with pytest.raises(TFLiteError) as err:
        read_tflite(make(), "m.tflite")
    assert message in str(err.value) and str(err.value).startswith("m.tflite"), str(err.value)


def fedtiny(args, cwd, cache_dir, timeout=600):
    env = dict(os.environ, FEDTINY_CACHE=str(cache_dir), FLWR_TELEMETRY_ENABLED="0")
    return subprocess.run([*FEDTINY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_fedtiny_import_prints_the_layers_writes_the_model_and_checks_it(tmp_path, cache_dir):
    r = fedtiny(["import", str(FIXTURE), "--out", "m.ftny", "--trainable-layers", "3"], tmp_path, cache_dir)
    assert r.returncode == 0, r.stderr
    assert "MEAN" in r.stdout and "64 of 64 random inputs equal byte for byte" in r.stdout
    m = Model.from_file(tmp_path / "m.ftny")
    assert m.first_trainable == 3 and m.input_shape == (8, 8, 1) and m.num_classes == 10
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(_graph_with(lambda g: g.unary(S.BuiltinOperator.LOGISTIC)))
    r = fedtiny(["import", str(bad)], tmp_path, cache_dir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "operator 1 LOGISTIC is not supported" in r.stderr


def test_a_tflite_config_that_cannot_work_is_refused_before_anything_starts(tmp_path, cache_dir):
    cases = [(["model=tflite"], "model.path"),
             (["model=tflite", f"model.path={tmp_path / 'nope.tflite'}"], "nope.tflite: cannot read"),
             (["model=tflite", f"model.path={FIXTURE}", "model.trainable_layers=9"], "has 6 layers, got 9"),
             (["dataset=fashion", "model=tflite", f"model.path={FIXTURE}", "rounds=1"],
              "takes (8, 8, 1) inputs and gives 10 classes; dataset fashion has (28, 28, 1)")]
    for args, message in cases:
        r = fedtiny(["experiment=digits_quick", *args], tmp_path, cache_dir)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory, cache_dir):
    """import -> federate -> export, from outside the source tree: the converter's .tflite
    federated on digits and exported, and a built-in backbone's run exported."""
    out = {}
    for name, extra in (("tflite", ["model=tflite", f"model.path={FIXTURE}"]), ("builtin", [])):
        cwd = tmp_path_factory.mktemp(name)
        r = fedtiny(["experiment=digits_quick", *extra, "hydra.run.dir=run", "progress=false"], cwd, cache_dir)
        assert r.returncode == 0, r.stderr[-3000:]
        e = fedtiny(["export", "run", "--format", "tflite,c,ftny"], cwd, cache_dir)
        assert e.returncode == 0, e.stderr[-3000:]
        out[name] = {"dir": cwd / "run", "export": e.stdout, "summary": json.loads((cwd / "run" / "summary.json").read_text()),
                     "record": json.loads((cwd / "run" / "export" / "export.json").read_text())}
    return out


def _held_out():
    from omegaconf import OmegaConf

    from fedtiny.config import compose
    from fedtiny.data import build_task

    cfg = compose(["experiment=digits_quick"])
    return build_task("digits", OmegaConf.create(OmegaConf.to_container(cfg.dataset, resolve=True))).server_test


@pytest.mark.parametrize("name", ["tflite", "builtin"])
def test_the_exported_model_runs_in_tflite_micro_bit_exact_and_keeps_its_accuracy(round_trip, name):
    run = round_trip[name]
    blob = (run["dir"] / "export" / "model.tflite").read_bytes()
    test = _held_out()
    # fedtiny's int8 forward of the exported model (read back from the file) against TFLite Micro
    imported = read_tflite(blob)
    model = Model(imported.spec)
    xq = model.quantize_input(test.x)
    ours = model.forward(xq)[-1].int8.reshape(len(xq), -1)
    theirs = tflite_micro_outputs(blob, xq)
    assert np.array_equal(ours, theirs)
    accuracy = float((theirs.argmax(1) == test.y).mean())
    rec = run["record"]
    assert rec["int8_field_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert abs(accuracy - rec["float_head_field_accuracy"]) <= 0.03, rec
    assert rec["float_head_field_accuracy"] == pytest.approx(run["summary"]["final_accuracy"], abs=1e-6)
    assert f"{len(xq)} of {len(xq)} samples' outputs equal" in run["export"]


def test_the_exported_float_model_is_the_runs_final_model(round_trip):
    from fedtiny.trainer import TrainConfig, Trainer

    run = round_trip["tflite"]
    model = Model.from_file(run["dir"] / "export" / "model.ftny")
    test = _held_out()
    res = Trainer(model, TrainConfig()).evaluate(model.prefix_features(model.quantize_input(test.x)),
                                                 test.y.astype(np.uint8))
    rows = (run["dir"] / "metrics.csv").read_text().strip().split("\n")
    header, last = rows[0].split(","), rows[-1].split(",")
    assert res.accuracy == pytest.approx(float(last[header.index("accuracy")]), abs=1e-6)  # csv: 6 decimals
    assert float(last[header.index("accuracy")]) > float(rows[1].split(",")[header.index("accuracy")])  # it learned


def test_the_c_header_holds_the_tflite_file(round_trip, tmp_path):
    export = round_trip["builtin"]["dir"] / "export"
    main = tmp_path / "main.c"
    main.write_text('#include <stdio.h>\n#include "model_tflite.h"\nint main(void) {\n'
                    '  if (((unsigned long)fedtiny_model_tflite) % 16 != 0) return 3;\n'
                    '  fwrite(fedtiny_model_tflite, 1, fedtiny_model_tflite_len, stdout);\n  return 0;\n}\n')
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-I", str(export), str(main), "-o", str(tmp_path / "dump")],
                   check=True)
    dumped = subprocess.run([str(tmp_path / "dump")], capture_output=True, check=True).stdout
    assert dumped == (export / "model.tflite").read_bytes()


def test_fedtiny_export_refuses_what_it_cannot_export(tmp_path, cache_dir):
    r = fedtiny(["export", str(tmp_path)], tmp_path, cache_dir)
    assert r.returncode == 2 and "no checkpoint" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = fedtiny(["export", str(tmp_path), "--format", "onnx"], tmp_path, cache_dir)
    assert r.returncode == 2 and "unknown onnx" in r.stderr, r.stderr


def test_fedtinys_writer_round_trips_an_imported_model():
    raw = FIXTURE.read_bytes()
    imported = read_tflite(raw)
    again = read_tflite(to_tflite(imported.spec))
    xq = random_inputs(imported.spec.input_shape)
    a = Model(imported.spec).forward(xq)[-1].int8
    b = Model(again.spec).forward(xq)[-1].int8
    assert np.array_equal(a, b)
    assert [o.op for o in again.ops] == ["PAD", "DEPTHWISE_CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MEAN",
                                         "FULLY_CONNECTED", "FULLY_CONNECTED"]
