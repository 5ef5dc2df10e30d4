"""Boards over BLE against boards over serial, in one run of this script: prints three tables.

1. **Throughput of the virtual link**: a 64 KB echo through a ``ble://`` port (bleak over
   fedtiny's bumble backend, a NUS peripheral on bumble's virtual air) at MTU 247 and 23, and a
   model LOAD to an emulated board over its serial port (TCP) and over BLE, side by side.
2. **Bytes per round, BLE against serial**: ``experiment=digits_quick devices.emulate=3`` over
   ``devices.link=serial`` and ``devices.link=ble``: per round, the frames each link carried
   (the same protocol bytes on both), the UART's line time at 115,200 baud (10 bits a byte),
   and over BLE the bytes on air with ATT, L2CAP and link-layer headers, empty PDUs and write
   responses, the connection events and the radio time they need.
3. **Modelled radio energy per board-round** on the nRF52840 and the ESP32-S3 profiles (their
   ``ble`` sections), from the same air counts.

    python benchmarks/ble_link.py [overrides...]      # e.g. rounds=5 codec.bits=8

Needs the Cortex-M toolchain and QEMU (``bash scripts/setup.sh``). The virtual air has no
radio timing: wall-clock throughput here is the stacks' and emulator's speed, not BLE's; the
radio time is the model's (connection events x interval).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _air():
    from fedtiny.devices.ble_bumble import Air

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return Air(), loop


def echo_throughput(mtu: int, size: int = 65536) -> float:
    """kB/s of a `size`-byte echo through a ble:// port (written, notified back, reassembled)."""
    import serial

    air, loop = _air()
    port = _free_port()

    def echo(peripheral, data):
        asyncio.get_running_loop().create_task(peripheral.notify(data))

    asyncio.run_coroutine_threadsafe(air.add_peripheral(f"tcp-server:127.0.0.1:{port}", "F0:00:00:00:00:01", echo),
                                     loop).result(10)
    serial.protocol_handler_packages.append("fedtiny.devices")
    link = serial.serial_for_url(f"ble://F0:00:00:00:00:01?hci=tcp-client:127.0.0.1:{port}&mtu={mtu}", timeout=5)
    data = bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8))
    t0 = time.perf_counter()
    link.write(data)
    got = b""
    while len(got) < size:
        got += link.read(65536)
    seconds = time.perf_counter() - t0
    link.close()
    asyncio.run_coroutine_threadsafe(air.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    assert got == data
    return 2 * size / seconds / 1e3  # both ways


def load_throughput(cache_dir: str) -> dict:
    """kB/s of LOADing a 32 KB model file to an emulated board, over TCP serial and over BLE."""
    from fedtiny.devices.emulate import Fleet, cached_firmware
    from fedtiny.devices.link import BoardClient, data_block

    blob = bytes(np.random.default_rng(1).integers(0, 256, 32 * 1024, dtype=np.uint8))
    x = np.zeros((4, 8), np.int8)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        firmware = cached_firmware(cache_dir)
        with Fleet(firmware, [data_block(x, np.zeros(4, np.uint8))], Path(tmp) / "serial",
                   in_process_bridges=True) as fleet:
            client = BoardClient(fleet.board_urls[0])
            t0 = time.perf_counter()
            try:
                client.load_model(blob)  # not a model: the board rejects it after the last chunk
            except Exception:  # noqa: BLE001 - the bytes went over; the time is what counts
                pass
            out["serial (TCP)"] = len(blob) / (time.perf_counter() - t0) / 1e3
            client.close()
        for mtu in (247, 23):
            with Fleet(firmware, [data_block(x, np.zeros(4, np.uint8))], Path(tmp) / f"ble{mtu}",
                       in_process_bridges=True, link="ble", ble_params=f"mtu={mtu}") as fleet:
                client = BoardClient(fleet.board_urls[0])
                t0 = time.perf_counter()
                try:
                    client.load_model(blob)
                except Exception:  # noqa: BLE001
                    pass
                out[f"BLE, MTU {mtu}"] = len(blob) / (time.perf_counter() - t0) / 1e3
                client.close()
    return out


def run(overrides: list[str], out: Path) -> dict:
    from fedtiny.config import compose
    from fedtiny.engine.simulation import run_experiment

    cfg = compose(overrides + ["progress=false"])
    run_experiment(cfg, out, log=lambda *_: None)
    return {"links": list(csv.DictReader(open(out / "links.csv"))),
            "summary": json.loads((out / "summary.json").read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    base = ["experiment=digits_quick", "devices.emulate=3", *args.overrides]
    from fedtiny.config import compose

    cache_dir = str(compose(base).cache_dir)

    print("1. Throughput of the virtual link (wall clock; no radio timing on the virtual air)")
    print(f"   {'link':<22} {'kB/s':>8}")
    for mtu in (247, 23):
        print(f"   {f'echo over BLE, MTU {mtu}':<22} {echo_throughput(mtu):>8.1f}")
    for name, rate in load_throughput(cache_dir).items():
        print(f"   {f'LOAD, {name}':<22} {rate:>8.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        serial_run = run(base + ["devices.link=serial"], Path(tmp) / "serial")
        ble = {b: run(base + ["devices.link=ble", f"board={b}"], Path(tmp) / b) for b in ("nrf52840", "esp32s3")}
    print("\n2. Bytes per round (3 boards), BLE against serial; the same frames on both links")
    print(f"   {'round':>5} {'frames down':>12} {'frames up':>10} {'UART ms':>8} | {'air down':>9} {'air up':>8} "
          f"{'overhead':>8} {'events':>7} {'radio ms':>9}")
    rounds = sorted({int(r["round"]) for r in serial_run["links"]})
    for rnd in rounds:
        s = [r for r in serial_run["links"] if int(r["round"]) == rnd]
        b = [r for r in ble["nrf52840"]["links"] if int(r["round"]) == rnd]
        fd, fu = sum(int(r["bytes_to_board"]) for r in s), sum(int(r["bytes_from_board"]) for r in s)
        ad, au = sum(int(r["air_bytes_down"]) for r in b), sum(int(r["air_bytes_up"]) for r in b)
        frames_ble = sum(int(r["bytes_to_board"]) + int(r["bytes_from_board"]) for r in b)
        print(f"   {rnd:>5} {fd:>12,} {fu:>10,} {sum(float(r['uart_115200_ms']) for r in s):>8.0f} | {ad:>9,} "
              f"{au:>8,} {(ad + au) / frames_ble - 1:>8.1%} {sum(int(r['connection_events']) for r in b):>7} "
              f"{sum(float(r['radio_ms']) for r in b):>9.1f}")
    print("\n3. Modelled radio energy per board-round (the boards' side of the link)")
    print(f"   {'profile':<10} {'mJ':>8} {'radio on ms':>12}")
    for name, result in ble.items():
        t = result["summary"]["links"]["ble"]
        print(f"   {name:<10} {t['radio_mj_per_board_round']:>8.3f} {t['radio_on_ms'] / t['board_rounds']:>12.2f}")
    same = all(serial_run["summary"]["final_accuracy"] == r["summary"]["final_accuracy"] for r in ble.values())
    print(f"\n   final accuracy equal over serial and BLE: {same}")


if __name__ == "__main__":
    main()
