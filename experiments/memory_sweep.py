"""Accuracy vs memory budget on the default task, with the memory PyTorch autograd needs for
the same update, side by side. One command:

    python experiments/memory_sweep.py                       # budgets 4 8 16 32 64 128 KiB
    python experiments/memory_sweep.py --budgets 8 32 --rounds 3 -- model.trainable_layers=5

Every budget is run once per precision set (``--precision-sets``, default ``float32``,
``float32,int8`` and ``int8``): the planner picks the best-scoring scheme among the schemes
in those precisions that fit. Rows where the float32 and int8 sets chose the same update
show the accuracy cost of int8 weights with QAS steps; the mixed set shows what int8 buys
when it lets a bigger update fit.

Each budget is the training arena every device may use (reserve_kb = 0: the budget is what is
left after inference buffers and stack). The backbone exports `model.trainable_layers=6` float
layers (depthwise conv, pointwise conv, pooling, flatten and the two FC layers), so schemes can
reach below the head. Writes memory_sweep.csv, memory_sweep.md and memory_sweep.png into
outputs/memory_sweep/<time>/ and prints the table.

PyTorch memory of a scheme: what autograd keeps for one sample — the float model's parameters
(all of them, as a PyTorch device would hold them), gradients and momentum of the updated tensors
(whole tensors: autograd has no channel subsets), and the tensors saved for backward (measured
with torch.autograd.graph.saved_tensors_hooks); the int8 prefix is run as float too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedtiny.config import compose
from fedtiny.errors import ConfigError
from fedtiny.engine.simulation import run_experiment
from fedtiny.client.context import RunContext
from fedtiny.models.nets import to_nchw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import write_table  # noqa: E402


def torch_update_bytes(net: torch.nn.Sequential, model, scheme, x: np.ndarray, momentum: bool) -> int:
    """Bytes PyTorch autograd holds to compute this scheme's update on one sample."""
    net = net.float()
    for p in net.parameters():
        p.requires_grad_(False)
    groups = [m for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.AdaptiveAvgPool2d,
                                              torch.nn.Flatten))]
    suffix = groups[model.first_trainable :]
    trained = 0
    for mod, u in zip(suffix, scheme.update):
        if u.weights != "none":
            mod.weight.requires_grad_(True)
            trained += mod.weight.numel()
        if u.bias:
            mod.bias.requires_grad_(True)
            trained += mod.bias.numel()
    saved = []

    def pack(t):  # every tensor autograd saves for backward
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(net(to_nchw(x[:1])), torch.zeros(1, dtype=torch.long))
    loss.backward()
    params = sum(p.numel() for p in net.parameters()) * 4
    return int(params + trained * 4 * (2 if momentum else 1) + sum(saved))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[4, 8, 16, 32, 64, 128])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--precision-sets", nargs="+", default=["float32", "float32,int8", "int8"],
                        help="comma-separated precisions the planner may choose from, one run per set and budget")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    out = Path("outputs/memory_sweep") / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kb in args.budgets:
        for pset in args.precision_sets:
            rows.append(run_one(kb, pset, args.rounds, overrides, out))
    write(out, rows)


def run_one(kb: float, pset: str, rounds: int, overrides: list[str], out: Path) -> dict:
    ov = ["model.trainable_layers=6", f"rounds={rounds}", "budget.memory.reserve_kb=0",
          f"budget.memory.sram_kb=[{kb}]", f"budget.memory.precisions=[{pset}]", "progress=false", *overrides]
    cfg = compose(ov)
    state = RunContext(cfg, log=print)
    row = {"budget_kib": kb, "precisions": pset, "scheme": "none fits", "precision": "", "arena_bytes": "",
           "torch_bytes": "", "torch_ratio": "", "initial_accuracy": "", "final_accuracy": "", "best_accuracy": ""}
    try:
        scheme, arena = state.scheme(float(kb))
    except ConfigError as err:
        print(f"{kb:g} KiB [{pset}]: {err}")
        return row
    summary = run_experiment(cfg, out / f"{kb:g}KiB-{pset.replace(',', '+')}", log=lambda *_: None)
    tb = torch_update_bytes(state.backbone.net, state.model, scheme, state.task.pretrain.x, cfg.client.momentum > 0)
    row.update({"scheme": scheme.name, "precision": scheme.precision, "arena_bytes": arena, "torch_bytes": tb,
                "torch_ratio": round(tb / arena, 1), "initial_accuracy": summary["initial_accuracy"],
                "final_accuracy": summary["final_accuracy"], "best_accuracy": summary["best_accuracy"]})
    print(f"{kb:g} KiB [{pset}]: {scheme.name}, arena {arena:,} B (PyTorch {tb:,} B, {tb / arena:.1f}x), "
          f"accuracy {summary['initial_accuracy']:.3f} -> {summary['final_accuracy']:.3f}")
    return row


def write(out: Path, rows: list[dict]) -> None:
    write_table(out, "memory_sweep", rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["arena_bytes"] != ""]
    sets = list(dict.fromkeys(r["precisions"] for r in rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for pset in sets:
        mine = [r for r in ok if r["precisions"] == pset]
        if not mine:
            continue
        a1.plot([r["budget_kib"] for r in mine], [r["final_accuracy"] for r in mine], marker="o",
                label=f"after federated rounds ({pset})")
        for r in mine:
            a1.annotate(r["scheme"], (r["budget_kib"], r["final_accuracy"]), fontsize=6, rotation=20)
    if ok:
        a1.axhline(ok[0]["initial_accuracy"], linestyle=":", color="grey", label="pretrained int8")
    a1.set_xscale("log", base=2)
    a1.set_xlabel("training arena budget (KiB)")
    a1.set_ylabel("server accuracy (held-out field data)")
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    x = np.arange(len(ok))
    a2.bar(x - 0.2, [r["arena_bytes"] / 1024 for r in ok], 0.4, label="fedtiny arena (exact)")
    a2.bar(x + 0.2, [r["torch_bytes"] / 1024 for r in ok], 0.4, label="PyTorch autograd")
    a2.set_xticks(x, [f"{r['budget_kib']:g}\n{'i8' if r['precision'] == 'int8' else 'f32'}" for r in ok], fontsize=6)
    a2.set_xlabel("budget (KiB) and chosen precision")
    a2.set_ylabel("KiB for the chosen update")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "memory_sweep.png")
    print(f"results in {out}")


if __name__ == "__main__":
    sys.exit(main())
