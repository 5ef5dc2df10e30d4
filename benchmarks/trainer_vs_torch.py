"""Train the same head with the C trainer and with PyTorch on CPU; print samples/s and ratio.

Same data (digits features from the frozen int8 prefix, dequantized for PyTorch), same zero
initialisation, same SGD settings and the same batches in the same order (PyTorch follows the
C trainer's permutation). Timings are printed, never asserted::

    python benchmarks/trainer_vs_torch.py [--epochs 20] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedtiny import _core
from fedtiny.trainer import TrainConfig, Trainer
from fedtiny.trainer.demo import digits_task


def torch_train(x: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float, mom: float, seed: int):
    head = torch.nn.Linear(x.shape[1], 10)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=mom)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    orders = [torch.from_numpy(_core.permutation(len(y), _core.epoch_key(seed, e)).astype(np.int64))
              for e in range(epochs)]
    t0 = time.perf_counter()
    for order in orders:
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(xt[idx]), yt[idx]).backward()
            opt.step()
    return head, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = digits_task(args.seed)
    f_train = task.model.prefix_features(task.x_train)
    f_test = task.model.prefix_features(task.x_test)
    scale, zp = task.model.feature_quant
    real_train = (np.float32(scale) * (f_train.astype(np.float32) - zp)).reshape(len(f_train), -1)
    real_test = (np.float32(scale) * (f_test.astype(np.float32) - zp)).reshape(len(f_test), -1)
    samples = len(task.y_train) * args.epochs

    trainer = Trainer(task.model, TrainConfig(lr=args.lr, momentum=0.9, batch_size=args.batch_size))
    t0 = time.perf_counter()
    trainer.train_epochs(f_train, task.y_train, epochs=args.epochs, seed=args.seed)
    c_time = time.perf_counter() - t0
    c_acc = trainer.evaluate(f_test, task.y_test).accuracy

    rows = [("fedtiny C trainer", c_time, c_acc)]
    for threads in (1, torch.get_num_threads()):
        torch.set_num_threads(threads)
        head, t_time = torch_train(real_train, task.y_train, args.epochs, args.batch_size, args.lr, 0.9, args.seed)
        with torch.no_grad():
            t_acc = float((head(torch.from_numpy(real_test)).argmax(1).numpy() == task.y_test).mean())
        rows.append((f"PyTorch {torch.__version__} CPU, {threads} thread(s)", t_time, t_acc))

    print(f"head {real_train.shape[1]}->10, {len(task.y_train)} samples x {args.epochs} epochs, "
          f"batch {args.batch_size}, lr {args.lr}, momentum 0.9")
    print(f"{'trainer':44s} {'samples/s':>12s} {'test acc':>9s} {'speed vs C':>11s}")
    for name, seconds, acc in rows:
        print(f"{name:44s} {samples / seconds:12,.0f} {acc:9.3f} {c_time / seconds:10.3f}x")


if __name__ == "__main__":
    main()
