"""bleak's client API over a bumble host stack, and BLE-UART peripherals for emulated boards.

:class:`BumbleBleakClient` is a bleak backend (``BleakClient(address, backend=BumbleBleakClient)``)
whose Bluetooth host is bumble, talking HCI to a controller over a bumble transport
(``FEDTINY_BLE_HCI``, e.g. ``tcp-client:127.0.0.1:PORT``): what lets the production bleak code
run in CI, where the kernel has no Bluetooth.

:class:`Air` is the other side: one bumble ``LocalLink`` (the air) on which each peripheral
offers the Nordic UART Service and has its own host-facing controller served over HCI (one per
host link, as each board's bridge owns its own connection). :meth:`Air.add_board` forwards a
peripheral's NUS to a board's UART (a TCP socket: an emulated board's), playing a BLE-UART
bridge chip or a BLE MCU's radio core; the UART is reopened when the board restarts.
``python -m fedtiny.devices.ble_bumble ADDRESS=UART_PORT@HCI_PORT ...`` serves boards this way
(what ``devices.link=ble`` starts). :class:`Faults` makes the air misbehave for tests: drop the
connection after a given request (or part way through its reply), lose or truncate a
notification.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection

from fedtiny.devices import protocol as P

NUS = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_RX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"  # host -> peripheral: write without response
NUS_TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"  # peripheral -> host: notify


def host_address(peripheral: str) -> str:
    """The address the host's stack takes when it connects to `peripheral`: one per link, so
    that several hosts (one bridge per board) share one virtual air."""
    return ("C1" if peripheral[:2].upper() == "C0" else "C0") + peripheral[2:]

_PROPERTIES = (("BROADCAST", "broadcast"), ("READ", "read"), ("WRITE_WITHOUT_RESPONSE", "write-without-response"),
               ("WRITE", "write"), ("NOTIFY", "notify"), ("INDICATE", "indicate"))


def _uuid(u) -> str:
    """A bumble UUID as bleak spells UUIDs (128-bit, lower case)."""
    from bleak.uuids import normalize_uuid_str

    return normalize_uuid_str(u.to_hex_str("-"))


class BumbleBleakClient(BaseBleakClient):
    def __init__(self, address_or_ble_device, *, disconnected_callback=None, timeout: float = 10.0,
                 hci: str | None = None, mtu: int = 247, snoop: str | None = None, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout, **kwargs)
        self._hci = hci or os.environ.get("FEDTINY_BLE_HCI", "")
        self._want_mtu = mtu
        self._snoop = snoop  # a btsnoop file (Wireshark reads it) of the host's HCI traffic, appended to
        self._snoop_file = None
        self._mtu = 23
        self._transport = self._device = self._connection = self._peer = None

    @property
    def name(self) -> str:
        return self.address

    @property
    def mtu_size(self) -> int:
        return self._mtu

    async def connect(self, pair: bool = False, **kwargs: Any) -> None:
        from bumble import hci
        from bumble.device import Device, Peer
        from bumble.transport import open_transport

        if not self._hci:
            raise RuntimeError("the bumble backend needs an HCI transport (FEDTINY_BLE_HCI)")
        self._transport = await open_transport(self._hci)
        self._device = Device.with_hci("fedtiny-host", hci.Address(host_address(self.address)), self._transport.source,
                                       self._transport.sink)
        if self._snoop:
            from bumble.snoop import BtSnooper

            self._snoop_file = open(self._snoop, "ab")  # noqa: SIM115 - closed in disconnect()
            self._device.host.snooper = BtSnooper(self._snoop_file)
        await self._device.power_on()
        self._connection = await asyncio.wait_for(self._device.connect(hci.Address(self.address)), self._timeout)
        self._connection.on("disconnection", lambda *_: self._lost())
        self._peer = Peer(self._connection)
        self._mtu = await self._peer.request_mtu(self._want_mtu)
        await self._peer.discover_services()
        services = BleakGATTServiceCollection()
        for s in self._peer.services:
            await s.discover_characteristics()
            svc = BleakGATTService(s, s.handle, _uuid(s.uuid))
            services.add_service(svc)
            for c in s.characteristics:
                props = [name for flag, name in _PROPERTIES if c.properties & getattr(type(c.properties), flag)]
                services.add_characteristic(BleakGATTCharacteristic(c, c.handle, _uuid(c.uuid), props,
                                                                    lambda: self._mtu - 3, svc))
        self.services = services

    def _lost(self) -> None:
        self._connection = None
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
        if self._snoop_file is not None:
            self._snoop_file.close()
            self._snoop_file = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("pairing is not used by fedtiny's NUS link")

    async def unpair(self) -> None:
        raise NotImplementedError("pairing is not used by fedtiny's NUS link")

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        return bytearray(await characteristic.obj.read_value())

    async def read_gatt_descriptor(self, descriptor, **kwargs: Any) -> bytearray:
        raise NotImplementedError

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data, response: bool) -> None:
        await characteristic.obj.write_value(bytes(data), with_response=response)

    async def write_gatt_descriptor(self, descriptor, data) -> None:
        raise NotImplementedError

    async def start_notify(self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback,
                           **kwargs: Any) -> None:
        await characteristic.obj.subscribe(lambda value: callback(bytearray(value)))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        await characteristic.obj.unsubscribe()




@dataclass
class Faults:
    """What a peripheral does wrong, for tests. `cut`: (frame type name, n, after) drops the
    connection once the n-th request of that type (counted from 1 on this peripheral) has
    reached the board and `after` bytes of what the board says next have been notified (0: at
    once); `drop` / `truncate`: the notification numbers (from 1) that are lost, or lose their
    last half."""

    cut: list = field(default_factory=list)
    drop: list = field(default_factory=list)
    truncate: list = field(default_factory=list)

    @classmethod
    def parse(cls, spec: dict | None) -> Faults:
        spec = spec or {}
        unknown = set(spec) - {"cut", "drop", "truncate"}
        if unknown:
            raise ValueError(f"unknown BLE faults {sorted(unknown)} (cut, drop, truncate)")
        cuts = []
        for name, n, after in spec.get("cut", []):
            if not hasattr(P, str(name)):
                raise ValueError(f"unknown frame type {name!r} in a BLE fault")
            cuts.append((getattr(P, str(name)), int(n), int(after)))
        return cls(cuts, [int(k) for k in spec.get("drop", [])], [int(k) for k in spec.get("truncate", [])])


class Peripheral:
    """One NUS peripheral on the air: what the host writes goes to `on_write(data)`;
    :meth:`notify` sends to the host cut at the connection's MTU - 3 (faults applied)."""

    def __init__(self, device, tx, faults: Faults, address: str = "") -> None:
        self.device, self.tx, self.faults, self.address = device, tx, faults, address
        self.max_mtu = 247  # a BLE-UART bridge chip's notifications: at most 244 bytes, whatever the MTU
        self.requests: dict[int, int] = {}  # frame type -> requests seen
        self.notifications = 0
        self.disconnects = 0
        self._rx = P.Receiver()
        self._cut_after: int | None = None  # bytes still to notify before the armed cut

    @property
    def connection(self):
        return next(iter(self.device.connections.values()), None)

    def saw_request(self, data: bytes) -> None:
        """Count the request frames in what the host wrote; arm a cut the faults ask for."""
        for f in self._rx.feed(data):
            self.requests[f.type] = self.requests.get(f.type, 0) + 1
            for kind, n, after in self.faults.cut:
                if kind == f.type and self.requests[f.type] == n:
                    self._cut_after = after

    async def maybe_cut(self) -> None:
        if self._cut_after == 0:
            self._cut_after = None
            await self.disconnect()

    async def disconnect(self) -> None:
        conn = self.connection
        if conn is not None:
            self.disconnects += 1
            self._log(f"connection dropped (request counts {self._counts()})")
            await conn.disconnect()

    def _counts(self) -> str:
        names = {getattr(P, k): k for k in ("HELLO", "LOAD", "TRAIN", "UPDATE", "PARAMS", "EVALUATE", "STATS")}
        return ", ".join(f"{names.get(t, t)} {n}" for t, n in sorted(self.requests.items()))

    async def notify(self, data: bytes) -> None:
        conn = self.connection
        if conn is None:
            return  # nobody connected: the bytes are lost, as a radio's would be
        n = min(conn.att_mtu, self.max_mtu) - 3
        cut = False
        if self._cut_after is not None and len(data) >= self._cut_after:  # the cut falls in these bytes
            data, cut = data[:self._cut_after], True
        elif self._cut_after is not None:
            self._cut_after -= len(data)
        for i in range(0, len(data), n):
            part = data[i:i + n]
            self.notifications += 1
            if self.notifications in self.faults.drop:
                self._log(f"notification {self.notifications} ({len(part)} B) lost")
                continue
            if self.notifications in self.faults.truncate:
                self._log(f"notification {self.notifications} truncated to {max(1, len(part) // 2)} of {len(part)} B")
                part = part[:max(1, len(part) // 2)]
            await self.device.notify_subscribers(self.tx, part)
        if cut:
            self._cut_after = None
            await self.disconnect()

    def _log(self, what: str) -> None:
        print(f"air {self.address}: {what}", file=sys.stderr, flush=True)


def _host_controller_class():
    """bumble's controller, with two host-facing commands as the Core spec has them (Linux's
    host relies on both; bumble 0.0.2xx does neither, and BlueZ then never disconnects, so a
    second connection to a peripheral fails with EBUSY):

    - Vol 4 Part E 7.7.65.10: with the LE Enhanced Connection Complete event unmasked (LE event
      mask bit 9), a new connection is reported by it *instead of* LE Connection Complete (the
      kernel waits for the enhanced one and otherwise cancels a connection it already has);
    - 7.8.13: LE Create Connection Cancel without a pending connection is Command Disallowed;
      with one, it ends with LE (Enhanced) Connection Complete, Unknown Connection Identifier."""
    from bumble import hci
    from bumble.controller import Controller

    enhanced_bit = 1 << 9
    no_rpa = hci.Address("00:00:00:00:00:00")

    class HostController(Controller):
        def send_hci_packet(self, packet) -> None:
            if isinstance(packet, hci.HCI_LE_Connection_Complete_Event) and self.le_event_mask & enhanced_bit:
                packet = hci.HCI_LE_Enhanced_Connection_Complete_Event(
                    status=packet.status, connection_handle=packet.connection_handle, role=packet.role,
                    peer_address_type=packet.peer_address_type, peer_address=packet.peer_address,
                    local_resolvable_private_address=no_rpa, peer_resolvable_private_address=no_rpa,
                    connection_interval=packet.connection_interval, peripheral_latency=packet.peripheral_latency,
                    supervision_timeout=packet.supervision_timeout,
                    central_clock_accuracy=packet.central_clock_accuracy)
            super().send_hci_packet(packet)

        def on_hci_le_create_connection_cancel_command(self, _command):
            pending, self.pending_le_connection = self.pending_le_connection, None
            if pending is None:
                return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
            failed = hci.HCI_LE_Connection_Complete_Event(
                status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, connection_handle=0, role=0,
                peer_address_type=getattr(pending, "peer_address_type", 0),
                peer_address=getattr(pending, "peer_address", no_rpa), connection_interval=0,
                peripheral_latency=0, supervision_timeout=0, central_clock_accuracy=0)
            asyncio.get_running_loop().call_soon(self.send_hci_packet, failed)  # after the Command Complete
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)

    return HostController


class Air:
    """One bumble LocalLink with NUS peripherals, each with its own host-facing controller
    served over an HCI transport (`hci_spec`, e.g. ``tcp-server:127.0.0.1:PORT``)."""

    def __init__(self) -> None:
        from bumble.link import LocalLink

        self.link = LocalLink()
        self.peripherals: list[Peripheral] = []
        self._transports: list = []
        self._tasks: list[asyncio.Task] = []

    async def add_host_controller(self, hci_spec: str, name: str = "host-controller") -> None:
        """A controller on the air for a host stack reaching it over `hci_spec` (``tcp-server:H:P``
        for fedtiny's bumble backend, ``vhci`` for the kernel's Bluetooth, i.e. BlueZ)."""
        from bumble.transport import open_transport

        transport = await open_transport(hci_spec)
        self._transports.append(transport)
        _host_controller_class()(name, host_source=transport.source, host_sink=transport.sink, link=self.link)

    async def add_peripheral(self, hci_spec: str | None, address: str, on_write,
                             faults: Faults | None = None) -> Peripheral:
        """A NUS peripheral at `address`, with its own host-facing controller on `hci_spec` (None:
        the host reaches it through a controller the air already has); `on_write(peripheral,
        data)` gets what the host writes to RX."""
        from bumble import gatt, hci
        from bumble.controller import Controller
        from bumble.device import Device
        from bumble.host import Host
        from bumble.transport.common import AsyncPipeSink

        if hci_spec is not None:
            await self.add_host_controller(hci_spec, f"host-controller-{address}")
        board = Controller(f"board-controller-{address}", link=self.link)
        device = Device(name="fedtiny-board", address=hci.Address(address), host=Host(board, AsyncPipeSink(board)))
        tx = gatt.Characteristic(NUS_TX, gatt.Characteristic.Properties.NOTIFY, gatt.Characteristic.READABLE, b"")
        peripheral = Peripheral(device, tx, faults or Faults(), address)
        rx = gatt.Characteristic(NUS_RX, gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE
                                 | gatt.Characteristic.Properties.WRITE, gatt.Characteristic.WRITEABLE,
                                 gatt.CharacteristicValue(write=lambda _conn, value: on_write(peripheral, bytes(value))))
        device.add_service(gatt.Service(NUS, [rx, tx]))
        await device.power_on()
        await device.start_advertising(auto_restart=True)
        self.peripherals.append(peripheral)
        return peripheral

    async def close(self) -> None:
        """Stop the boards' pumps and close every HCI transport (a vhci adapter goes away)."""
        for task in self._tasks:
            task.cancel()
        for transport in self._transports:
            await transport.close()
        self._tasks, self._transports = [], []

    async def add_board(self, hci_spec: str | None, address: str, uart: tuple[str, int],
                        faults: Faults | None = None) -> Peripheral:
        """A BLE-UART bridge chip in front of a board's UART (TCP): RX goes to the UART, what the
        UART says is notified. The UART is reopened whenever it closes (the board restarted)."""
        state: dict = {"writer": None}

        def to_board(peripheral: Peripheral, data: bytes) -> None:
            peripheral.saw_request(data)
            if state["writer"] is not None:
                state["writer"].write(data)
            asyncio.get_running_loop().create_task(peripheral.maybe_cut())

        peripheral = await self.add_peripheral(hci_spec, address, to_board, faults)

        async def pump() -> None:
            while True:
                try:
                    reader, state["writer"] = await asyncio.open_connection(*uart)
                except OSError:
                    await asyncio.sleep(0.2)  # the board is (re)booting
                    continue
                while data := await reader.read(4096):
                    await peripheral.notify(data)
                state["writer"] = None

        self._tasks.append(asyncio.get_running_loop().create_task(pump()))
        return peripheral


def bluez_adapters() -> tuple[int, int]:
    """(adapters the kernel has, those BlueZ offers powered on D-Bus, where bleak finds them)."""
    import subprocess
    from pathlib import Path

    names = sorted(p.name for p in Path("/sys/class/bluetooth").glob("hci*") if ":" not in p.name)
    powered = 0
    for name in names:
        out = subprocess.run(["dbus-send", "--system", "--print-reply", "--dest=org.bluez", f"/org/bluez/{name}",
                              "org.freedesktop.DBus.Properties.Get", "string:org.bluez.Adapter1", "string:Powered"],
                             capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL).stdout
        powered += "boolean true" in out
    return len(names), powered


def wait_for_bluez(powered: int, timeout: float = 20.0) -> None:
    """Wait until the kernel has exactly `powered` adapters and BlueZ has powered them all (0:
    none left): a vhci controller is usable by bleak only once bluetoothd has taken and
    powered it."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        have, on = bluez_adapters()
        if have == on == powered:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"BlueZ has {have} adapters, {on} powered, after {timeout:g} s (wanted {powered} powered)")
        time.sleep(0.2)


async def _serve(boards: list[tuple[str, tuple[str, int], str | None]], host_hci: str | None, faults: dict) -> None:
    air = Air()
    if host_hci is not None:
        await air.add_host_controller(host_hci)
    for i, (address, uart, hci_spec) in enumerate(boards):
        await air.add_board(hci_spec, address, uart, Faults.parse(faults.get(str(i))))
    print(f"air with {len(boards)} BLE-UART peripherals ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m fedtiny.devices.ble_bumble [--host-hci SPEC] ADDRESS=UART_PORT[@HCI_PORT] ...``:
    one air with a NUS peripheral per board, forwarding to the board's UART on
    127.0.0.1:UART_PORT. The host reaches a board through its own controller, served on HCI over
    TCP at 127.0.0.1:HCI_PORT (fedtiny's bumble backend), or through one controller for all on
    ``--host-hci`` (``vhci``: the kernel's Bluetooth, for BlueZ). The environment's
    ``FEDTINY_BLE_FAULTS`` (JSON: board index -> :class:`Faults` fields) makes it misbehave."""
    import argparse
    import json
    import signal

    ap = argparse.ArgumentParser(prog="python -m fedtiny.devices.ble_bumble",
                                 description="a virtual BLE air with a BLE-UART peripheral per emulated board")
    ap.add_argument("--host-hci", default=None, help="one host-facing controller for every board (e.g. vhci)")
    ap.add_argument("boards", nargs="+", help="ADDRESS=UART_PORT[@HCI_PORT]")
    args = ap.parse_args(argv)
    boards = []
    for arg in args.boards:
        address, ports = arg.split("=", 1)
        uart, _, hci_port = ports.partition("@")
        if bool(hci_port) == bool(args.host_hci):
            ap.error(f"{arg}: give each board an @HCI_PORT, or --host-hci for all of them")
        boards.append((address, ("127.0.0.1", int(uart)), f"tcp-server:127.0.0.1:{int(hci_port)}" if hci_port else None))
    faults = json.loads(os.environ.get("FEDTINY_BLE_FAULTS") or "{}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(_serve(boards, args.host_hci, faults))
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
