"""A small, real on-device training task: fine-tune the head of an int8 model on sklearn's
digits (8x8 images, 10 classes) with the C trainer.

The frozen prefix is a calibrated int8 random projection with ReLU (64 -> 48); the trainable
head is a float32 fully connected layer (48 -> 10) initialised to zero. Run it with::

    python -m fedtiny.trainer.demo [--epochs 5] [--seed 0]

It prints the arena plan, the loss and accuracy before and after training, and samples/s.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from fedtiny.trainer.model_format import LayerSpec, ModelSpec
from fedtiny.trainer.quant import quantize_multipliers
from fedtiny.trainer.runtime import Model, TrainConfig, Trainer

HIDDEN = 48
CLASSES = 10


@dataclass
class DigitsTask:
    model: Model
    x_train: np.ndarray  # int8 model inputs
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> tuple[np.ndarray, ...]:
    """Digits as float pixels in [0, 16] and labels, split with a fixed permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    n_test = int(len(order) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return digits.data[train], digits.target[train], digits.data[test], digits.target[test]


def build_digits_model(x_calib: np.ndarray, seed: int = 0) -> ModelSpec:
    """int8 random projection (calibrated on `x_calib`) followed by a zero float head."""
    rng = np.random.default_rng(seed)
    in_scale, in_zp = 16.0 / 255.0, -128
    w_real = rng.normal(0.0, 1.0 / 8.0, size=(HIDDEN, 64))
    b_real = rng.normal(0.0, 0.5, size=HIDDEN)
    w_scale = np.abs(w_real).max(axis=1) / 127.0
    w_q = np.clip(np.round(w_real / w_scale[:, None]), -127, 127).astype(np.int8)
    hidden = np.maximum(x_calib @ (w_q * w_scale[:, None]).T + b_real, 0.0)
    out_scale = float(np.percentile(hidden, 99.9)) / 255.0
    out_zp = -128  # ReLU output: use the whole int8 range for [0, 255 * scale]
    bias_q = np.round(b_real / (in_scale * w_scale)).astype(np.int32)
    mult, shift = quantize_multipliers(in_scale * w_scale / out_scale)
    prefix = LayerSpec("fc", (1, 1, 64), (1, 1, HIDDEN), act="relu", input_offset=-in_zp, output_offset=out_zp,
                       act_min=out_zp, act_max=127, out_scale=out_scale, weights=w_q, bias=bias_q,
                       multiplier=mult, shift=shift)
    head = LayerSpec("fc", (1, 1, HIDDEN), (1, 1, CLASSES), trainable=True,
                     weights=np.zeros((CLASSES, HIDDEN), np.float32), bias=np.zeros(CLASSES, np.float32))
    return ModelSpec((1, 1, 64), in_scale, in_zp, CLASSES, [prefix, head])


def digits_task(seed: int = 0) -> DigitsTask:
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    model = Model(build_digits_model(x_train, seed))
    return DigitsTask(model, model.quantize_input(x_train), y_train.astype(np.uint8), model.quantize_input(x_test),
                      y_test.astype(np.uint8))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    task = digits_task(args.seed)
    config = TrainConfig(lr=args.lr, momentum=0.9, batch_size=args.batch_size)
    trainer = Trainer(task.model, config)
    features_train = task.model.prefix_features(task.x_train)  # frozen layers run once
    features_test = task.model.prefix_features(task.x_test)
    print(f"model: {len(task.model.layers)} layers, {trainer.plan.param_count} trainable parameters")
    print("arena plan (bytes): " + ", ".join(f"{k}={v}" for k, v in trainer.plan.as_dict().items() if k.endswith("bytes")))
    before = trainer.evaluate(features_test, task.y_test)
    t0 = time.perf_counter()
    stats = trainer.train_epochs(features_train, task.y_train, epochs=args.epochs, seed=args.seed)
    elapsed = time.perf_counter() - t0
    after = trainer.evaluate(features_test, task.y_test)
    print(f"test before: loss {before.loss:.4f} accuracy {before.accuracy:.3f}")
    print(f"test after {args.epochs} epochs: loss {after.loss:.4f} accuracy {after.accuracy:.3f}")
    print(f"trained {stats.samples * args.epochs} samples in {stats.steps} steps, "
          f"{stats.samples * args.epochs / elapsed:,.0f} samples/s; arena high-water mark {trainer.arena_hwm} bytes")


if __name__ == "__main__":
    main()
