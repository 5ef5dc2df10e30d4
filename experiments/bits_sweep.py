"""Accuracy vs bits per update value on the default task: float32, then 8, 4, 2 and 1 bits
with and without error feedback, the same rounds and seed for every run. One command:

    python experiments/bits_sweep.py                      # 10 rounds each, about 2 minutes
    python experiments/bits_sweep.py --bits 8 1 --rounds 3 -- codec.per_channel=false

Every device sends, per trained tensor, w_local - w_global encoded by the C encoder (per-channel
scales for weights, unbiased stochastic rounding; see ft_codec.h); the downlink stays float32
unless overridden (codec.downlink_bits=8). Bytes are exact (serialized RecordDicts): the
uplink payload is the encoded scales and codes, overhead is headers, framing, keys, metrics and
config. Writes bits_sweep.csv, bits_sweep.md and bits_sweep.png (accuracy vs total bytes, and
vs uplink payload) into outputs/bits_sweep/<time>/, prints the table and the best uplink
compression ratio against float32 at an accuracy loss of at most one point.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fedtiny.config import compose
from fedtiny.engine.simulation import run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import write_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2, 1])
    parser.add_argument("--rounds", type=int, default=10)
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    out = Path("outputs/bits_sweep") / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    runs = [(32, False)] + [(b, ef) for b in args.bits for ef in (False, True)]
    rows = []
    for bits, ef in runs:
        name = f"{bits}bit" + ("-ef" if ef else "")
        cfg = compose([f"rounds={args.rounds}", f"codec.bits={bits}", f"codec.error_feedback={str(ef).lower()}",
                       "progress=false", *overrides])
        s = run_experiment(cfg, out / name, log=lambda *_: None)
        rows.append({"bits": bits, "error_feedback": ef, "final_accuracy": s["final_accuracy"],
                     "best_accuracy": s["best_accuracy"], "up_payload_bytes": s["bytes_up_payload_total"],
                     "up_overhead_bytes": s["bytes_up_overhead_total"], "down_bytes": s["bytes_down_total"],
                     "total_bytes": s["bytes_up_total"] + s["bytes_down_total"]})
        print(f"{name}: accuracy {s['initial_accuracy']:.3f} -> {s['final_accuracy']:.3f}, uplink payload "
              f"{s['bytes_up_payload_total']:,} B, total {rows[-1]['total_bytes']:,} B")
    base = rows[0]
    for r in rows:
        r["up_payload_ratio"] = round(base["up_payload_bytes"] / r["up_payload_bytes"], 2)
    write_table(out, "bits_sweep", rows)
    ok = [r for r in rows if r["final_accuracy"] >= base["final_accuracy"] - 0.01]
    best = max(ok, key=lambda r: r["up_payload_ratio"])
    print(f"best uplink compression at <= 1 point accuracy loss: {best['bits']} bit"
          f"{' with error feedback' if best['error_feedback'] else ''}, {best['up_payload_ratio']}x smaller payload "
          f"than float32 (accuracy {best['final_accuracy']:.3f} vs {base['final_accuracy']:.3f})")
    plot(out, rows)
    print(f"results in {out}")


def plot(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for ax, key, label in ((axes[0], "total_bytes", "total bytes (up + down, all clients, all rounds)"),
                           (axes[1], "up_payload_bytes", "uplink payload bytes (encoded updates)")):
        for ef, marker in ((False, "o"), (True, "s")):
            mine = [r for r in rows if r["error_feedback"] == ef]
            ax.plot([r[key] for r in mine], [r["final_accuracy"] for r in mine], marker=marker, linestyle="",
                    label="with error feedback" if ef else "without error feedback")
            for r in mine:
                ax.annotate(f"{r['bits']}b", (r[key], r["final_accuracy"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.axhline(rows[0]["final_accuracy"] - 0.01, color="grey", linestyle=":", label="float32 - 1 point")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("server accuracy after the rounds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "bits_sweep.png")


if __name__ == "__main__":
    sys.exit(main())
