"""fedtiny's default experiment vs a plain Flower + PyTorch implementation of the same
fine-tuning: same data, devices, rounds, local epochs, batch size, SGD settings and initial
model. The plain version is what one would write without fedtiny: Flower's stock FedAvg, and
clients that train the float head in PyTorch through the frozen float backbone (re-run every
step, as usual in PyTorch). fedtiny's clients run the int8 backbone once per device and train
the head with the C trainer. Prints one table: per job and implementation, accuracy, wall time,
the ratio to fedtiny, client-rounds per second and RAM per simulated device::

    python benchmarks/federated_vs_flower_torch.py [--ray] [--fleet] [overrides...]   # e.g. rounds=5

Jobs: the default experiment and ``experiment=fashion_scale``; ``--fleet`` adds
``experiment=fashion_fleet`` (1,000 devices x 100 rounds, fedtiny only), ``--ray`` fedtiny on
Flower's Ray engine.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fedtiny.config import compose, num_devices
from fedtiny.client.context import run_context
from fedtiny.engine.simulation import run_experiment
from fedtiny.server.prepare import prepare_output
from fedtiny.models.nets import to_nchw

HEAD = 3  # Linear, ReLU, Linear: the two trainable layers of the default model


def plain_apps(cfg_json: str, result: dict) -> tuple[ServerApp, ClientApp]:
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        st = run_context(cfg_json)
        c = st.cfg.client
        data = st.task.clients[int(context.node_config["partition-id"])].train
        net = copy.deepcopy(st.backbone.net)
        head = net[-HEAD:]
        head.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        for p in net[:-HEAD].parameters():
            p.requires_grad_(False)
        opt = torch.optim.SGD(head.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        x, y = to_nchw(data.x), torch.as_tensor(data.y)
        gen = torch.Generator().manual_seed(int(context.node_config["partition-id"]) * 1000 + int(msg.content["config"]["server-round"]))
        loss = torch.zeros(())
        for _ in range(c.epochs):
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(y), c.batch_size):
                idx = order[start : start + c.batch_size]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
                loss.backward()
                opt.step()
        metrics = MetricRecord({"num-examples": len(y), "train-loss": float(loss)})
        return Message(RecordDict({"arrays": ArrayRecord(head.state_dict()), "metrics": metrics}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        st = run_context(cfg_json)
        net = copy.deepcopy(st.backbone.net).eval()
        xt, yt = to_nchw(st.task.server_test.x), st.task.server_test.y
        accuracy = {}

        def evaluate_fn(server_round: int, arrays: ArrayRecord):
            net[-HEAD:].load_state_dict(arrays.to_torch_state_dict())
            with torch.no_grad():
                accuracy[server_round] = float((net(xt).argmax(1).numpy() == yt).mean())
            return MetricRecord({"accuracy": accuracy[server_round]})

        n = num_devices(st.cfg)
        k = int(st.cfg.clients_per_round) or n  # the same number of devices per round as fedtiny
        FedAvg(fraction_train=k / n, fraction_evaluate=0.0, min_train_nodes=k, min_available_nodes=n).start(
            grid=grid, initial_arrays=ArrayRecord(net[-HEAD:].state_dict()), num_rounds=int(st.cfg.rounds),
            train_config=ConfigRecord(), evaluate_fn=evaluate_fn)
        result.update(initial=accuracy[0], final=accuracy[max(accuracy)])

    return server, client


def pss_kb(pid: int) -> int:
    """Proportional set size of a process (shared pages split between the processes that map them)."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kb(pid: int) -> int:
    """PSS of a process and its descendants (the engine's worker processes)."""
    from fedtiny.engine.reaper import descendants

    return sum(pss_kb(p) for p in {pid} | descendants(pid))


class PeakMemory:
    """Samples the PSS of this process tree every 0.2 s; `peak_kb` after the block."""

    def __enter__(self):
        import os
        import threading

        self.peak_kb, self._stop = 0, threading.Event()

        def sample():
            while not self._stop.wait(0.2):
                self.peak_kb = max(self.peak_kb, tree_pss_kb(os.getpid()))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def warm(cfg) -> str:
    """Untimed: the backbone (pretrained and cached), the run context and every device's features
    in the on-disk cache, so both timings start from the same warm machine."""
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare_output(cfg, Path(tmp) / "prepare", log=lambda *_: None)
    for pid in range(len(run.task.clients)):
        run.device(pid)
    return run.config_json


def time_fedtiny(cfg) -> dict:
    with tempfile.TemporaryDirectory() as tmp, PeakMemory() as mem:
        t0 = time.perf_counter()
        summary = run_experiment(cfg, Path(tmp) / "fedtiny", log=lambda *_: None)
        wall = time.perf_counter() - t0
    client_rounds = summary["aggregated_total"] + summary["failed_total"] + summary["rejected_total"]
    return {"initial": summary["initial_accuracy"], "final": summary["final_accuracy"], "wall": wall,
            "client_rounds_per_s": client_rounds / wall, "pss_kb": mem.peak_kb,
            "workers": summary["engine"].get("workers")}


def time_plain(cfg, cfg_json: str) -> dict:
    result: dict = {}
    server, client = plain_apps(cfg_json, result)
    backend = {"client_resources": {"num_cpus": float(cfg.simulation.client_cpus), "num_gpus": 0.0},
               "init_args": {"num_cpus": int(cfg.simulation.num_cpus), "num_gpus": 0, "include_dashboard": False,
                             "log_to_driver": False, "logging_level": "ERROR"}}
    t0 = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=num_devices(cfg), backend_config=backend)
    wall = time.perf_counter() - t0
    rounds = int(cfg.rounds) * (int(cfg.clients_per_round) or num_devices(cfg))
    return {"initial": result["initial"], "final": result["final"], "wall": wall, "client_rounds_per_s": rounds / wall}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", nargs="*", default=["default", "experiment=fashion_scale"],
                    help="experiments to compare ('default' or overrides joined by spaces)")
    ap.add_argument("--ray", action="store_true", help="also time fedtiny on Flower's Ray engine")
    ap.add_argument("--fleet", action="store_true", help="also time experiment=fashion_fleet (fedtiny only)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every job, e.g. rounds=5")
    args = ap.parse_args()
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    rows = []
    for job in args.jobs:
        over = ([] if job == "default" else job.split()) + args.overrides + ["progress=false"]
        cfg = compose(over)
        cfg_json = warm(cfg)
        fed = time_fedtiny(cfg)
        rows.append((job, cfg, "fedtiny, in-process engine", fed, fed))
        if args.ray:
            rows.append((job, cfg, "fedtiny on Ray", time_fedtiny(compose(over + ["simulation.backend=ray"])), fed))
        rows.append((job, cfg, "Flower + PyTorch on Ray", time_plain(cfg, cfg_json), fed))
    if args.fleet:
        cfg = compose(["experiment=fashion_fleet", *args.overrides, "progress=false"])
        warm(cfg)
        fed = time_fedtiny(cfg)
        rows.append(("experiment=fashion_fleet", cfg, "fedtiny, in-process engine", fed, fed))

    print("\n| job | implementation | accuracy | wall s | vs fedtiny | client-rounds/s | RAM per device |")
    print("|---|---|---|---|---|---|---|")
    for job, cfg, impl, r, ref in rows:
        ram = f"{r['pss_kb'] / num_devices(cfg):,.0f} KiB" if r.get("pss_kb") else "—"
        print(f"| {job} ({num_devices(cfg)} devices x {cfg.rounds} rounds, {cfg.clients_per_round or 'all'} per round) "
              f"| {impl} | {r['initial']:.3f} -> {r['final']:.3f} | {r['wall']:.1f} | {r['wall'] / ref['wall']:.1f}x "
              f"| {r['client_rounds_per_s']:,.1f} | {ram} |")
    print("\nWall time of one run, the backbone cached and every device's features in the on-disk cache (warm, "
          "untimed); Ray's start-up is part of the Ray rows. RAM: peak proportional set size of the process tree "
          "(the server and its workers) over the devices. fedtiny starts from the int8 model, the plain version "
          "from the float one.")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
