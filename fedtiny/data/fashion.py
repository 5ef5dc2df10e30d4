"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (IDX files, no download), for scale:
Dirichlet label-skewed partitions over ``num_clients`` (100 to 1,000+) devices.

The vendor pretrains on ``pretrain_size`` clean images of the training file; the other
training images are partitioned over the devices (local train/test split per device); the
server evaluates on ``server_test_size`` images of the official test file. With
``field_shift`` (:mod:`fedtiny.data.shift`) every device sees its images through its own camera
(exposure, contrast, rotation, noise) and so does the server's field data, each image through
a device drawn at random.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from fedtiny.data.base import ClientData, FederatedTask, Split, register_task
from fedtiny.data.digits import _client_splits
from fedtiny.data.partition import dirichlet_partitions
from fedtiny.data.shift import image_shift, shift_images
from fedtiny.errors import ConfigError

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), checking its header against its size."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise ConfigError(f"{path}: header says {dims} but holds {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


@register_task("fashion")
def build(cfg) -> FederatedTask:
    root = Path(os.environ.get("FEDTINY_FASHION_MNIST_DIR", cfg.get("path") or DEFAULT_DIR))
    files = {k: root / f"{k}-ubyte.gz" for k in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise ConfigError(f"Fashion-MNIST files missing ({missing[0]}): apt-get install dataset-fashion-mnist")
    x_tr = read_idx(files["train-images-idx3"]).astype(np.float32)[..., None] / 255.0 - 0.5
    y_tr = read_idx(files["train-labels-idx1"])
    x_te = read_idx(files["t10k-images-idx3"]).astype(np.float32)[..., None] / 255.0 - 0.5
    y_te = read_idx(files["t10k-labels-idx1"])
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(y_tr))
    vendor, field = order[: cfg.pretrain_size], np.sort(order[cfg.pretrain_size :])
    full = Split(x_tr, y_tr)
    field_split = full.take(field)
    parts = dirichlet_partitions(field_split.y, cfg.num_clients, cfg.alpha, cfg.seed)
    if cfg.max_samples_per_client:
        parts = [p[: cfg.max_samples_per_client] for p in parts]
    clients = _client_splits(field_split, parts, cfg.test_fraction, cfg.seed, "device")
    n_val = max(1, cfg.pretrain_size // 10)
    test_idx = rng.permutation(len(y_te))[: cfg.server_test_size]
    server_test = Split(x_te[test_idx], y_te[test_idx])
    shift = image_shift(cfg)
    if shift is not None:
        seed = int(cfg.seed)
        clients = [ClientData(c.name, Split(shift_images(c.train.x, np.full(len(c.train), i), shift, seed), c.train.y),
                              Split(shift_images(c.test.x, np.full(len(c.test), i), shift, seed), c.test.y))
                   for i, c in enumerate(clients)]
        owners = np.random.default_rng([seed, 0x7E57]).integers(0, len(clients), len(server_test))
        server_test = Split(shift_images(server_test.x, owners, shift, seed), server_test.y)
    return FederatedTask(
        name="fashion", input_shape=(28, 28, 1), class_names=CLASSES, pretrain=full.take(vendor[n_val:]),
        pretrain_val=full.take(vendor[:n_val]), clients=clients, server_test=server_test,
        info={"field_shift": shift} if shift else {},
    )
