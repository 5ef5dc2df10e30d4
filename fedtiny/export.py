"""``fedtiny export RUN_DIR``: the federated model out of fedtiny, for a device.

The run's newest checkpoint gives the global head after its last complete round; the run's own
config rebuilds the backbone (pretrained and cached, or the imported ``.tflite``). Then:

* ``ftny``: ``model.ftny``, fedtiny's model file as the run ends: the int8 prefix and the
  fine-tuned float32 head (what ``fedtiny deploy`` and the C trainer load);
* ``tflite``: ``model.tflite``, every layer int8 (:mod:`fedtiny.models.tflite`): the head
  quantized like the prefix, its activation ranges calibrated on ``model.calibration_samples``
  vendor samples (the server's own data; the devices' data never leaves them), no SOFTMAX (the
  int8 logits are the output; their argmax is the class);
* ``c``: ``model_tflite.h``, the same ``.tflite`` as a 16-byte aligned C array for firmware.

``export.json`` records what was measured on the run's held-out field data: the float head's
accuracy, the int8 model's (fedtiny's int8 forward), and, when TFLite Micro's interpreter is
installed, how many of the exported model's outputs it computed equal to fedtiny's.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from fedtiny.errors import ConfigError
from fedtiny.trainer.model_format import ModelSpec

FORMATS = ("tflite", "c", "ftny")


def final_model(run_dir: Path, log=print):
    """(run context, the run's model bytes with the final global head, round) of a run directory."""
    from omegaconf import OmegaConf

    from fedtiny.client.context import RunContext
    from fedtiny.client.records import record_to_params
    from fedtiny.server import checkpoint as ckpt
    from fedtiny.trainer import Trainer, TrainConfig

    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    c = ckpt.latest(run_dir, log)
    if c is None:
        raise ConfigError(f"{run_dir}: no checkpoint (checkpoints/round-*.ckpt); is it a fedtiny run directory?")
    from flwr.app import Array, ArrayRecord

    run = RunContext(OmegaConf.create(c.meta["config"]), log=log)
    trainer = Trainer(run.model, TrainConfig())
    params = record_to_params(ArrayRecord({k: Array(v) for k, v in c.group("global").items()}), trainer.get_params())
    trainer.set_params(params)
    return run, trainer, params, c.round


def final_spec(model_bytes: bytes, params) -> ModelSpec:
    """The run's model file with its trainable head set to `params` (per layer: weights, bias)."""
    from fedtiny.trainer import model_format as mf

    spec = mf.from_bytes(model_bytes)
    for lay, (w, b) in zip(spec.layers[spec.first_trainable:], params):
        if lay.has_params:
            lay.weights, lay.bias = np.asarray(w, np.float32).reshape(lay.weights.shape), np.asarray(b, np.float32)
    return spec


def export_run(run_dir: str | Path, formats: tuple[str, ...] = FORMATS, out_dir: str | Path | None = None,
               log=print) -> dict:
    """Write the run's final model in `formats` into `out_dir` (default ``RUN_DIR/export``);
    returns what ``export.json`` records."""
    from fedtiny.models.export import quantize_head
    from fedtiny.models.tflite import c_array, to_tflite
    from fedtiny.trainer import Model
    from fedtiny.trainer import model_format as mf

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"--format: unknown {', '.join(bad) or '(none)'} (known: {', '.join(FORMATS)})")
    run_dir = Path(run_dir)
    run, trainer, params, rnd = final_model(run_dir, log)
    out = Path(out_dir) if out_dir is not None else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    task, model = run.task, run.model
    test_x, test_y = task.server_test.x, task.server_test.y
    head_acc = trainer.evaluate(run.features(test_x), test_y.astype(np.uint8)).accuracy
    record: dict = {"run": str(run_dir), "round": rnd, "float_head_field_accuracy": round(float(head_acc), 6),
                    "field_samples": int(len(test_y)), "files": {}}

    spec = final_spec(model.to_bytes(), params)
    if "ftny" in formats:
        _write(out / "model.ftny", mf.to_bytes(spec), record)
    if "tflite" in formats or "c" in formats:
        rng = np.random.default_rng(int(run.cfg.seed))
        calib = task.pretrain.x[rng.permutation(len(task.pretrain))[: int(run.cfg.model.calibration_samples)]]
        int8 = quantize_head(mf.to_bytes(spec), params, model.quantize_input(calib))
        blob = to_tflite(int8, description=f"fedtiny export of {run_dir.name} (round {rnd})")
        as_int8 = Model(int8)
        xq = as_int8.quantize_input(test_x)
        logits = as_int8.forward(xq)[-1].int8.reshape(len(test_y), -1)
        record["int8_field_accuracy"] = round(float((logits.argmax(1) == test_y).mean()), 6)
        record["calibration_samples"] = int(len(calib))
        record["tflite_micro"] = _tflite_micro_check(blob, xq, logits)
        if "tflite" in formats:
            _write(out / "model.tflite", blob, record)
        if "c" in formats:
            _write(out / "model_tflite.h", c_array(blob, "fedtiny_model_tflite").encode(), record)
    (out / "export.json").write_text(json.dumps(record, indent=2))
    return record


def _write(path: Path, data: bytes, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    record["files"][path.name] = len(data)


def _tflite_micro_check(blob: bytes, xq: np.ndarray, logits: np.ndarray) -> str:
    """How many held-out samples' outputs TFLite Micro's interpreter computes from the exported
    file equal to fedtiny's int8 forward."""
    from fedtiny.models.tflite import tflite_micro_outputs

    ref = tflite_micro_outputs(blob, xq)
    if ref is None:
        return "not checked (tflite-micro is not installed)"
    return f"{int(np.all(ref == logits, axis=1).sum())} of {len(xq)} samples' outputs equal fedtiny's int8 forward"


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="fedtiny export", description="write a run's federated model for devices: "
                                 "model.tflite (int8, TFLite Micro), model_tflite.h (its C array), model.ftny "
                                 "(fedtiny's file: int8 prefix, fine-tuned float head)")
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (its newest checkpoint is exported)")
    ap.add_argument("--format", default=",".join(FORMATS),
                    help=f"comma-separated formats of {', '.join(FORMATS)} (default: all)")
    ap.add_argument("--out", default=None, help="output directory (default: RUN_DIR/export)")
    a = ap.parse_args(argv)
    formats = tuple(f.strip() for f in a.format.split(",") if f.strip())
    record = export_run(a.run_dir, formats, a.out, log=lambda *_: None)
    out = Path(a.out) if a.out else Path(a.run_dir) / "export"
    print(f"exported round {record['round']} of {a.run_dir} to {out}: "
          + ", ".join(f"{k} ({v:,} B)" for k, v in record["files"].items()))
    print(f"held-out field accuracy: float head {record['float_head_field_accuracy']:.3f}"
          + (f", int8 model {record['int8_field_accuracy']:.3f}" if "int8_field_accuracy" in record else "")
          + f" ({record['field_samples']} samples)")
    if "tflite_micro" in record:
        print(f"TFLite Micro: {record['tflite_micro']}")
    return 0


def deploy_main(argv: list[str]) -> int:
    """``fedtiny deploy RUN_DIR --to URL...``: the run's final model to boards, over their links."""
    import argparse
    import sys
    import time

    from serial import SerialException

    from fedtiny.devices.link import BoardClient, BoardError
    from fedtiny.trainer import model_format as mf

    ap = argparse.ArgumentParser(prog="fedtiny deploy", description="send a run's final model (model.ftny: int8 "
                                 "prefix, fine-tuned float head) to boards: chunked and CRC-checked into the "
                                 "inactive one of two slots, activated only after the board loaded and evaluated "
                                 "it, rolled back otherwise")
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (its newest checkpoint is deployed)")
    ap.add_argument("--to", nargs="+", required=True, metavar="URL",
                    help="board URLs: serial ports, socket://host:port (a bridge), ble://...")
    ap.add_argument("--version", type=int, default=None,
                    help="the model version the boards report in HELLO (default: seconds since 1970)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)")
    a = ap.parse_args(argv)
    version = a.version if a.version is not None else int(time.time())
    run, _trainer, params, rnd = final_model(Path(a.run_dir), log=lambda *_: None)
    data = mf.to_bytes(final_spec(run.model.to_bytes(), params))
    print(f"deploying round {rnd} of {a.run_dir} ({len(data):,} B, CRC-32 {zlib.crc32(data):08x}) as version {version}")
    failed = 0
    for url in a.to:
        client = None
        try:
            client = BoardClient(url, timeout=a.timeout, retries=2)
            r = client.deploy(data, version)
            acc = f"{r['correct']}/{r['count']} ({r['accuracy']:.3f}), loss {r['loss']:.4f}" if r["count"] else \
                "no local data to evaluate on"
            print(f"board {url}: version {r['version']} active (CRC-32 {r['crc32']:08x}); on-device evaluation {acc}")
        except (BoardError, SerialException, OSError, ValueError) as err:
            failed += 1
            print(f"fedtiny deploy: board {url}: {err} (its previous model stays active)", file=sys.stderr)
        finally:
            if client is not None:
                client.close()
    return 1 if failed else 0

