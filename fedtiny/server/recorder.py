"""Run results: one metrics row per round, a summary, and an accuracy plot.

``metrics.csv`` columns: round (0 = the pretrained model before any round), accuracy and loss
of the global model on the server's held-out field data, fed_accuracy/fed_loss (federated
evaluation on the clients' test splits), train_loss/train_accuracy (example-weighted means
reported by the clients), declined (devices whose energy budget could not afford one epoch),
energy_mj_mean and its compute/radio/idle parts (mean over the devices contacted in the round:
compute from the trainer's MACs, 0 for a device that declined; radio from its exact bytes;
sleep for the rest of the round period; board profile in conf/board/), epsilon (cumulative privacy epsilon after the round, DP runs only),
update_norm_max (largest L2 norm of a decoded update this round: the clipping bound in DP runs),
ef_residual_norm (example-weighted mean over the clients of the norm
of the error-feedback residual each carried into its update; 0 without error feedback),
participating (updates aggregated), on_board (of those, trained on a board), failed (clients that raised or
timed out), rejected (updates that failed validation), contributors_min/max (over every output
channel of every trainable tensor: how many aggregated updates changed it; per tensor in
``contributors.csv``), bytes_up/bytes_down (exact serialized size of every message's
RecordDict, train and evaluate, all clients), split into *_payload (parameter data: float32
values sent down, encoded scales and codes sent up) and *_overhead (the rest: codec headers,
array and record framing, keys, metrics, config), wall_s (seconds the round took; the only
column that differs between runs with the same seed). ``traffic.csv`` has the same split per
client, message and direction.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = ["round", "accuracy", "loss", "fed_accuracy", "fed_loss", "train_loss", "train_accuracy", "ef_residual_norm",
           "epsilon", "update_norm_max", "participating", "on_board", "declined", "energy_mj_mean", "energy_compute_mj_mean",
           "energy_radio_mj_mean", "energy_idle_mj_mean",
           "failed", "rejected", "contributors_min", "contributors_max", "bytes_up", "bytes_down", "bytes_up_payload",
           "bytes_up_overhead", "bytes_down_payload", "bytes_down_overhead", "wall_s"]
PER_ROUND_FILES = ("traffic.csv", "contributors.csv", "links.csv")  # appended after each round
BYTE_COLUMNS = ("bytes_up", "bytes_down", "bytes_up_payload", "bytes_up_overhead", "bytes_down_payload",
                "bytes_down_overhead")


@dataclass
class RoundLog:
    """What the strategy saw in the current round (filled by the strategy, read by the recorder)."""

    server_round: int = 0
    row: dict = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)

    def start(self, server_round: int) -> None:
        self.server_round = server_round
        self.tensor_counts: dict = {}
        self.traffic: list[tuple] = []
        self.computed: dict[int, tuple[float, float]] = {}
        self.row = {k: 0 for k in ("participating", "on_board", "failed", "rejected", "declined", *BYTE_COLUMNS)}

    def compute(self, pid: int, mj: float, seconds: float) -> None:
        self.computed[pid] = (mj, seconds)

    def declined(self, pid: int) -> None:
        self.row["declined"] += 1
        self.failures.append({"round": self.server_round, "stage": "train", "partition": pid, "what": "declined",
                              "reason": "energy budget: cannot afford one epoch"})

    def _bytes(self, direction: str, stage: str, pid: int, payload: int, overhead: int) -> None:
        self.row[f"bytes_{direction}"] += payload + overhead
        self.row[f"bytes_{direction}_payload"] += payload
        self.row[f"bytes_{direction}_overhead"] += overhead
        self.traffic.append((pid, stage, direction, payload, overhead))

    def sent(self, stage: str, pids: list[int], payload: int, overhead: int) -> None:
        """The same message to every pid: `payload` parameter bytes and `overhead` other bytes each."""
        for pid in pids:
            self._bytes("down", stage, pid, payload, overhead)

    def received(self, kind: str, pids: list[int], failed: list, rejected: list,
                 traffic: list[tuple[int, int, int]]) -> None:
        for pid, payload, overhead in traffic:
            self._bytes("up", kind, pid, payload, overhead)
        if kind == "train":
            self.row["participating"] = len(pids)
        self.row["failed"] = self.row.get("failed", 0) + len(failed)
        self.row["rejected"] = self.row.get("rejected", 0) + len(rejected)
        for what, items in (("failed", failed), ("rejected", rejected)):
            for pid, reason in items:
                self.failures.append({"round": self.server_round, "stage": kind, "partition": pid, "what": what,
                                      "reason": short_reason(reason)})

    def contributors(self, counts: dict) -> None:
        self.row["contributors_min"] = int(min(int(c.min()) for c in counts.values()))
        self.row["contributors_max"] = int(max(int(c.max()) for c in counts.values()))
        self.tensor_counts = {k: (int(c.min()), round(float(c.mean()), 3), int(c.max())) for k, c in counts.items()}

    def train_metrics(self, metrics) -> None:
        if metrics is not None:
            self.row["train_loss"] = float(metrics.get("train-loss", float("nan")))
            self.row["train_accuracy"] = float(metrics.get("train-accuracy", float("nan")))
            self.row["ef_residual_norm"] = float(metrics.get("ef-residual-norm", float("nan")))

    def federated_eval(self, metrics) -> None:
        if metrics is not None:
            self.row["fed_loss"] = float(metrics.get("loss", float("nan")))
            self.row["fed_accuracy"] = float(metrics.get("accuracy", float("nan")))


def short_reason(reason: object, limit: int = 300) -> str:
    """The last meaningful line of an error (a remote traceback ends with the exception)."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(reason)).splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:limit]


class RunRecorder:
    """Writes metrics.csv as rounds finish, then summary.json and accuracy.png."""

    def __init__(self, out_dir: Path, rounds: int, progress: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.rounds = rounds
        self.log = RoundLog()
        self.rows: list[dict] = []
        self.energy = None  # (fedtiny.budgets.energy.Board, round period s): per-round energy columns
        self.energy_totals: list[float] = []
        self.epsilons: list[float] = []  # cumulative privacy epsilon after each round (DP runs)
        self.t0 = self.t_round = time.perf_counter()
        self.client_rounds = 0  # training messages answered (aggregated, failed, rejected or declined)
        self.csv_path = self.out_dir / "metrics.csv"
        with open(self.csv_path, "w", newline="") as fh:
            csv.writer(fh).writerow(COLUMNS)
        self._progress = None
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.description}"))
            self._task = self._progress.add_task("", total=rounds)
            self._progress.start()
        self.log.start(0)

    def server_eval(self, server_round: int, accuracy: float, loss: float) -> None:
        now = time.perf_counter()
        row = {k: "" for k in COLUMNS}
        row.update(self.log.row)
        row.update(round=server_round, accuracy=round(accuracy, 6), loss=round(loss, 6),
                   wall_s=round(now - self.t_round, 3))
        if self.energy is not None and self.log.traffic:
            self._energy(row)
        if self.epsilons:
            row["epsilon"] = round(self.epsilons[server_round - 1], 6) if server_round > 0 else 0.0
        for key in ("fed_accuracy", "fed_loss", "train_loss", "train_accuracy", "ef_residual_norm"):
            if isinstance(row[key], float):
                row[key] = round(row[key], 6)
        self.rows.append(row)
        with open(self.csv_path, "a", newline="") as fh:
            csv.writer(fh).writerow([row[c] for c in COLUMNS])
        if self.log.traffic:
            self._append("traffic.csv", ["round", "partition", "stage", "direction", "payload_bytes", "overhead_bytes"],
                         [[server_round, *t] for t in sorted(self.log.traffic)])
        if self.log.tensor_counts:
            self._append("contributors.csv", ["round", "tensor", "min", "mean", "max"],
                         [[server_round, key, *c] for key, c in sorted(self.log.tensor_counts.items())])
        self.t_round = now
        self.log.start(server_round + 1)
        if server_round > 0:  # the run's log file (with a Hydra run: run.log) gets a line per round
            logging.getLogger("fedtiny.file").info(
                f"round {server_round}/{self.rounds}: accuracy {accuracy:.4f}, {row['participating']} aggregated, "
                f"{row['failed']} failed, {row['rejected']} rejected, up {row['bytes_up']:,} B, down "
                f"{row['bytes_down']:,} B, {row['wall_s']:.2f} s")
        if server_round > 0:
            self.client_rounds += sum(int(row[k] or 0) for k in ("participating", "failed", "rejected", "declined"))
        if self._progress is not None:
            rate = self.client_rounds / max(now - self.t0, 1e-9)
            status = f"accuracy {accuracy:.3f}  failed {row['failed']}  {rate:,.1f} client-rounds/s"
            self._progress.update(self._task, completed=server_round, description=status)

    def links(self, server_round: int, rows: list[list]) -> None:
        """The boards' link rows of a round (fedtiny.engine.simulation.LinkMeter) into links.csv."""
        from fedtiny.devices.meter import LINK_COLUMNS

        if rows:
            self._append("links.csv", ["round", *LINK_COLUMNS], [[server_round, *r] for r in rows])

    def state(self) -> dict:
        """What a checkpoint keeps of the recorder after a complete round (JSON)."""
        files = {name: (self.out_dir / name).stat().st_size for name in PER_ROUND_FILES
                 if (self.out_dir / name).exists()}
        return {"rows": self.rows, "failures": self.log.failures, "energy_totals": self.energy_totals,
                "client_rounds": self.client_rounds, "files": files}

    def restore(self, state: dict) -> None:
        """Continue after the checkpointed round: metrics.csv rewritten from its rows, the
        per-round CSV files cut back to their size then (rows of a round in progress go)."""
        self.rows = [dict(r) for r in state["rows"]]
        with open(self.csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            w.writerows([r[c] for c in COLUMNS] for r in self.rows)
        for name in PER_ROUND_FILES:
            path, size = self.out_dir / name, state["files"].get(name)
            if size is None:
                path.unlink(missing_ok=True)
            elif not path.exists() or path.stat().st_size < size:
                raise ValueError(f"{name} is shorter than when the checkpoint was written: it cannot be continued")
            else:
                os.truncate(path, size)
        self.log.failures = [dict(f) for f in state["failures"]]
        self.energy_totals = list(state["energy_totals"])
        self.client_rounds = int(state["client_rounds"])
        done = int(self.rows[-1]["round"])
        self.log.start(done + 1)
        if self._progress is not None:
            self._progress.update(self._task, completed=done, description="resumed")

    def _append(self, name: str, header: list[str], rows: list[list]) -> None:
        """Append rows to a per-round CSV of the run directory, writing the header first."""
        path = self.out_dir / name
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(header)
            w.writerows(rows)

    def _energy(self, row: dict) -> None:
        """Per device the server contacted this round: reported compute energy (0 if it declined
        or failed) + radio energy of its exact bytes this round + sleep for the rest of the round
        period (fedtiny.budgets.energy)."""
        from fedtiny.budgets.energy import radio_mj, radio_seconds

        board, period = self.energy
        parts = []
        for pid in sorted({t[0] for t in self.log.traffic}):
            mj, seconds = self.log.computed.get(pid, (0.0, 0.0))
            up = sum(p + o for q, _, d, p, o in self.log.traffic if q == pid and d == "up")
            down = sum(p + o for q, _, d, p, o in self.log.traffic if q == pid and d == "down")
            radio = radio_mj(board, up, down)
            idle = max(0.0, period - seconds - radio_seconds(board, up, down)) * board.sleep_mw
            parts.append((mj + radio + idle, mj, radio, idle))
        means = [sum(p[i] for p in parts) / len(parts) for i in range(4)]
        for key, value in zip(("energy_mj_mean", "energy_compute_mj_mean", "energy_radio_mj_mean",
                               "energy_idle_mj_mean"), means):
            row[key] = round(value, 4)
        self.energy_totals.extend(p[0] for p in parts)

    def close(self) -> None:
        """Stop the progress display (idempotent; also called when a run fails)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def finish(self, summary: dict) -> dict:
        self.close()
        rows = self.rows
        out = {
            "initial_accuracy": rows[0]["accuracy"] if rows else None,
            "final_accuracy": rows[-1]["accuracy"] if rows else None,
            "best_accuracy": max((r["accuracy"] for r in rows), default=None),
            "final_fed_accuracy": rows[-1]["fed_accuracy"] if rows else None,
            "rounds": len(rows) - 1,
            **{f"{k}_total": int(sum(int(r[k] or 0) for r in rows)) for k in BYTE_COLUMNS},
            "failed_total": int(sum(int(r["failed"] or 0) for r in rows)),
            "rejected_total": int(sum(int(r["rejected"] or 0) for r in rows)),
            "aggregated_total": int(sum(int(r["participating"] or 0) for r in rows[1:])),
            "wall_s": round(time.perf_counter() - self.t0, 3),
            "client_rounds_per_s": round(self.client_rounds / max(time.perf_counter() - self.t0, 1e-9), 2),
            "failures": self.log.failures,
            "declined_total": int(sum(int(r["declined"] or 0) for r in rows)),
            "energy_total_mj": round(sum(self.energy_totals), 3),
            "energy_per_device_round_mj": round(sum(self.energy_totals) / max(1, len(self.energy_totals)), 3),
        }
        links = link_totals(self.out_dir / "links.csv")
        if links:
            out["links"] = links
        out.update(summary)
        out["status"], out["status_reason"] = "ok", ""
        if out["rounds"] > 0 and out["aggregated_total"] == 0:
            # every device declining is what an energy budget that affords no epoch does: a result
            # of a budget sweep, not an error, but still nothing trained
            declined_only = out["declined_total"] > 0 and out["failed_total"] == out["rejected_total"] == 0
            out["status"] = "declined" if declined_only else "failed"
            out["status_reason"] = failure_reason(out)
        (self.out_dir / "summary.json").write_text(json.dumps(out, indent=2))
        plot_accuracy(rows, self.out_dir / "accuracy.png", summary.get("title", ""))
        return out


def link_totals(path: Path) -> dict:
    """The boards' links over the run (``links.csv``), per kind of link: board-rounds, requests,
    frame bytes each way; over BLE also ATT operations, LL packets, bytes on air, connection
    events, radio time and modelled radio energy (totals, and the mean per board-round)."""
    if not path.exists():
        return {}
    out: dict = {}
    for r in csv.DictReader(open(path)):
        t = out.setdefault(r["link"], {"board_rounds": 0})
        t["board_rounds"] += 1
        for key, value in r.items():
            if key in ("round", "partition", "link", "mtu", "data_length") or value == "":
                continue
            t[key] = t.get(key, 0) + (float(value) if "." in value else int(value))
    for t in out.values():
        for key in ("uart_115200_ms", "radio_ms", "radio_on_ms", "radio_mj"):
            if key in t:
                t[key] = round(t[key], 6)
        if "radio_mj" in t:
            t["radio_mj_per_board_round"] = round(t["radio_mj"] / t["board_rounds"], 6)
    return out


def failure_reason(summary: dict) -> str:
    """One line saying why a run aggregated nothing: counts and the most common reason."""
    from collections import Counter

    reasons = Counter(f"{f['what']}: {f['reason']}" for f in summary.get("failures", []) if f.get("stage") == "train")
    common = f"; most common: {reasons.most_common(1)[0][0]}" if reasons else ""
    return (f"no update was aggregated in {summary['rounds']} round(s) ({summary['failed_total']} client failures, "
            f"{summary['rejected_total']} rejected updates, {summary.get('declined_total', 0)} declined{common})")


def plot_accuracy(rows: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    rounds = [r["round"] for r in rows]
    ax.plot(rounds, [r["accuracy"] for r in rows], marker="o", label="server (held-out field data)")
    fed = [(r["round"], r["fed_accuracy"]) for r in rows if r["fed_accuracy"] != ""]
    if fed:
        ax.plot(*zip(*fed), marker="s", linestyle="--", label="federated (clients' test splits)")
    ax.axhline(rows[0]["accuracy"], color="grey", linewidth=0.8, linestyle=":", label="pretrained int8 backbone")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
