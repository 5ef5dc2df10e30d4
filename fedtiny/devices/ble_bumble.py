"""bleak's client API over a bumble host stack, and a BLE-UART peripheral for tests.

:class:`BumbleBleakClient` is a bleak backend (``BleakClient(address, backend=BumbleBleakClient)``)
whose Bluetooth host is bumble, talking HCI to a controller over a bumble transport
(``FEDTINY_BLE_HCI``, e.g. ``tcp-client:127.0.0.1:PORT``): what lets the production bleak code
run in CI, where the kernel has no Bluetooth. :func:`serve_air` is the other side for tests: one
bumble ``LocalLink`` ("the air") with a host-facing controller served over HCI and a peripheral
offering the Nordic UART Service; :func:`serve_board` forwards that service to a board's UART
(a BLE-UART bridge chip, or a BLE MCU's radio core, in front of an emulated board).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection

NUS = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_RX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"  # host -> peripheral: write without response
NUS_TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"  # peripheral -> host: notify
HOST_ADDRESS = "F0:F1:F2:F3:F4:F0"

_PROPERTIES = (("BROADCAST", "broadcast"), ("READ", "read"), ("WRITE_WITHOUT_RESPONSE", "write-without-response"),
               ("WRITE", "write"), ("NOTIFY", "notify"), ("INDICATE", "indicate"))


def _uuid(u) -> str:
    """A bumble UUID as bleak spells UUIDs (128-bit, lower case)."""
    from bleak.uuids import normalize_uuid_str

    return normalize_uuid_str(u.to_hex_str("-"))


class BumbleBleakClient(BaseBleakClient):
    def __init__(self, address_or_ble_device, *, disconnected_callback=None, timeout: float = 10.0,
                 hci: str | None = None, mtu: int = 247, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout, **kwargs)
        self._hci = hci or os.environ.get("FEDTINY_BLE_HCI", "")
        self._want_mtu = mtu
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
        self._device = Device.with_hci("fedtiny-host", hci.Address(HOST_ADDRESS), self._transport.source,
                                       self._transport.sink)
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


async def serve_air(hci_spec: str, peripheral_address: str, on_write, ready: asyncio.Event | None = None):
    """The air for tests: a LocalLink with a controller served over `hci_spec` (for the host's
    bumble stack) and a peripheral offering NUS; `on_write(device, tx_characteristic, data)` gets
    what the host writes to RX. Returns (peripheral device, TX characteristic)."""
    from bumble import gatt, hci
    from bumble.controller import Controller
    from bumble.device import Device
    from bumble.host import Host
    from bumble.link import LocalLink
    from bumble.transport import open_transport
    from bumble.transport.common import AsyncPipeSink

    link = LocalLink()
    transport = await open_transport(hci_spec)
    Controller("host-controller", host_source=transport.source, host_sink=transport.sink, link=link)
    board = Controller("board-controller", link=link)
    device = Device(name="fedtiny-board", address=hci.Address(peripheral_address), host=Host(board, AsyncPipeSink(board)))
    tx = gatt.Characteristic(NUS_TX, gatt.Characteristic.Properties.NOTIFY, gatt.Characteristic.READABLE, b"")
    rx = gatt.Characteristic(NUS_RX, gatt.Characteristic.Properties.WRITE_WITHOUT_RESPONSE
                             | gatt.Characteristic.Properties.WRITE, gatt.Characteristic.WRITEABLE,
                             gatt.CharacteristicValue(write=lambda _conn, value: on_write(device, tx, bytes(value))))
    device.add_service(gatt.Service(NUS, [rx, tx]))
    await device.power_on()
    await device.start_advertising(auto_restart=True)
    if ready is not None:
        ready.set()
    return device, tx, transport


async def serve_board(hci_spec: str, peripheral_address: str, uart: tuple[str, int]):
    """A BLE-UART bridge chip for tests: the NUS peripheral of :func:`serve_air` whose RX goes to
    a board's UART (a TCP socket: an emulated board's) and whose TX notifies what the UART says,
    cut at the connection's MTU - 3."""
    reader, writer = await asyncio.open_connection(*uart)

    def to_board(_device, _tx, data: bytes) -> None:
        writer.write(data)

    device, tx, transport = await serve_air(hci_spec, peripheral_address, to_board)

    async def to_host() -> None:
        while True:
            data = await reader.read(4096)
            if not data:
                return
            mtu = min((c.att_mtu for c in device.connections.values()), default=23)
            for i in range(0, len(data), mtu - 3):
                await device.notify_subscribers(tx, data[i:i + mtu - 3])

    pump = asyncio.create_task(to_host())
    return device, pump, transport, writer
