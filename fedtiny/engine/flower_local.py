"""``fedtiny flower stop``: stop the local SuperLink that ``flwr run .`` started, and nothing else.

``flwr run .`` (Flower 1.41) starts a detached ``flower-superlink --simulation`` the first time
it needs one and leaves it running, with its files in ``$FLWR_HOME/local-superlink/`` (default
``~/.flwr``). That process, and the ``flower-superexec`` it spawns, are found by their command
lines: the SuperLink names its log file inside this ``FLWR_HOME``; each SuperExec names its
parent's pid. Other users' SuperLinks, and SuperLinks started by hand or by another
``FLWR_HOME``, do not match.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser().resolve()


def _processes() -> dict[int, list[str]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        out[int(entry.name)] = [a.decode(errors="replace") for a in argv if a]
    return out


def local_superlink_pids(home: Path | None = None) -> list[int]:
    """The managed local SuperLink of `home` (default this FLWR_HOME) and its SuperExecs."""
    log_file = str((home or flwr_home()) / "local-superlink" / "superlink.log")
    procs = _processes()
    links = [pid for pid, argv in procs.items()
             if any(Path(a).name == "flower-superlink" for a in argv[:2]) and "--simulation" in argv
             and _option(argv, "--log-file") == log_file]
    execs = [pid for pid, argv in procs.items()
             if any(Path(a).name == "flower-superexec" for a in argv[:2])
             and _option(argv, "--parent-pid") in {str(p) for p in links}]
    return links + execs


def _option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a == name:
            return argv[i + 1]
    return None


def stop(home: Path | None = None, timeout_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL after `timeout_s`; returns the pids that were stopped."""
    pids = local_superlink_pids(home)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="fedtiny flower", description="manage the local SuperLink that `flwr run .` "
                                 "starts (in $FLWR_HOME/local-superlink, default ~/.flwr)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("stop", help="stop this FLWR_HOME's local SuperLink and its SuperExec, nothing else")
    sub.add_parser("status", help="print the pids of this FLWR_HOME's local SuperLink and its SuperExec")
    args = ap.parse_args(argv)
    home = flwr_home()
    if args.command == "status":
        pids = local_superlink_pids(home)
        print(f"local SuperLink of {home}: " + (", ".join(map(str, pids)) if pids else "not running"))
        return 0
    pids = stop(home)
    print(f"stopped the local SuperLink of {home} (pids {', '.join(map(str, pids))})" if pids
          else f"no local SuperLink of {home} is running", file=sys.stdout)
    return 0
