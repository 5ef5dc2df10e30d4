"""Write a demo CSV in the format ``fedtiny_csv.task`` reads: 12 devices (wearers), 3 channels,
four motion patterns. The first ``--vendor`` devices are the vendor's lab units; the field's
sensor is mounted differently (tilted, x and y swapped and scaled) and every device
has its own gain and noise: the shift that fine-tuning in the field is for.

    python -m fedtiny_csv.demo sensors.csv [--devices 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

PATTERNS = {"rest": 0.0, "walk": 1.8, "run": 3.0, "cycle": 1.1}  # dominant frequency (Hz) at 32 Hz sampling


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fedtiny_csv.demo", description="write a demo CSV time series")
    ap.add_argument("out", help="the CSV file to write")
    ap.add_argument("--devices", type=int, default=12)
    ap.add_argument("--segments", type=int, default=2, help="segments of each pattern per device")
    ap.add_argument("--rows", type=int, default=320, help="rows per segment (10 s at 32 Hz)")
    ap.add_argument("--vendor", type=int, default=4, help="the first devices: the vendor's (lab mounting)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["device", "label", "ax", "ay", "az"])
        for d in range(args.devices):
            gain = rng.uniform(0.85, 1.15, 3)
            noise = rng.uniform(0.05, 0.2)
            field = d >= args.vendor
            order = [p for p in PATTERNS for _ in range(args.segments)]
            for label in rng.permutation(order):
                t = np.arange(args.rows) / 32.0
                freq = PATTERNS[label] * rng.uniform(0.9, 1.1)
                phase = rng.uniform(0, 2 * np.pi, 3)
                amp = np.array([1.0, 0.6, 0.3]) * (0.1 if freq == 0 else 1.0 + 0.3 * (label == "run"))
                sig = amp * np.sin(2 * np.pi * freq * t[:, None] + phase) + 0.3 * (label == "cycle") * np.sin(
                    4 * np.pi * freq * t[:, None])
                if field:  # the field's mounting: tilted (gravity partly on x), x and y swapped and scaled
                    sig = sig[:, [1, 0, 2]] * np.array([1.3, 0.8, 1.0]) + np.array([0.4, 0.0, 0.9])
                else:
                    sig = sig + np.array([0.0, 0.0, 1.0])
                sig = sig * gain + rng.normal(0, noise, sig.shape)
                for row in sig:
                    w.writerow([f"d{d:02d}", label, *(f"{v:.4f}" for v in row)])
    print(f"wrote {args.out}: {args.devices} devices x {len(PATTERNS) * args.segments} segments x {args.rows} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
