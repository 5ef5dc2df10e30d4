"""Build a preset's task and pretrain its backbone from scratch; print their SHA-256 as JSON.

    python tests/repro_probe.py CACHE_DIR [overrides...]

Run by tests/test_reproducible.py in fresh processes under other kernel paths (PyTorch's
ATEN_CPU_CAPABILITY, thread counts, numpy's dispatch targets, OpenBLAS core types, CPU affinity).
"""

from __future__ import annotations

import hashlib
import json
import sys


def split_digest(h, split) -> None:
    for a in (split.x, split.y):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())


def main(argv: list[str]) -> None:
    from fedtiny.config import compose, dataset_dict
    from fedtiny.data import build_task
    from fedtiny.models.pretrain import get_backbone

    cache, overrides = argv[0], argv[1:]
    cfg = compose(overrides)
    task = build_task(cfg.dataset.name, cfg.dataset)
    h = hashlib.sha256()
    for split in (task.pretrain, task.pretrain_val, task.server_test):
        split_digest(h, split)
    for c in task.clients:
        h.update(c.name.encode())
        split_digest(h, c.train)
        split_digest(h, c.test)
    bb = get_backbone(task, dataset_dict(cfg), cfg.model, cfg.seed, cache, log=lambda *_: None)
    print(json.dumps({"task": h.hexdigest(), "model": hashlib.sha256(bb.model_bytes).hexdigest(),
                      "float_field_accuracy": bb.report["float_field_accuracy"],
                      "int8_field_accuracy": bb.report["int8_field_accuracy"]}))


if __name__ == "__main__":
    main(sys.argv[1:])
