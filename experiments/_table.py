"""Shared output of the experiment scripts: one table as CSV and Markdown (printed too)."""

from __future__ import annotations

import csv
from pathlib import Path


def write_table(out: Path, name: str, rows: list[dict]) -> None:
    keys = list(rows[0])
    with open(out / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
