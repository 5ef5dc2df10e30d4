"""Per-round checkpoints of a run, and what ``fedtiny resume`` reads back.

After every complete round (and after the pretrained model's evaluation, "round 0") the server
writes ``checkpoints/round-NNNN.ckpt`` into the run directory. One file holds everything the
rest of the run depends on:

* the global arrays and the strategy's server-optimiser state (FedAdam's moments);
* the round reached, which fixes the sampling RNG and the DP noise (both are seeded by round)
  and the privacy accountant's position (the epsilon spent so far is stored and checked);
* every device's node state (error-feedback residual, battery) as the device kept it, by
  partition id;
* the recorder's rows, failures and energy counters, and the sizes of the per-round CSV files;
* the resolved config, so a resume with another config is refused, naming the keys.

File layout: ``FTCKPT01`` | payload length (u64 LE) | SHA-256 of the payload | payload, where
the payload is an uncompressed ``.npz`` (no pickles) whose ``__meta__`` entry is the JSON of
the scalars. It is written to a temporary file, fsynced, renamed over its name and the
directory fsynced, so a crash leaves the old checkpoint or the new one, never half of one. The
two newest are kept: a damaged newest one (checksum or length) is reported and the previous one
used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"FTCKPT01"
HEADER = struct.Struct("<8sQ32s")
KEEP = 2
_NAME = re.compile(r"round-(\d{4,})\.ckpt$")
KILL_ENV = "FEDTINY_KILL_AT"  # tests: "<point>:<round>" SIGKILLs the run there (train, aggregate, checkpoint)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, truncated, of another format)."""


@dataclass
class Checkpoint:
    round: int
    meta: dict
    arrays: dict[str, np.ndarray]
    path: Path

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays stored under ``prefix/`` (without it)."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.arrays.items() if k.startswith(prefix + "/")}


def kill_point(point: str, server_round: int) -> None:
    """SIGKILL this process if the environment asks for it at this point (fault tests only)."""
    if os.environ.get(KILL_ENV) == f"{point}:{server_round}":
        os.kill(os.getpid(), signal.SIGKILL)


def directory(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def encode(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    entries = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    entries["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    np.savez(buf, **entries)
    payload = buf.getvalue()
    return HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload


def decode(data: bytes, path: Path) -> Checkpoint:
    if len(data) < HEADER.size:
        raise CheckpointError(f"{path.name}: {len(data)} bytes, shorter than the header")
    magic, length, digest = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"{path.name}: not a fedtiny checkpoint (magic {magic!r})")
    payload = data[HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(f"{path.name}: truncated ({len(payload)} of {length} payload bytes)")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path.name}: checksum mismatch (the file is damaged)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    return Checkpoint(int(meta["round"]), meta, arrays, path)


def write(run_dir: Path, meta: dict, arrays: dict[str, np.ndarray]) -> tuple[Path, int, float]:
    """Write the checkpoint of round ``meta['round']`` atomically; keep the newest :data:`KEEP`.
    Returns its path, size in bytes and the seconds the write took (fsyncs included)."""
    t0 = time.perf_counter()
    folder = directory(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    server_round = int(meta["round"])
    data = encode(meta, arrays)
    path = folder / f"round-{server_round:04d}.ckpt"
    tmp = folder / f".{path.name}.tmp"
    with open(tmp, "wb") as fh:
        half = len(data) // 2
        fh.write(data[:half])
        fh.flush()
        kill_point("checkpoint", server_round)  # a crash in the middle of the write (tests)
        fh.write(data[half:])
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)
    for old in sorted(folder.glob("round-*.ckpt"), key=_round_of)[:-KEEP]:
        old.unlink()
    for stale in folder.glob(".round-*.ckpt.tmp"):  # left by a crash in the middle of a write
        stale.unlink(missing_ok=True)
    return path, len(data), time.perf_counter() - t0


def _round_of(path: Path) -> int:
    m = _NAME.search(path.name)
    return int(m.group(1)) if m else -1


def latest(run_dir: Path, log=print) -> Checkpoint | None:
    """The newest usable checkpoint of a run directory (None if there is none); a damaged one is
    reported through `log` and the previous one tried."""
    folder = directory(run_dir)
    paths = sorted((p for p in folder.glob("round-*.ckpt") if _round_of(p) >= 0), key=_round_of, reverse=True) \
        if folder.is_dir() else []
    for path in paths:
        try:
            return decode(path.read_bytes(), path)
        except (CheckpointError, OSError, ValueError, KeyError) as err:
            log(f"checkpoint {err}; trying the previous one")
    return None


# keys whose change does not change a run's results: a resume may set them anew
RESUMABLE_KEYS = ("cache_dir", "progress", "simulation.backend", "simulation.workers", "simulation.address",
                  "simulation.num_cpus", "simulation.client_cpus", "simulation.timeout_s", "devices.timeout_s")


def config_diff(saved: dict, now: dict, ignore: tuple[str, ...] = RESUMABLE_KEYS) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (minus `ignore`)."""
    out: list[str] = []

    def walk(a, b, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{prefix}{key}.")
        elif a != b and prefix[:-1] not in ignore:
            out.append(f"{prefix[:-1]} ({_short(a)} -> {_short(b)})")

    walk(saved, now, "")
    return out


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
