"""``fedtiny report DIR``: one table and the budget plots of a sweep.

DIR is a Hydra multirun directory (``fedtiny -m ...`` writes ``multirun/<date>/<time>/<n>/``) or
any directory holding run directories (each with the ``config.yaml`` a run writes first). A run
with ``summary.json`` is reported; a run without one failed (its ``error.txt`` says why, when the
sweep recorded it), and a run whose summary says ``status: failed`` (it aggregated no update) or
cannot be read is listed as failed too: failed runs stay off the table and the Pareto front. A
run in which every device declined (``status: declined``: its energy budget affords no epoch) is
a row of the table (``trained`` False) but never on the Pareto front. Writes into DIR:

* ``report.csv`` / ``report.md``: per run the swept settings, the memory (training arena of the
  scheme the budget chose, and the budget), epsilon, energy per device per round, uplink bytes, accuracy;
* ``report_memory.png``, ``report_epsilon.png``, ``report_energy.png``: accuracy vs each budget;
* ``report_pareto.png``: the runs no other run beats on all of accuracy (higher), memory, epsilon
  and energy per round (lower), highlighted in the three pairwise views.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import yaml

from fedtiny.budgets.energy import pareto_front


class ReportError(ValueError):
    pass


def find_runs(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra"},
                  key=lambda p: (len(p.parts), [int(s) if s.isdigit() else s for s in p.parts]))


def _row(run: Path, root: Path, s: dict) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    schemes = s.get("memory_schemes") or {}
    arena = min((v["arena_bytes"] for v in schemes.values()), default=s.get("client_arena_bytes"))
    priv = s.get("privacy") or {"mode": "off"}
    eps = priv.get("epsilon", math.inf) if priv.get("mode") != "off" else math.inf
    return {
        "run": str(run.relative_to(root)), "board": cfg.get("board", {}).get("name", ""),
        "sram_kib": ",".join(f"{v:g}" for v in cfg["budget"]["memory"]["sram_kb"]) or "none",
        "scheme": ",".join(sorted({v["scheme"] for v in schemes.values()})) or "all",
        "arena_bytes": arena, "bits": cfg["codec"]["bits"], "privacy": priv.get("mode", "off"),
        "noise_multiplier": round(priv.get("noise_multiplier", 0.0), 4), "epsilon": eps,
        "energy_budget_mj": cfg["energy"]["budget_mj"], "energy_per_round_mj": s.get("energy_per_device_round_mj"),
        "declined": s.get("declined_total", 0), "bytes_up": s.get("bytes_up_total"), "rounds": s["rounds"],
        "initial_accuracy": s["initial_accuracy"], "final_accuracy": s["final_accuracy"],
        "best_accuracy": s["best_accuracy"], "failed_clients": s.get("failed_total", 0),
        "trained": s.get("status", "ok") == "ok",  # False: every device declined (budget); off the front
    }


def build(root: Path) -> tuple[list[dict], list[dict]]:
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    runs = find_runs(root)
    if not runs:
        raise ReportError(f"no runs in {root}: expected run directories with config.yaml (as `fedtiny -m ...` "
                          "writes under multirun/<date>/<time>/)")
    rows, failed = [], []
    for run in runs:
        name = str(run.relative_to(root))
        err = (run / "error.txt").read_text().strip() if (run / "error.txt").exists() else ""
        if err:
            failed.append({"run": name, "reason": err.splitlines()[-1]})
        elif not (run / "summary.json").exists():
            failed.append({"run": name, "reason": "no summary.json (the run did not finish)"})
        else:
            try:
                summary = json.loads((run / "summary.json").read_text())
                if not isinstance(summary, dict):
                    raise ValueError("not a JSON object")
                status = summary.get("status", "ok")
                if status not in ("ok", "declined"):  # finished, but clients failed: nothing aggregated
                    failed.append({"run": name, "reason": summary.get("status_reason") or f"status: {status}"})
                    continue
                rows.append(_row(run, root, summary))
            except (ValueError, KeyError, TypeError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError
                failed.append({"run": name, "reason": f"unreadable results ({type(exc).__name__}: {exc})"})
    return rows, failed


def write(root: Path, rows: list[dict], failed: list[dict]) -> None:
    root = Path(root)
    if rows:
        keys = list(rows[0])
        with open(root / "report.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        mask = _pareto(rows)
        lines = ["| " + " | ".join(keys) + " | pareto |", "|" + "---|" * (len(keys) + 1)]
        lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + f" | {'yes' if m else ''} |"
                  for r, m in zip(rows, mask)]
    else:
        lines, mask = ["(no finished runs)"], []
    if failed:
        lines += ["", f"**{len(failed)} failed run(s)**", ""] + [f"- `{f['run']}`: {f['reason']}" for f in failed]
    (root / "report.md").write_text("\n".join(lines) + "\n")
    if rows:
        _plots(root, rows, mask)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def _objectives(rows: list[dict]) -> np.ndarray:
    energy = [r["energy_per_round_mj"] if r["energy_per_round_mj"] is not None else math.inf for r in rows]
    return np.array([[r["final_accuracy"], r["arena_bytes"], r["epsilon"], e] for r, e in zip(rows, energy)], float)


def _pareto(rows: list[dict]) -> np.ndarray:
    """Runs no other run beats; runs that trained nothing (every device declined) are left off
    (their flat curve would sit on the front by its low energy alone)."""
    trained = np.array([r.get("trained", True) for r in rows], bool)
    mask = np.zeros(len(rows), bool)
    if trained.any():
        pts = _objectives([r for r, t in zip(rows, trained) if t])
        pts = np.where(np.isinf(pts), 1e300, pts)  # epsilon = inf (no DP) is the worst privacy
        mask[trained] = pareto_front(pts, [True, False, False, False])
    return mask


def _plots(root: Path, rows: list[dict], mask: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = _objectives(rows)
    eps_plot = np.where(np.isinf(pts[:, 2]), np.nan, pts[:, 2])
    axes_def = [("memory", pts[:, 1] / 1024, "training arena (KiB)"), ("epsilon", eps_plot, "epsilon (finite only)"),
                ("energy", pts[:, 3], "energy per device per round (mJ)")]
    for name, x, label in axes_def:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.scatter(x, pts[:, 0], c="tab:blue", s=18)
        ax.set_xlabel(label)
        ax.set_ylabel("server accuracy after the rounds")
        ax.grid(alpha=0.3)
        ax.set_title(f"accuracy vs {name} ({len(rows)} runs)")
        fig.tight_layout()
        fig.savefig(root / f"report_{name}.png")
        plt.close(fig)
    fig, axs = plt.subplots(1, 3, figsize=(15, 4), dpi=120)
    for ax, (_, x, label) in zip(axs, axes_def):
        ax.scatter(x[~mask], pts[~mask, 0], c="lightgrey", s=16, label="dominated")
        ax.scatter(x[mask], pts[mask, 0], c="tab:red", s=24, label="Pareto front (all 3 budgets + accuracy)")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axs[0].legend(fontsize=7)
    fig.suptitle("Pareto front across memory, privacy and energy")
    fig.tight_layout()
    fig.savefig(root / "report_pareto.png")
    plt.close(fig)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="fedtiny report", description="a table and budget/Pareto plots of a sweep "
                                 "(report.csv, report.md, report_*.png written into DIR); runs that failed or "
                                 "aggregated nothing are listed apart and left off the Pareto front")
    ap.add_argument("dir", metavar="DIR", help="a multirun directory, e.g. multirun/<date>/<time>")
    root = Path(ap.parse_args(argv).dir)
    try:
        rows, failed = build(root)
    except ReportError as err:
        print(f"fedtiny report: {err}", file=sys.stderr)
        return 2
    write(root, rows, failed)
    print((root / "report.md").read_text())
    print(f"{len(rows)} runs reported, {len(failed)} failed; report.csv, report.md and report_*.png in {root}")
    return 0
