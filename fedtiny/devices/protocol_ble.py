"""``ble://`` URLs for pyserial's ``serial_for_url``, so everything that opens a board's link
(``BoardClient``, the bridge, ``fedtiny board info``/``serve``, ``devices.urls``) works over BLE.

    ble://F0:F1:F2:F3:F4:F5                         bleak's platform backend (BlueZ on Linux)
    ble://F0:F1:F2:F3:F4:F5?hci=tcp-client:H:P      bleak over bumble, HCI over a bumble transport

The link is the Nordic UART Service: the host writes RX (write without response), the board
notifies TX. Writes are cut at MTU - 3; every ``window`` packets (default 8) one is written with
response, so a peripheral with small buffers never receives more than a window ahead (flow
control). Notifications are reassembled into a byte stream. A lost connection makes the next
read or write raise, and the bridge opens the link again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import parse_qs, urlparse

from serial import SerialBase, SerialException


class Serial(SerialBase):
    def open(self) -> None:
        if self._port is None:
            raise SerialException("ble:// needs an address")
        url = urlparse(self._port)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self._address = url.netloc or url.path.lstrip("/")
        self._hci = query.get("hci")
        self._mtu_wanted = int(query.get("mtu", 247))
        self._window = max(1, int(query.get("window", 8)))
        self._rx = bytearray()
        self._cond = threading.Condition()
        self._lost = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"ble-{self._address}")
        self._thread.start()
        try:
            self._call(self._connect(), timeout=30.0)
        except Exception as err:  # noqa: BLE001 - any failure to connect is the port's
            self._stop_loop()
            raise SerialException(f"could not connect to {self._address} over BLE: {err}") from err
        self.is_open = True

    async def _connect(self) -> None:
        from bleak import BleakClient

        from fedtiny.devices.ble_bumble import NUS_TX, BumbleBleakClient

        kwargs = {"backend": BumbleBleakClient, "hci": self._hci, "mtu": self._mtu_wanted} if self._hci else {}
        self._client = BleakClient(self._address, disconnected_callback=lambda _c: self._on_lost(), timeout=10.0,
                                   **kwargs)
        await self._client.connect()
        await self._client.start_notify(NUS_TX, self._on_notify)

    def _on_notify(self, _char, data: bytearray) -> None:
        with self._cond:
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
        return int(self._client.mtu_size)

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
        self._call(self._write(data), timeout=60.0)
        return len(data)

    async def _write(self, data: bytes) -> None:
        from fedtiny.devices.ble_bumble import NUS_RX

        n = self.mtu - 3
        chunks = [data[i:i + n] for i in range(0, len(data), n)]
        for k, chunk in enumerate(chunks):
            # every `window`-th packet, and the last, waits for the peripheral's write response
            response = (k + 1) % self._window == 0 or k == len(chunks) - 1
            await self._client.write_gatt_char(NUS_RX, chunk, response=response)

    def reset_input_buffer(self) -> None:
        with self._cond:
            self._rx.clear()

    def reset_output_buffer(self) -> None:
        pass
