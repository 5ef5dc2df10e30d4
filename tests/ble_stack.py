"""The host Bluetooth stack the BLE tests run over: ``FEDTINY_BLE_STACK=bumble`` (default: bleak
over fedtiny's bumble backend, HCI over TCP to the virtual air) or ``bluez`` (bleak's own BlueZ
backend; the air's host-facing controller is the kernel's, on /dev/vhci: the slow tier,
``scripts/ble_bluez_tier.sh``, runs the tests this way inside a virtme-ng VM)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest

STACK = os.environ.get("FEDTINY_BLE_STACK", "bumble")
bumble_only = pytest.mark.skipif(STACK != "bumble", reason="a bumble-backend feature (HCI over TCP, btsnoop)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirThread:
    """A virtual air on its own event loop thread, with the host-facing controller of the stack:
    per peripheral over TCP (bumble), or one on vhci (BlueZ). Closed on exit (a vhci adapter
    goes away with it)."""

    def __init__(self) -> None:
        from fedtiny.devices.ble_bumble import Air

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.air = Air()
        self.ports: dict[str, int] = {}
        if STACK == "bluez":
            from fedtiny.devices.ble_bumble import wait_for_bluez

            self.call(self.air.add_host_controller("vhci"))
            wait_for_bluez(1)  # bluetoothd has taken the vhci controller and powered it

    def call(self, coro, timeout: float = 15.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _hci(self, address: str) -> str | None:
        if STACK == "bluez":
            return None
        self.ports[address] = free_port()
        return f"tcp-server:127.0.0.1:{self.ports[address]}"

    def peripheral(self, address: str, on_write, faults=None):
        return self.call(self.air.add_peripheral(self._hci(address), address, on_write, faults))

    def board(self, address: str, uart: tuple[str, int], faults=None):
        return self.call(self.air.add_board(self._hci(address), address, uart, faults))

    def url(self, address: str, **params) -> str:
        """The ble:// URL the host opens for the peripheral at `address`."""
        query = [f"hci=tcp-client:127.0.0.1:{self.ports[address]}"] if STACK == "bumble" else []
        query += [f"{k}={v}" for k, v in params.items()]
        return f"ble://{address}" + (f"?{'&'.join(query)}" if query else "")

    def __enter__(self) -> AirThread:
        return self

    def __exit__(self, *exc) -> None:
        self.call(self.air.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if STACK == "bluez":
            from fedtiny.devices.ble_bumble import wait_for_bluez

            wait_for_bluez(0)  # the adapter is gone before the next test makes one
