"""Pretrain a backbone on the vendor data, quantize it to int8 and cache the artefacts.

Pretraining runs in fedtiny's C float path (:mod:`fedtiny.models.float_train`), so a backbone
is the same bytes on every machine (any CPU, any thread count) for the same settings. The cache
key hashes everything that determines the artefact (dataset and model settings, seed,
model-format version, pretraining recipe, trainer version and the vendor data's digest), so a
changed setting never reuses a stale model::

    python -m fedtiny.models.pretrain                      # default dataset and model
    python -m fedtiny.models.pretrain dataset=fashion model=image_cnn

prints the float and int8 accuracy on the vendor validation split and on the held-out field
data, and the cache directory (``$FEDTINY_CACHE``, default ``~/.cache/fedtiny``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedtiny._core import TRAINER_VERSION
from fedtiny.data.base import FederatedTask, Split
from fedtiny.errors import ConfigError
from fedtiny.models.export import export_int8, float_spec, to_torch
from fedtiny.models.float_train import RECIPE, fit, float_accuracy, init_params
from fedtiny.models.nets import build_backbone, model_name
from fedtiny.trainer import Model, TrainConfig, Trainer
from fedtiny.trainer.model_format import VERSION, ModelSpec, to_bytes

CACHE_SCHEMA = 3  # bumped whenever a cached entry's layout or meaning changes
WEIGHT_DECAY = 1e-4  # Adam's L2 term in pretraining


@dataclass
class Backbone:
    """A cached pretrained model: int8 model bytes, the float net, and the export report."""

    model_bytes: bytes
    net: nn.Sequential | None  # None for an imported .tflite (nothing pretrained)
    report: dict
    path: Path


# model settings that do not change the backbone (reporting thresholds)
_NOT_IN_KEY = ("int8_max_drop",)


def data_digest(split: Split) -> str:
    """SHA-256 of a split's inputs and labels (their dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(split.x), np.ascontiguousarray(split.y)):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(dataset_cfg: dict, model_cfg: dict, seed: int, data: str = "") -> str:
    """What a backbone's bytes depend on: the data set and model settings, the seed, the model
    format, the cache schema, the pretraining recipe and trainer version, and (`data`) the digest
    of the vendor data it is trained on."""
    model_cfg = {k: v for k, v in model_cfg.items() if k not in _NOT_IN_KEY}
    blob = json.dumps({"dataset": dataset_cfg, "model": model_cfg, "seed": seed, "format": VERSION,
                       "schema": CACHE_SCHEMA, "recipe": RECIPE, "trainer": TRAINER_VERSION, "data": data},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def int8_accuracy(model: Model, split: Split) -> float:
    feats = model.prefix_features(model.quantize_input(split.x))
    return Trainer(model, TrainConfig()).evaluate(feats, split.y).accuracy


def calibration_inputs(split: Split, model_cfg, seed: int) -> np.ndarray:
    """The vendor samples that set the int8 input range and calibrate the activation ranges."""
    rng = np.random.default_rng(seed)
    return split.x[rng.permutation(len(split))[: int(model_cfg.calibration_samples)]]


def train_float(task: FederatedTask, model_cfg, seed: int, progress=None) -> ModelSpec:
    """The backbone of `model_cfg` pretrained on the task's vendor data in fedtiny's C float
    path (:mod:`fedtiny.models.float_train`): an all-float spec whose int8 inputs are quantized
    over the calibration samples' range. The same bytes on every machine for the same settings."""
    net = build_backbone(model_cfg, task.input_shape, task.num_classes)
    no_bias = [i for i, m in enumerate(net) if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is None]
    if no_bias:
        raise ConfigError(f"model: layers {no_bias} of {model_name(model_cfg)} have no bias; the device trainer "
                          "trains a bias for every convolution and linear layer (build them with bias=True)")
    spec = float_spec(net, calibration_inputs(task.pretrain, model_cfg, seed), task.num_classes)
    init_params(spec, seed)
    x = Model(spec).quantize_input(task.pretrain.x)
    return fit(spec, x, task.pretrain.y, epochs=int(model_cfg.pretrain_epochs), lr=float(model_cfg.pretrain_lr),
               batch_size=int(model_cfg.pretrain_batch_size), weight_decay=WEIGHT_DECAY, seed=seed,
               progress=progress)


@contextlib.contextmanager
def epoch_bar(enabled: bool):
    """A rich progress bar of pretraining epochs (with the mean loss); yields its callback, or
    None when not `enabled`."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]pretraining"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), transient=True) as bar:
        task = bar.add_task("", total=None)

        def update(epoch: int, epochs: int, loss: float) -> None:
            bar.update(task, completed=epoch, total=epochs, description=f"loss {loss:.3f}")

        yield update


def get_backbone(task: FederatedTask, dataset_cfg: dict, model_cfg, seed: int, cache_dir: str | Path,
                 log=print, progress: bool = False) -> Backbone:
    """Load the cached backbone for these settings, or pretrain, quantize and cache it (with a
    progress bar of the epochs when `progress`)."""
    from omegaconf import OmegaConf

    model_dict = OmegaConf.to_container(model_cfg, resolve=True) if not isinstance(model_cfg, dict) else model_cfg
    if model_dict.get("arch") == "tflite" and not model_dict.get("_target_"):
        return tflite_backbone(task, dataset_cfg, model_dict, cache_dir, log)
    model_dict = {k: v for k, v in model_dict.items() if k != "path" or v is not None}  # keys of before .tflite
    if model_dict.get("_target_") is None:  # a built-in backbone keeps the cache key it had before plugins
        model_dict = {k: v for k, v in model_dict.items() if k != "_target_"}
    key = cache_key(dataset_cfg, model_dict, seed, data_digest(task.pretrain))
    path = Path(cache_dir).expanduser() / f"{task.name}-{model_name(model_dict).rsplit('.', 1)[-1]}-{key}"
    net = build_backbone(model_cfg, task.input_shape, task.num_classes)
    if (path / "report.json").exists():
        net.load_state_dict(torch.load(path / "float.pt", weights_only=True))
        net.eval()
        report = json.loads((path / "report.json").read_text())
        return Backbone((path / "model.ftm").read_bytes(), net, report, path)

    t0 = time.perf_counter()
    log(f"pretraining {model_name(model_cfg)} on {len(task.pretrain)} vendor samples ({model_cfg.pretrain_epochs} epochs)")
    with epoch_bar(progress) as update:
        float_model = train_float(task, model_cfg, seed, update)
    spec = export_int8(float_model, calibration_inputs(task.pretrain, model_cfg, seed), task.num_classes,
                       int(model_cfg.trainable_layers))
    data = to_bytes(spec)
    model = Model(data)
    net = to_torch(float_model, net)
    report = {
        "float_vendor_val_accuracy": float_accuracy(float_model, task.pretrain_val.x, task.pretrain_val.y),
        "int8_vendor_val_accuracy": int8_accuracy(model, task.pretrain_val),
        "float_field_accuracy": float_accuracy(float_model, task.server_test.x, task.server_test.y),
        "int8_field_accuracy": int8_accuracy(model, task.server_test),
        "trainable_layers": int(model_cfg.trainable_layers),
        "first_trainable": model.first_trainable,
        "model_bytes": len(data),
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "pretrain_seconds": round(time.perf_counter() - t0, 2),
    }
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "model.ftm.tmp"
    tmp.write_bytes(data)
    tmp.replace(path / "model.ftm")
    torch.save(net.state_dict(), path / "float.pt")
    (path / "report.json").write_text(json.dumps(report, indent=2))  # written last: marks the entry complete
    log("backbone: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {str(v)[:16]}"
                                 for k, v in report.items()))
    return Backbone(data, net, report, path)


def tflite_backbone(task: FederatedTask, dataset_cfg: dict, model_cfg: dict, cache_dir: str | Path,
                    log=print) -> Backbone:
    """The backbone of ``model.arch=tflite``: the int8 ``.tflite`` at ``model.path`` imported
    (:mod:`fedtiny.models.tflite`), its last ``trainable_layers`` layers made the float head.
    Nothing is pretrained; ``net`` is None. The report's ``float_*`` accuracies are the file's
    own (every layer int8, as TFLite Micro runs it), ``int8_*`` fedtiny's model (int8 prefix,
    float head); both on the vendor validation split and the held-out field data."""
    from fedtiny.models.tflite import import_tflite

    file = Path(str(model_cfg["path"])).expanduser()
    spec, imported = import_tflite(file, int(model_cfg["trainable_layers"]))
    if tuple(spec.input_shape) != tuple(task.input_shape) or spec.num_classes != task.num_classes:
        raise ConfigError(f"model.path: {file} takes {tuple(spec.input_shape)} inputs and gives {spec.num_classes} "
                          f"classes; dataset {task.name} has {tuple(task.input_shape)} and {task.num_classes}")
    key = cache_key(dataset_cfg, {"tflite_sha256": imported.sha256, "trainable_layers": model_cfg["trainable_layers"]}, 0)
    path = Path(cache_dir).expanduser() / f"{task.name}-{model_name(model_cfg)}-{key}"
    if (path / "report.json").exists():
        return Backbone((path / "model.ftm").read_bytes(), None, json.loads((path / "report.json").read_text()), path)
    data = to_bytes(spec)
    model, as_file = Model(data), Model(imported.spec)

    def file_accuracy(split: Split) -> float:
        logits = as_file.forward(as_file.quantize_input(split.x))[-1].int8
        return float((logits.reshape(len(split), -1).argmax(1) == split.y).mean())

    report = {
        "source": f"tflite {file.name} (sha256 {imported.sha256[:16]})",
        "float_vendor_val_accuracy": file_accuracy(task.pretrain_val),
        "int8_vendor_val_accuracy": int8_accuracy(model, task.pretrain_val),
        "float_field_accuracy": file_accuracy(task.server_test),
        "int8_field_accuracy": int8_accuracy(model, task.server_test),
        "trainable_layers": int(model_cfg["trainable_layers"]),
        "first_trainable": model.first_trainable,
        "model_bytes": len(data),
        "pretrain_seconds": 0.0,
    }
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "model.ftm.tmp"
    tmp.write_bytes(data)
    tmp.replace(path / "model.ftm")
    (path / "report.json").write_text(json.dumps(report, indent=2))
    log(f"imported {file} ({len(imported.spec.layers)} layers, the last {model_cfg['trainable_layers']} trainable): "
        + ", ".join(f"{k} {v:.3f}" for k, v in report.items() if isinstance(v, float) and k != "pretrain_seconds"))
    return Backbone(data, None, report, path)


def main(argv: list[str] | None = None) -> None:
    import sys

    from fedtiny.config import compose, dataset_dict, split_config_dirs
    from fedtiny.data import build_task

    dirs, overrides = split_config_dirs(sys.argv[1:] if argv is None else argv)
    cfg = compose(overrides, dirs)
    task = build_task(cfg.dataset.name, cfg.dataset)
    bb = get_backbone(task, dataset_dict(cfg), cfg.model, cfg.seed, cfg.cache_dir)
    print(json.dumps(bb.report, indent=2))
    print(f"cached in {bb.path}")


if __name__ == "__main__":
    main()
