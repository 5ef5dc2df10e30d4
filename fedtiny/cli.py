"""The ``fedtiny`` command (a Hydra app) and its helpers.

    fedtiny [overrides...]            run one experiment (default: conf/config.yaml)
    fedtiny -m key=a,b [overrides]    sweep with Hydra multirun
    fedtiny pretrain [overrides...]   pretrain, quantize and cache the backbone only
    fedtiny report DIR                table and budget/Pareto plots of a sweep directory
    fedtiny board info URL            ask a board (serial port or socket://host:port) who it is
    fedtiny board serve URL [--port P]  own a board's link and serve it on a local TCP port (a bridge)
    fedtiny emulate --boards N [overrides...]  start N QEMU boards holding partitions 0..N-1 of the
                                      experiment, each behind a bridge; print their URLs; Ctrl-C stops

A configuration error (unknown group option or key, wrong type, impossible value) is
reported in one line before anything starts, and the exit status is 2. In a multirun, a run
that fails writes its reason to ``error.txt`` in its directory and the sweep goes on
(``fedtiny report`` lists it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedtiny.config import compose, conf_dir, validate
from fedtiny.devices.emulate import SERIAL_MODES
from fedtiny.errors import ConfigError

_INFO_FLAGS = {"-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--version", "--shell-completion", "-sc"}


def _fail(err: Exception) -> None:
    print(f"fedtiny: config error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    from fedtiny.experiment import run_experiment

    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    try:
        typed = validate(cfg)
        run_experiment(typed, out)
    except Exception as err:  # noqa: BLE001 - a sweep records the failure and goes on
        if hc.mode != RunMode.MULTIRUN:
            if isinstance(err, ConfigError):  # e.g. a memory budget that holds no update scheme
                _fail(err)
            raise
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "config.yaml").exists():
            (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (out / "error.txt").write_text(f"{type(err).__name__}: {err}\n")
        print(f"fedtiny: run {out} failed: {type(err).__name__}: {err}", file=sys.stderr)


def _emulate(argv: list[str]) -> int:
    import argparse
    import signal
    import tempfile
    import threading

    ap = argparse.ArgumentParser(prog="fedtiny emulate", description="an emulated fleet of mps2-an386 boards")
    ap.add_argument("--boards", type=int, required=True, help="number of QEMU boards")
    ap.add_argument("--damage", type=float, default=0.0, help="fraction of serial bytes damaged (both directions)")
    ap.add_argument("--serial", choices=SERIAL_MODES, default="tcp",
                    help="the boards' UARTs: TCP sockets, or pseudo-terminals (/dev/pts/N, opened as a tty)")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C / SIGTERM)")
    ap.add_argument("overrides", nargs="*", help="experiment overrides (the boards hold its partitions)")
    args = ap.parse_args(argv)
    if args.boards < 1:
        ap.error(f"--boards must be >= 1, got {args.boards}")
    try:
        cfg = compose(list(args.overrides) + [f"devices.emulate={args.boards}", f"devices.damage={args.damage}",
                                              f"devices.serial={args.serial}"])
    except ConfigError as err:
        _fail(err)
    from fedtiny.devices.emulate import fleet_for_experiment

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="fedtiny-emulate-") as work:
        fleet = fleet_for_experiment(cfg, Path(work))
        try:
            parts = list(cfg.devices.partitions) or list(range(args.boards))
            for pid, url, uart in zip(parts, fleet.urls, fleet.board_urls):
                print(f"partition {pid}: {url} (bridge to the board's UART at {uart})", flush=True)
            urls = ",".join(f'"{u}"' for u in fleet.urls)
            print(f"ready: fedtiny 'devices.urls=[{urls}]' 'devices.partitions={parts}' (Ctrl-C stops the boards)",
                  flush=True)
            stop.wait(args.seconds or None)
        finally:
            fleet.stop()
            print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pretrain"]:
        from fedtiny.models.pretrain import main as pretrain_main

        try:
            return pretrain_main(argv[1:])
        except ConfigError as err:
            _fail(err)
    if argv[:2] == ["board", "info"] and len(argv) == 3:
        from fedtiny.devices.link import BoardClient, BoardError

        try:
            client = BoardClient(argv[2], timeout=2.0)
            for key, value in client.hello().items():
                print(f"{key}: {value}")
            client.close()
        except (BoardError, OSError, ValueError) as err:
            print(f"fedtiny board: {argv[2]}: {err}", file=sys.stderr)
            sys.exit(1)
        return None
    if argv[:2] == ["board", "serve"]:
        from fedtiny.devices.bridge import serve_main

        sys.exit(serve_main(argv[2:]))
    if argv[:1] == ["emulate"]:
        sys.exit(_emulate(argv[1:]))
    if argv[:1] == ["report"]:
        from fedtiny.report import main as report_main

        sys.exit(report_main(argv[1:]))
    multirun = "-m" in argv or "--multirun" in argv
    if not multirun and not _INFO_FLAGS.intersection(argv):
        overrides = [a for a in argv if not a.startswith("-") and not a.startswith("hydra.")]
        try:
            compose(overrides)  # validated before Hydra, data or Ray start
        except ConfigError as err:
            _fail(err)
    sys.argv = [sys.argv[0]] + argv
    _run()


if __name__ == "__main__":
    main()
