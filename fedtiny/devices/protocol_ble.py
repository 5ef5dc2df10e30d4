"""``ble://`` URLs for pyserial's ``serial_for_url``, so everything that opens a board's link
(``BoardClient``, the bridge, ``fedtiny board info``/``serve``, ``devices.urls``) works over BLE.

    ble://F0:F1:F2:F3:F4:F5                         bleak's platform backend (BlueZ on Linux)
    ble://F0:F1:F2:F3:F4:F5?hci=tcp-client:H:P      bleak over bumble, HCI over a bumble transport
    ...?mtu=247&window=8                            ATT MTU asked for; write-with-response window
    ...&dl=251&phy=1&interval=7.5&ppe=6             the connection's LL data length, PHY, interval
                                                    and packets per event, for the air counts
    ...&snoop=/tmp/host.btsnoop                     (bumble) the host's HCI traffic for Wireshark

The link is the Nordic UART Service: the host writes RX (write without response), the board
notifies TX. Writes are cut at MTU - 3; every ``window`` packets (default 8) one is written with
response, so a peripheral with small buffers never receives more than a window ahead (flow
control). Notifications are reassembled into a byte stream. A lost connection makes the next
read or write raise, and the bridge opens the link again (a BLE disconnect does not reset the
board, so the bridge repeats the request it was in: ``reconnectable``).

Every ATT operation is counted (:meth:`Serial.air`): writes with and without response and
notifications, with their value bytes, and the LL packets of each burst, which
:mod:`fedtiny.budgets.ble` turns into bytes over the air, radio time and energy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import parse_qs, urlparse

from serial import SerialBase, SerialException

from fedtiny.budgets.ble import AirCounter, LinkParams


class _BluezConnectLock:
    """An exclusive lock across this machine's processes (a file lock under the temp directory)
    for connecting through BlueZ; the wait runs in a thread so the event loop goes on."""

    async def __aenter__(self):
        import fcntl
        import tempfile

        self._file = open(f"{tempfile.gettempdir()}/fedtiny-bluez-connect.lock", "a+")  # noqa: SIM115
        await asyncio.to_thread(fcntl.flock, self._file, fcntl.LOCK_EX)
        return self

    async def __aexit__(self, *exc) -> None:
        self._file.close()  # releases the lock


async def _bluez_known_device(address: str):
    """The BLEDevice of ``address`` if BlueZ's default adapter already has its D-Bus object, else None."""
    from bleak.backends.bluezdbus.manager import get_global_bluez_manager
    from bleak.backends.device import BLEDevice

    manager = await get_global_bluez_manager()
    path = f"{manager.get_default_adapter()}/dev_{address.upper().replace(':', '_')}"
    try:
        manager.get_device_address(path)
    except Exception:  # noqa: BLE001 - bleak raises BleakError for an unknown device
        return None
    return BLEDevice(address.upper(), manager.get_device_name(path), {"path": path, "props": None})


class Serial(SerialBase):
    reconnectable = True  # a lost BLE connection leaves the board as it was: a request may be repeated

    def open(self) -> None:
        if self._port is None:
            raise SerialException("ble:// needs an address")
        url = urlparse(self._port)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        unknown = sorted(set(query) - {"hci", "mtu", "window", "dl", "phy", "interval", "ppe", "snoop"})
        if unknown:
            raise SerialException(f"{self._port}: unknown ble:// parameters {unknown} (hci, mtu, window, dl, phy, "
                                  "interval, ppe, snoop)")
        self._address = url.netloc or url.path.lstrip("/")
        self._hci = query.get("hci")
        self._params = {k: query[k] for k in ("dl", "phy", "interval", "ppe") if k in query}
        self._snoop = query.get("snoop")
        try:
            self._mtu_wanted = int(query.get("mtu", 247))
            self._window = int(query.get("window", 8))
            LinkParams(self._mtu_wanted, int(self._params.get("dl", 251)), int(self._params.get("phy", 1)),
                       float(self._params.get("interval", 7.5)), int(self._params.get("ppe", 6)))
            if self._window < 1:
                raise ValueError(f"window must be >= 1, got {self._window}")
        except ValueError as err:
            raise SerialException(f"{self._port}: {err}") from None
        self._rx = bytearray()
        self._cond = threading.Condition()
        self._lost = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"ble-{self._address}")
        self._thread.start()
        try:
            self._call(self._connect(), timeout=60.0)
        except Exception as err:  # noqa: BLE001 - any failure to connect is the port's
            self._stop_loop()
            raise SerialException(f"could not connect to {self._address} over BLE: {err}") from err
        self.is_open = True

    async def _connect(self) -> None:
        from bleak import BleakClient

        from fedtiny.devices.ble_bumble import NUS_TX, BumbleBleakClient

        if self._hci:
            self._client = BleakClient(self._address, disconnected_callback=lambda _c: self._on_lost(), timeout=10.0,
                                       backend=BumbleBleakClient, hci=self._hci, mtu=self._mtu_wanted,
                                       snoop=self._snoop)
            await self._client.connect()
        else:
            await self._connect_bluez()
        acquire = getattr(getattr(self._client, "_backend", None), "_acquire_mtu", None)
        if acquire is not None:  # BlueZ negotiates the MTU itself; bleak learns it this way (AcquireWrite)
            await acquire()
        self._air = AirCounter(self.link_params())
        await self._client.start_notify(NUS_TX, self._on_notify)

    async def _connect_bluez(self) -> None:
        """Connect through BlueZ, one host process at a time (a controller initiates one LE
        connection at a time; parallel scans and connects from several bridges failed), up to
        three tries in 60 s. A device BlueZ already knows (its D-Bus object outlives a disconnect
        by about 30 s) is connected by its object path: a new scan does not report it again while
        its advertising is unchanged, so looking it up by scanning failed on every reconnect."""
        from bleak import BleakClient

        deadline = time.monotonic() + 60.0
        tries = 0
        while True:
            tries += 1
            async with _BluezConnectLock():
                target = await _bluez_known_device(self._address) or self._address
                self._client = BleakClient(target, disconnected_callback=lambda _c: self._on_lost(), timeout=20.0)
                try:
                    await self._client.connect()
                    return
                except Exception:  # noqa: BLE001 - retried, then raised to open() with its reason
                    if tries >= 3 or time.monotonic() > deadline:
                        raise
            await asyncio.sleep(1.0)

    def link_params(self) -> LinkParams:
        """The connection's parameters: its negotiated MTU, the rest from the URL (defaults:
        data length 251, 1M PHY, 7.5 ms interval, 6 packets per event)."""
        p = self._params
        return LinkParams(mtu=self.mtu, data_length=int(p.get("dl", 251)), phy=int(p.get("phy", 1)),
                          interval_ms=float(p.get("interval", 7.5)), packets_per_event=int(p.get("ppe", 6)))

    def _on_notify(self, _char, data: bytearray) -> None:
        with self._cond:
            self._air.notification(len(data))
            self._rx.extend(data)
            self._cond.notify_all()

    def _on_lost(self) -> None:
        with self._cond:
            self._lost = True
            self._cond.notify_all()

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def close(self) -> None:
        if self.is_open:
            try:
                self._call(self._client.disconnect(), timeout=10.0)
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._stop_loop()
        self.is_open = False

    def _reconfigure_port(self, *args, **kwargs) -> None:
        pass  # no baud rate or parity over the air

    @property
    def mtu(self) -> int:
        """The ATT MTU the host writes with: the negotiated one, at most the one asked for (BlueZ
        negotiates by itself, up to 517; writes of 514 bytes were lost on the virtual air)."""
        return min(int(self._client.mtu_size), self._mtu_wanted)

    def air(self) -> dict:
        """This connection's counts so far (:class:`fedtiny.budgets.ble.AirCounter`): ATT
        operations, LL packets and bytes on air each way, connection events."""
        with self._cond:
            return self._air.snapshot()

    @property
    def in_waiting(self) -> int:
        with self._cond:
            return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        with self._cond:
            while not self._rx and not self._lost:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return b""
                self._cond.wait(left)
            if not self._rx and self._lost:
                raise SerialException("BLE link lost")
            out = bytes(self._rx[:size])
            del self._rx[:size]
            return out

    def write(self, data) -> int:
        if self._lost:
            raise SerialException("BLE link lost")
        data = bytes(data)
        try:
            self._call(self._write(data), timeout=60.0)
        except SerialException:
            raise
        except Exception as err:  # noqa: BLE001 - whatever the stack raises when the link goes
            raise SerialException(f"BLE write failed: {type(err).__name__}: {err}") from err
        return len(data)

    async def _write(self, data: bytes) -> None:
        n = self.mtu - 3
        chunks = [data[i:i + n] for i in range(0, len(data), n)]
        sent: list[int] = []
        responses: list[bool] = []
        try:
            await self._write_chunks(chunks, sent, responses)
        finally:
            with self._cond:
                self._air.write_burst(sent, responses)

    async def _write_chunks(self, chunks: list[bytes], sent: list[int], responses: list[bool]) -> None:
        from fedtiny.devices.ble_bumble import NUS_RX

        for k, chunk in enumerate(chunks):
            if self._lost:
                raise SerialException("BLE link lost")
            # every `window`-th packet, and the last, waits for the peripheral's write response
            response = (k + 1) % self._window == 0 or k == len(chunks) - 1
            await asyncio.wait_for(self._client.write_gatt_char(NUS_RX, chunk, response=response), 10.0)
            sent.append(len(chunk))
            responses.append(response)

    def reset_input_buffer(self) -> None:
        with self._cond:
            self._rx.clear()

    def reset_output_buffer(self) -> None:
        pass
