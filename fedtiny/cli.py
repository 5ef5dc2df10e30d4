"""The ``fedtiny`` command (a Hydra app) and its helpers.

    fedtiny [overrides...]            run one experiment (default: conf/config.yaml)
    fedtiny -m key=a,b [overrides]    sweep with Hydra multirun
    fedtiny resume DIR [overrides...]  continue a stopped run after its last complete round (or every
                                      unfinished run of a sweep directory); a changed setting is refused
    fedtiny pretrain [overrides...]   pretrain, quantize and cache the backbone only
    fedtiny report DIR                table and budget/Pareto plots of a sweep directory
    fedtiny import MODEL.tflite       an int8 .tflite as fedtiny's model (MODEL.ftny), checked against TFLite Micro
    fedtiny export RUN_DIR [--format tflite,c,ftny]  the run's federated model for devices (RUN_DIR/export/)
    fedtiny deploy RUN_DIR --to URL...  the run's model into boards' inactive slots, activated once checked
    fedtiny board info URL            ask a board (serial port or socket://host:port) who it is
    fedtiny board serve URL [--port P]  own a board's link and serve it on a local TCP port (a bridge)
    fedtiny board cancel URL          stop a TRAIN the board is running
    fedtiny emulate --boards N [overrides...]  start N QEMU boards holding partitions 0..N-1 of the
                                      experiment, each behind a bridge; print their URLs; Ctrl-C stops
    fedtiny flower stop               stop the local SuperLink `flwr run .` started (this FLWR_HOME's only)

Every subcommand answers ``--help``. Exit status: 0 for a run that aggregated updates; 2 for a
configuration error (unknown group option or key, wrong type, impossible value), reported in
one line before anything starts; 1 for a run that aggregated no update in any round
(``summary.json`` says ``status: failed`` when clients failed or were rejected, ``declined``
when every device's energy budget afforded no epoch) or that failed otherwise. In a multirun, a
run that fails writes its reason to ``error.txt`` in its directory and the sweep goes on
(``fedtiny report`` lists it); a ``declined`` run is a budget sweep's data point and stays in the
report's table, off the Pareto front. The sweep exits 1 when no run trained anything and prints
how many failed otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fedtiny.config import LINKS, SERIAL_MODES, compose, conf_dir, split_config_dirs, validate
from fedtiny.errors import ConfigError, RunFailed, Stopped

USAGE = __doc__.split("\n\n")[1]
_HELP = {"-h", "--help"}
_SWEEP_LOG = "FEDTINY_SWEEP_LOG"  # a file each multirun job appends "ok|failed|declined DIR" to
_RESUME = "FEDTINY_RESUME"  # set by `fedtiny resume SWEEP_DIR`: each job skips, continues or starts its run
_CURRENT: dict = {}  # the run or sweep directory in progress (named when a signal stops it)
_INFO_FLAGS = {"-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--version", "--shell-completion", "-sc"}


def _fail(err: Exception) -> None:
    print(f"fedtiny: config error: {err}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    from fedtiny.engine.simulation import run_experiment

    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    _CURRENT["dir"] = Path(hc.sweep.dir) if multirun else out
    resume = bool(os.environ.get(_RESUME))
    ended = _finished(out) if resume and multirun else None
    if ended:
        print(f"fedtiny: {out} finished already ({ended})", file=sys.stderr)
        _record_sweep_job(ended, out)
        return
    try:
        typed = validate(cfg)
        run_experiment(typed, out, log=logging.getLogger("fedtiny").info, resume=resume)
    except Exception as err:  # noqa: BLE001 - a sweep records the failure and goes on
        if not multirun:
            if isinstance(err, ConfigError):  # e.g. a memory budget that holds no update scheme
                _fail(err)
            if isinstance(err, RunFailed):
                logging.getLogger("fedtiny.file").error(f"run failed: {err}")
                print(f"fedtiny: run failed: {err}", file=sys.stderr)
                sys.exit(1)
            raise
        if isinstance(err, RunFailed) and err.status == "declined":  # a budget sweep's point, not an error
            print(f"fedtiny: run {out} trained nothing: {err}", file=sys.stderr)
            _record_sweep_job("declined", out)
            return
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "config.yaml").exists():
            (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (out / "error.txt").write_text(f"{type(err).__name__}: {err}\n")
        print(f"fedtiny: run {out} failed: {type(err).__name__}: {err}", file=sys.stderr)
        _record_sweep_job("failed", out)
        return
    if multirun:
        _record_sweep_job("ok", out)


def _finished(out: Path) -> str | None:
    """How a run directory ended (ok, failed, declined), or None if it did not."""
    import json

    if (out / "summary.json").exists():
        try:
            return str(json.loads((out / "summary.json").read_text()).get("status", "ok"))
        except ValueError:
            return None
    return "failed" if (out / "error.txt").exists() else None


def _resume(argv: list[str]) -> int:
    """``fedtiny resume DIR [overrides...]``: a run directory continues after its newest usable
    checkpoint; a sweep directory reruns its sweep, each job skipping a finished run,
    continuing a stopped one or starting one that never started."""
    import argparse

    ap = argparse.ArgumentParser(prog="fedtiny resume", description="continue a stopped run after its last complete "
                                 "round, or every unfinished run of a sweep directory")
    ap.add_argument("dir", help="a run directory (config.yaml, checkpoints/) or a sweep directory (multirun.yaml)")
    ap.add_argument("overrides", nargs="*", help="only settings that do not change results (progress=false, "
                    "simulation.workers=4, ...); any other change is refused, naming the keys")
    args = ap.parse_args(argv)
    d = Path(args.dir)
    if (d / "multirun.yaml").exists():
        return _resume_sweep(d, args.overrides)
    if not (d / "config.yaml").exists():
        print(f"fedtiny resume: {d} is neither a run directory (config.yaml) nor a sweep directory (multirun.yaml)",
              file=sys.stderr)
        return 2
    ended = _finished(d)
    if ended:
        print(f"fedtiny resume: {d} finished already ({ended}; summary.json): nothing to resume", file=sys.stderr)
        return 1
    from omegaconf import OmegaConf

    from fedtiny.engine.simulation import run_experiment

    _CURRENT["dir"] = d
    try:
        cfg = OmegaConf.merge(OmegaConf.load(d / "config.yaml"), OmegaConf.from_dotlist(list(args.overrides)))
        if int(cfg.devices.emulate) > 0:  # config.yaml has the URLs of the stopped run's fleet; a new one starts
            cfg.devices.urls = []
        typed = validate(cfg)
    except Exception as err:  # noqa: BLE001 - a bad override or a damaged config.yaml
        _fail(err)
    log = _run_log(d)
    try:
        run_experiment(typed, d, log=log.info, resume=True)
    except ConfigError as err:  # e.g. a changed setting
        _fail(err)
    except RunFailed as err:
        print(f"fedtiny: run failed: {err}", file=sys.stderr)
        return 1
    return 0


def _run_log(d: Path) -> logging.Logger:
    """fedtiny's loggers as a Hydra run has them: lines on the console and in ``run.log``."""
    stamped = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    file = logging.FileHandler(d / "run.log")
    file.setFormatter(stamped)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    for name, handlers in (("fedtiny", [console, file]), ("fedtiny.file", [file])):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers, False
        logger.setLevel(logging.INFO)
    return logging.getLogger("fedtiny")


def _resume_sweep(d: Path, extra: list[str]) -> int:
    from omegaconf import OmegaConf

    saved = OmegaConf.load(d / "multirun.yaml").hydra.overrides
    kept = [o for o in saved.hydra if not o.startswith(("hydra.mode=", "hydra.sweep.dir="))]
    os.environ[_RESUME] = "1"
    try:
        return _sweep(["-m", *saved.task, *kept, f"hydra.sweep.dir={d}", *extra])
    finally:
        os.environ.pop(_RESUME, None)


def _record_sweep_job(outcome: str, out: Path) -> None:
    path = os.environ.get(_SWEEP_LOG)
    if path:
        with open(path, "a") as fh:  # one short line per job: appends do not interleave
            fh.write(f"{outcome} {out}\n")


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
    ap.add_argument("--link", choices=LINKS, default="serial",
                    help="how each bridge reaches its board: its UART, or BLE (a BLE-UART peripheral on a virtual "
                    "air, docs/boards.md)")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C / SIGTERM)")
    ap.add_argument("overrides", nargs="*", help="experiment overrides (the boards hold its partitions)")
    args = ap.parse_args(argv)
    if args.boards < 1:
        ap.error(f"--boards must be >= 1, got {args.boards}")
    try:
        cfg = compose(list(args.overrides) + [f"devices.emulate={args.boards}", f"devices.damage={args.damage}",
                                              f"devices.serial={args.serial}", f"devices.link={args.link}"])
    except ConfigError as err:
        _fail(err)
    from fedtiny.client.context import RunContext
    from fedtiny.devices.emulate import fleet_for_experiment

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="fedtiny-emulate-") as work:
        fleet = fleet_for_experiment(RunContext(cfg), Path(work), supervise=True)  # dead boards come back
        try:
            parts = list(cfg.devices.partitions) or list(range(args.boards))
            for pid, url, uart in zip(parts, fleet.urls, fleet.board_urls):
                print(f"partition {pid}: {url} (bridge to the board {'over BLE' if args.link == 'ble' else 'UART'} "
                      f"at {uart})", flush=True)
            urls = ",".join(f'"{u}"' for u in fleet.urls)
            print(f"ready: fedtiny 'devices.urls=[{urls}]' 'devices.partitions={parts}' (Ctrl-C stops the boards)",
                  flush=True)
            stop.wait(args.seconds or None)
        finally:
            restarts = fleet.restarts()
            fleet.stop()
            print(f"stopped ({restarts['board_restarts']} board and {restarts['bridge_restarts']} bridge restarts)",
                  flush=True)
    return 0


def _board(argv: list[str]) -> int:
    import argparse

    if argv[:1] == ["serve"]:
        from fedtiny.devices.bridge import serve_main

        return serve_main(argv[1:])
    ap = argparse.ArgumentParser(prog="fedtiny board", description="talk to one board over its link",
                                 epilog="fedtiny board serve --help: own a board's link and serve it (a bridge)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{info,serve,cancel}")
    info = sub.add_parser("info", help="ask a board who it is", description="ask a board who it is (HELLO)")
    info.add_argument("url", help="/dev/ttyACM0, socket://127.0.0.1:4000 (QEMU), a bridge's socket:// URL, or "
                      "ble://ADDRESS (Nordic UART Service; docs/boards.md)")
    info.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    sub.add_parser("serve", help="own a board's link and serve it on a local TCP port (a bridge)", add_help=False)
    cancel = sub.add_parser("cancel", help="stop a TRAIN the board is running", description="stop a TRAIN the "
                            "board is running (its client gets CANCELLED); through a bridge, from any connection")
    cancel.add_argument("url", help="the board's bridge (socket://127.0.0.1:PORT) or its own port")
    args = ap.parse_args(argv)
    from fedtiny.devices.link import BoardClient, BoardError

    if args.command == "cancel":
        from fedtiny.devices.backend import cancel as cancel_train

        if cancel_train(args.url):
            print(f"{args.url}: cancel sent and answered")
            return 0
        print(f"fedtiny board: {args.url}: no answer to CANCEL", file=sys.stderr)
        return 1

    try:
        client = BoardClient(args.url, timeout=args.timeout)
        for key, value in client.hello().items():
            print(f"{key}: {value}")
        client.close()
    except (BoardError, OSError, ValueError) as err:
        print(f"fedtiny board: {args.url}: {err}", file=sys.stderr)
        return 1
    return 0


def _pretrain(argv: list[str]) -> int:
    if _HELP.intersection(argv):
        print("usage: fedtiny pretrain [overrides...]\n\npretrain the backbone of the configured task on the "
              "vendor's data, quantize it to int8 and cache it;\nprints float vs int8 accuracy. Overrides are "
              "the experiment's (e.g. dataset=fashion model=image_cnn).")
        return 0
    from fedtiny.models.pretrain import main as pretrain_main

    try:
        pretrain_main(argv)
    except ConfigError as err:
        _fail(err)
    return 0


def _sweep(argv: list[str]) -> int:
    """A Hydra multirun; exits 1 when no run of the sweep finished."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="fedtiny-sweep-", suffix=".log")
    os.close(fd)
    os.environ[_SWEEP_LOG] = path
    try:
        sys.argv = [sys.argv[0]] + argv
        _run()
        lines = Path(path).read_text().split("\n")
    finally:
        os.environ.pop(_SWEEP_LOG, None)
        os.unlink(path)
    ok = [ln for ln in lines if ln.startswith("ok ")]
    failed = [ln[len("failed "):] for ln in lines if ln.startswith("failed ")]
    declined = [ln for ln in lines if ln.startswith("declined ")]
    if (failed or declined) and not ok:
        print(f"fedtiny: no run of the sweep trained anything ({len(failed)} failed, {len(declined)} declined by "
              f"their energy budget)" + (f"; reasons in error.txt under {Path(failed[0]).parent}" if failed else ""),
              file=sys.stderr)
        return 1
    if failed:
        print(f"fedtiny: {len(failed)} of {len(ok) + len(failed)} runs failed (error.txt in each); "
              f"fedtiny report {Path(failed[0]).parent} lists them", file=sys.stderr)
    return 0


def _one_line_config_errors(name: str, main, argv: list[str]) -> int:
    """``main(argv)``'s exit status; a ConfigError is one line, ``fedtiny NAME: reason``, exit 2."""
    try:
        return main(argv)
    except ConfigError as err:
        print(f"fedtiny {name}: {err}", file=sys.stderr)
        return 2


def _import(argv: list[str]) -> int:
    return _one_line_config_errors("import", _import_model, argv)


def _import_model(argv: list[str]) -> int:
    """``fedtiny import MODEL.tflite``: an int8 .tflite as fedtiny's model file."""
    import argparse

    import numpy as np

    from fedtiny.models.tflite import import_tflite, int8_view, tflite_micro_outputs
    from fedtiny.trainer import Model
    from fedtiny.trainer.model_format import to_bytes

    ap = argparse.ArgumentParser(prog="fedtiny import", description="turn an int8 .tflite into fedtiny's model: "
                                 "an int8 prefix and a float trainable head; print what each operator became and "
                                 "check the int8 forward against TFLite Micro's interpreter")
    ap.add_argument("model", metavar="MODEL.tflite")
    ap.add_argument("--trainable-layers", type=int, default=2, help="layers of the float head (default 2)")
    ap.add_argument("--out", default=None, help="the fedtiny model file to write (default: MODEL.ftny beside it)")
    ap.add_argument("--check", type=int, default=64, metavar="N",
                    help="random int8 inputs run through TFLite Micro and fedtiny (default 64; 0: none)")
    a = ap.parse_args(argv)
    spec, imported = import_tflite(a.model, a.trainable_layers)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{a.model}: {len(imported.spec.layers)} layers, input {spec.input_shape}, "
                  f"{spec.num_classes} classes")
    for col in ("operator", "fedtiny layer", "shape", "quantization"):
        table.add_column(col)
    for row in imported.table():
        table.add_row(*row)
    Console().print(table)
    out = Path(a.out) if a.out else Path(a.model).with_suffix(".ftny")
    data = to_bytes(spec)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data):,} B): layers 0-{spec.first_trainable - 1} int8, "
          f"{spec.first_trainable}-{len(spec.layers) - 1} the float head")
    if a.check > 0:
        xq = np.random.default_rng(0).integers(-128, 128, (a.check, *spec.input_shape)).astype(np.int8)
        ref = tflite_micro_outputs(int8_view(Path(a.model).read_bytes()), xq)
        if ref is None:
            print("TFLite Micro check skipped: the tflite-micro package is not installed")
        else:
            got = Model(imported.spec).forward(xq)[-1].int8.reshape(len(xq), -1)
            same = int(np.all(ref == got, axis=1).sum())
            print(f"int8 forward against TFLite Micro's interpreter: {same} of {len(xq)} random inputs equal "
                  f"byte for byte{'' if same == len(xq) else ' (MISMATCH)'}")
            if same != len(xq):
                return 1
    return 0


def _export(argv: list[str]) -> int:
    from fedtiny.export import main as export_main

    return _one_line_config_errors("export", export_main, argv)


def _deploy(argv: list[str]) -> int:
    from fedtiny.export import deploy_main

    return _one_line_config_errors("deploy", deploy_main, argv)


def _flower(argv: list[str]) -> int:
    from fedtiny.engine.flower_local import main as flower_main

    return flower_main(argv)


def _report(argv: list[str]) -> int:
    from fedtiny.report import main as report_main

    return report_main(argv)


SUBCOMMANDS = {"pretrain": _pretrain, "board": _board, "emulate": _emulate, "report": _report, "flower": _flower,
               "import": _import, "export": _export, "deploy": _deploy}


def _stopped(signum, _frame) -> None:
    raise Stopped()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        sys.exit(SUBCOMMANDS[argv[0]](argv[1:]))
    import signal

    signal.signal(signal.SIGTERM, _stopped)  # a run (or sweep) stops like on Ctrl-C: its workers and boards too
    try:
        if argv[:1] == ["resume"]:
            sys.exit(_resume(argv[1:]))
        _experiment(argv)
    except (KeyboardInterrupt, Stopped) as err:
        how, code = ("SIGTERM", 143) if isinstance(err, Stopped) else ("Ctrl-C", 130)
        where = _CURRENT.get("dir")
        then = f"fedtiny resume {where} continues it" if where else "nothing had started"
        print(f"fedtiny: stopped by {how}; {then}", file=sys.stderr)
        # exit now: a thread may still wait on a round (Flower's ServerApp thread with Ray); the
        # checkpoints and metrics are on disk already, and every child was stopped on the way out
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _experiment(argv: list[str]) -> None:
    """One run or a sweep (Hydra)."""
    if argv and set(argv) <= _HELP:  # the subcommands first, then Hydra's own help
        import textwrap

        print("usage:\n" + textwrap.indent(textwrap.dedent(USAGE), "  ")
              + "\n\nEach subcommand answers --help. Hydra's help for runs follows.\n")
    multirun = "-m" in argv or "--multirun" in argv
    if multirun and not _INFO_FLAGS.intersection(argv):
        sys.exit(_sweep(argv))
    if not multirun and not _INFO_FLAGS.intersection(argv):
        try:
            dirs, rest = split_config_dirs(argv)
            overrides = [a for a in rest if not a.startswith("-")
                         and (not a.startswith("hydra.") or a.startswith("hydra.searchpath="))]
            compose(overrides, dirs)  # validated before Hydra, data or Ray start (with the user's config dirs)
        except ConfigError as err:
            _fail(err)
    sys.argv = [sys.argv[0]] + argv
    _run()


if __name__ == "__main__":
    main()
