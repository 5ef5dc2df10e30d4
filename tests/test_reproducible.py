"""Same numbers on every machine: a built-in preset's data and pretrained backbone are the same
bytes under every kernel path this machine can take (PyTorch's ATEN_CPU_CAPABILITY, 1 or 2
threads and CPUs, numpy's SIMD dispatch targets, OpenBLAS core types), and equal to the SHA-256
committed here; the pretraining recipe is Adam as torch.optim.Adam computes it; its result does
not depend on the number of worker threads."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# SHA-256 of every split of the task, and of the backbone's model file (docs/reproducibility.md)
EXPECTED = {
    "default": {"overrides": [],
                "task": "e49e3561ce4cafc1cc8dea0f00528cb3a770a5647b18bbdb5124ba16843c5574",
                "model": "d227eb91620720fbe2101103d2087d47847c6a42336ba4d579c24c7bb29935de"},
    "digits_quick": {"overrides": ["experiment=digits_quick"],
                     "task": "f9ae4d8a5b9522921bed760657f3920170d2497e9358399196b9ab1d548e10fc",
                     "model": "5f4f410689d28f72ad35200259b36321815035169048608e2af60b516bd23e84"},
    "fashion_scale": {"overrides": ["experiment=fashion_scale"],
                      "task": "dbd8e5d0f09b1c2dd46427e041637697df0c1e57008c225f0acc3894aeb87022",
                      "model": "d6d87849358d37951641d7e592a71f8496c92c28e5436416d40e2d32e42471f1"},
}


def _numpy_targets() -> str:
    """Every SIMD target numpy dispatches to on this machine (disabled: numpy's baseline runs)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__

    return " ".join(__cpu_dispatch__)


def kernel_paths() -> dict[str, tuple[dict, list[str]]]:
    """Name -> (environment, command prefix) of each kernel path to try."""
    x86 = platform.machine() in ("x86_64", "AMD64")
    one_cpu = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] if shutil.which("taskset") else []
    paths = {
        "as installed": ({}, []),
        "ATen default, 1 thread, 1 CPU, numpy baseline": (
            {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "NPY_DISABLE_CPU_FEATURES": _numpy_targets()},
            one_cpu),
        "ATen avx2, 2 threads": ({"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"}, []),
        "ATen avx512, numpy baseline": ({"ATEN_CPU_CAPABILITY": "avx512",
                                         "NPY_DISABLE_CPU_FEATURES": _numpy_targets()}, []),
    }
    if x86:  # OpenBLAS kernels older than this CPU's (DYNAMIC_ARCH builds honour the core type)
        paths["ATen avx2, 2 threads"][0]["OPENBLAS_CORETYPE"] = "Sandybridge"
        paths["ATen avx512, numpy baseline"][0]["OPENBLAS_CORETYPE"] = "Prescott"
    return paths


def probe(tmp_path: Path, overrides: list[str], env: dict, prefix: list[str]) -> dict:
    cache = tmp_path / f"cache-{len(list(tmp_path.iterdir()))}"
    full_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    full_env.update(env)
    r = subprocess.run([*prefix, sys.executable, str(ROOT / "tests" / "repro_probe.py"), str(cache), *overrides],
                       cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("preset", ["default", "digits_quick"])
def test_every_kernel_path_gives_the_committed_bytes(tmp_path, preset):
    want = EXPECTED[preset]
    seen = {name: probe(tmp_path, want["overrides"], env, prefix) for name, (env, prefix) in kernel_paths().items()}
    for name, got in seen.items():
        assert (got["task"], got["model"]) == (want["task"], want["model"]), (name, got)


def test_fashion_scale_backbone_under_another_kernel_path(tmp_path):
    """The largest preset once (about two minutes of pretraining), under a kernel path other than
    the machine's own."""
    env, prefix = kernel_paths()["ATen avx512, numpy baseline"]
    got = probe(tmp_path, EXPECTED["fashion_scale"]["overrides"], env, prefix)
    assert (got["task"], got["model"]) == (EXPECTED["fashion_scale"]["task"], EXPECTED["fashion_scale"]["model"])


@pytest.fixture(scope="module")
def tiny():
    """A width-4 digits backbone in the trainer's all-float format, drawn by fedtiny's init."""
    from fedtiny.config import compose
    from fedtiny.data import build_task
    from fedtiny.models.export import float_spec
    from fedtiny.models.float_train import init_params
    from fedtiny.models.nets import build_backbone

    cfg = compose(["experiment=digits_quick", "model.width=4"])
    task = build_task("digits", cfg.dataset)
    net = build_backbone(cfg.model, task.input_shape, task.num_classes)
    spec = float_spec(net, task.pretrain.x[:256], task.num_classes)
    init_params(spec, seed=3)
    return cfg, task, net, spec


def test_pretraining_is_adam_as_torch_computes_it(tiny):
    """Two epochs of shuffled batches of 20 (the last one 10; chunks of 16 and 4) from the same
    initial weights: the C gradients and the numpy Adam against torch.autograd and
    torch.optim.Adam in float64 over the same batches (order of summation aside). The weight
    decay is large enough that a wrongly scaled gradient would show despite Adam's scale
    invariance."""
    import copy

    import torch

    from fedtiny.models.export import float_spec, to_torch
    from fedtiny.models.float_train import fit
    from fedtiny.models.nets import to_nchw
    from fedtiny.trainer import Model

    cfg, task, net, spec0 = tiny
    n, batch, seed = 50, 20, 4
    xq = Model(spec0).quantize_input(task.pretrain.x[:n])
    y = torch.as_tensor(task.pretrain.y[:n], dtype=torch.long)
    ref = to_torch(spec0, copy.deepcopy(net)).double().train()
    opt = torch.optim.Adam(ref.parameters(), lr=0.01, weight_decay=0.05)
    x = (to_nchw(xq.astype(np.float64)).double() - spec0.input_zero_point) * float(np.float32(spec0.input_scale))
    order_rng = np.random.default_rng([seed, 0xADA])  # the recipe's sample order
    for _ in range(2):
        order = order_rng.permutation(n)
        for start in range(0, n, batch):
            idx = torch.as_tensor(order[start : start + batch])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    got = fit(copy.deepcopy(spec0), xq, task.pretrain.y[:n], epochs=2, lr=0.01, batch_size=batch,
              weight_decay=0.05, seed=seed)
    want = float_spec(ref.float(), task.pretrain.x[:256], task.num_classes)
    for g, w in zip(got.layers, want.layers):
        if g.has_params:
            np.testing.assert_allclose(g.weights, w.weights, rtol=0, atol=2e-5)
            np.testing.assert_allclose(g.bias, w.bias, rtol=0, atol=2e-5)
    moved = max(float(np.abs(g.weights - s.weights).max()) for g, s in zip(got.layers, spec0.layers) if g.has_params)
    assert moved > 0.03  # six Adam steps of lr 0.01 move the weights by about 0.06


def test_worker_threads_do_not_change_the_result(tiny):
    import copy

    from fedtiny.models.float_train import fit
    from fedtiny.trainer import Model
    from fedtiny.trainer.model_format import to_bytes

    _, task, _, spec0 = tiny
    xq = Model(spec0).quantize_input(task.pretrain.x)
    outs = {to_bytes(fit(copy.deepcopy(spec0), xq, task.pretrain.y, epochs=2, lr=0.01, batch_size=40,
                         weight_decay=1e-4, seed=5, workers=w)) for w in (1, 2, 3)}
    assert len(outs) == 1


def test_backbone_cache_key_holds_the_vendor_data(tmp_path):
    """Other vendor bytes under the same config get another cache entry."""
    from dataclasses import replace

    from fedtiny.config import compose, dataset_dict
    from fedtiny.data import build_task
    from fedtiny.data.base import Split
    from fedtiny.models.pretrain import get_backbone

    cfg = compose(["experiment=digits_quick", "model.pretrain_epochs=1"])
    task = build_task("digits", cfg.dataset)
    a = get_backbone(task, dataset_dict(cfg), cfg.model, cfg.seed, tmp_path, log=lambda *_: None)
    x = task.pretrain.x.copy()
    x[0, 0, 0, 0] += np.float32(0.125)
    other = replace(task, pretrain=Split(x, task.pretrain.y))
    b = get_backbone(other, dataset_dict(cfg), cfg.model, cfg.seed, tmp_path, log=lambda *_: None)
    assert a.path != b.path and len(list(tmp_path.iterdir())) == 2
