"""fedtiny's default experiment vs a plain Flower + PyTorch implementation of the same
fine-tuning: same data, devices, rounds, local epochs, batch size, SGD settings and initial
model. The plain version is what one would write without fedtiny: Flower's stock FedAvg, and
clients that train the float head in PyTorch through the frozen float backbone (re-run every
step, as usual in PyTorch). fedtiny's clients run the int8 backbone once per device and train
the head with the C trainer. Prints accuracy and wall time of both and the ratio::

    python benchmarks/federated_vs_flower_torch.py [overrides...]   # e.g. rounds=5
"""

from __future__ import annotations

import copy
import logging
import sys
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
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n).start(
            grid=grid, initial_arrays=ArrayRecord(net[-HEAD:].state_dict()), num_rounds=int(st.cfg.rounds),
            train_config=ConfigRecord(), evaluate_fn=evaluate_fn)
        result.update(initial=accuracy[0], final=accuracy[max(accuracy)])

    return server, client


def main() -> None:
    cfg = compose(sys.argv[1:] + ["progress=false"])
    quiet = lambda *_: None  # noqa: E731
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_json = prepare_output(cfg, Path(tmp) / "prepare", log=quiet).config_json  # backbone cached before timing
        t0 = time.perf_counter()
        summary = run_experiment(cfg, Path(tmp) / "fedtiny", log=quiet)
        t_fedtiny = time.perf_counter() - t0

        result: dict = {}
        server, client = plain_apps(cfg_json, result)
        backend = {"client_resources": {"num_cpus": float(cfg.simulation.client_cpus), "num_gpus": 0.0},
                   "init_args": {"num_cpus": int(cfg.simulation.num_cpus), "num_gpus": 0, "include_dashboard": False,
                                 "log_to_driver": False, "logging_level": "ERROR"}}
        t0 = time.perf_counter()
        run_simulation(server_app=server, client_app=client, num_supernodes=num_devices(cfg), backend_config=backend)
        t_plain = time.perf_counter() - t0

    print(f"\n{cfg.dataset.name}: {num_devices(cfg)} devices x {cfg.rounds} rounds, {cfg.client.epochs} local epochs, "
          f"batch {cfg.client.batch_size}, lr {cfg.client.lr}, momentum {cfg.client.momentum}")
    print(f"{'implementation':38s} {'initial acc':>11s} {'final acc':>9s} {'wall s':>8s} {'time vs fedtiny':>16s}")
    print(f"{'fedtiny (int8 prefix once, C trainer)':38s} {summary['initial_accuracy']:11.3f} "
          f"{summary['final_accuracy']:9.3f} {t_fedtiny:8.1f} {1.0:15.2f}x")
    print(f"{'Flower + PyTorch (float backbone)':38s} {result['initial']:11.3f} {result['final']:9.3f} "
          f"{t_plain:8.1f} {t_plain / t_fedtiny:15.2f}x")
    print("wall time includes Ray start-up (10-20 s) for both; the initial accuracies differ because fedtiny "
          "starts from the int8 model and the plain version from the float one.")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
