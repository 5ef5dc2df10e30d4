"""WORK IN PROGRESS (issue 20): bleak's own client API over the bumble backend, through HCI over
TCP to a bumble LocalLink with a NUS peripheral that echoes: MTU exchange and a 4 KB echo cut at
MTU-3, for MTU 247 and 23."""

from __future__ import annotations

import asyncio
import socket

import pytest

pytest.importorskip("bleak")
pytest.importorskip("bumble")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mtu", [247, 23])
def test_bleak_over_bumble_echoes_through_nus(mtu):
    from bleak import BleakClient

    from fedtiny.devices.ble_bumble import NUS_RX, NUS_TX, BumbleBleakClient, serve_air

    async def main() -> bytes:
        port = _free_port()

        def echo(device, tx, data):
            asyncio.get_event_loop().create_task(device.notify_subscribers(tx, data))

        air = asyncio.create_task(serve_air(f"tcp-server:127.0.0.1:{port}", "F0:F1:F2:F3:F4:F5", echo))
        await asyncio.sleep(0.3)
        client = BleakClient("F0:F1:F2:F3:F4:F5", backend=BumbleBleakClient, hci=f"tcp-client:127.0.0.1:{port}",
                             timeout=10, mtu=mtu)
        await client.connect()
        await air
        assert client.mtu_size == mtu
        got, done = bytearray(), asyncio.Event()

        def on_notify(_char, data):
            got.extend(data)
            if len(got) >= 4096:
                done.set()

        await client.start_notify(NUS_TX, on_notify)
        data = bytes(range(256)) * 16
        for i in range(0, len(data), mtu - 3):
            await client.write_gatt_char(NUS_RX, data[i:i + mtu - 3], response=False)
        await asyncio.wait_for(done.wait(), 20)
        await client.disconnect()
        return bytes(got)

    assert asyncio.run(main()) == bytes(range(256)) * 16
