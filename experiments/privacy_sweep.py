"""Accuracy vs privacy budget epsilon on the default task: no DP (epsilon = inf), then central
client-level DP with target epsilon 8, 4, 2 and 1 (delta 1e-5, PLD accountant), the noise
multiplier for each computed before its run. One command:

    python experiments/privacy_sweep.py                     # 10 rounds each, about 2 minutes
    python experiments/privacy_sweep.py --epsilons 8 1 --rounds 5 -- privacy.clip=0.2

Each device clips its update (after quantization, in C) to privacy.clip; the server adds
N(0, (z clip)^2) to the sum of updates (fedtiny.budgets.privacy). Writes privacy_sweep.csv,
privacy_sweep.md and privacy_sweep.png (accuracy vs epsilon, noise multiplier per point) into
outputs/privacy_sweep/<time>/ and prints the table, with the epsilon the same noise would give
without sampling amplification.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from fedtiny.config import compose
from fedtiny.engine.simulation import run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import write_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8, 4, 2, 1])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clip", type=float, default=0.5)
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    out = Path("outputs/privacy_sweep") / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for eps in [math.inf, *args.epsilons]:
        dp = [] if math.isinf(eps) else ["privacy=central", f"privacy.target_epsilon={eps}",
                                         f"privacy.clip={args.clip}"]
        name = "no-dp" if math.isinf(eps) else f"eps{eps:g}"
        cfg = compose([f"rounds={args.rounds}", "progress=false", *dp, *overrides])
        s = run_experiment(cfg, out / name, log=lambda *_: None)
        p = s["privacy"]
        rnd = lambda v: round(v, 3) if isinstance(v, float) and math.isfinite(v) else v  # noqa: E731
        rows.append({"target_epsilon": eps, "epsilon": rnd(p.get("epsilon", math.inf)),
                     "noise_multiplier": round(p.get("noise_multiplier", 0.0), 4), "clip": p.get("clip", ""),
                     "q": p.get("q", ""), "epsilon_without_amplification": rnd(p.get("epsilon_without_amplification", "")),
                     "epsilon_flower_accountant": rnd(p.get("epsilon_flower_accountant", "")),
                     "initial_accuracy": s["initial_accuracy"], "final_accuracy": s["final_accuracy"],
                     "best_accuracy": s["best_accuracy"]})
        print(f"{name}: z {rows[-1]['noise_multiplier']}, epsilon {rows[-1]['epsilon']}, accuracy "
              f"{s['initial_accuracy']:.3f} -> {s['final_accuracy']:.3f}")
    write_table(out, "privacy_sweep", rows)
    plot(out, rows)
    print(f"results in {out}")


def plot(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    dp = [r for r in rows if not math.isinf(r["target_epsilon"])]
    ax.plot([r["epsilon"] for r in dp], [r["final_accuracy"] for r in dp], marker="o", label="central DP")
    for r in dp:
        ax.annotate(f"z={r['noise_multiplier']:.2f}", (r["epsilon"], r["final_accuracy"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    nodp = [r for r in rows if math.isinf(r["target_epsilon"])]
    if nodp:
        ax.axhline(nodp[0]["final_accuracy"], color="green", linestyle="--", label="no DP (epsilon = inf)")
        ax.axhline(nodp[0]["initial_accuracy"], color="grey", linestyle=":", label="pretrained int8")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon after the rounds (delta 1e-5, PLD)")
    ax.set_ylabel("server accuracy after the rounds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "privacy_sweep.png")


if __name__ == "__main__":
    sys.exit(main())
