"""Boards over BLE, the first part (issue 20): bleak's own client API over fedtiny's bumble backend,
through HCI over TCP to a bumble LocalLink ("the air"), reaches a NUS peripheral: a 4 KB echo cut
at MTU - 3 comes back intact at MTU 247 and 23; and an emulated board behind the NUS peripheral
(a BLE-UART bridge chip) answers HELLO and takes a multi-frame LOAD through ``ble://`` URLs, the
way every serial URL is opened. No mocks: bleak's client, bumble's host, controllers and GATT."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.cortex_m import needs_cortex_m


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mtu", [247, 23])
def test_bleak_over_bumble_echoes_through_nus(mtu):
    from bleak import BleakClient

    from fedtiny.devices.ble_bumble import NUS_RX, NUS_TX, Air, BumbleBleakClient

    async def main() -> bytes:
        port = _free_port()

        def echo(peripheral, data):
            asyncio.get_running_loop().create_task(peripheral.device.notify_subscribers(peripheral.tx, data))

        await Air().add_peripheral(f"tcp-server:127.0.0.1:{port}", "F0:F1:F2:F3:F4:F5", echo)
        client = BleakClient("F0:F1:F2:F3:F4:F5", backend=BumbleBleakClient, hci=f"tcp-client:127.0.0.1:{port}",
                             timeout=10, mtu=mtu)
        await client.connect()
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


@needs_cortex_m
def test_a_board_over_ble_answers_hello_and_takes_its_model(tmp_path):
    """An emulated board's UART behind the bumble NUS peripheral (a BLE-UART bridge chip): the
    host's BoardClient opens ble://ADDRESS?hci=... as it opens a serial port, and HELLO and a
    multi-frame LOAD go through the framed protocol cut at MTU - 3 and reassembled."""
    import threading
    import zlib

    import numpy as np

    from tests.cortex_m import build_firmware
    from tests.models import random_model
    from fedtiny.devices.emulate import Fleet
    from fedtiny.devices.link import BoardClient, data_block
    from fedtiny.devices.ble_bumble import Air
    from fedtiny.trainer import Model

    rng = np.random.default_rng(42)
    model = Model(random_model(rng, frozen=("conv2d",), trainable=("dwconv2d", "conv2d", "flatten", "fc"),
                               input_shape=(6, 6, 2)))
    x = rng.integers(-128, 128, (40, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 40).astype(np.uint8)
    firmware = build_firmware(tmp_path / "fw", "ft_board_mps2")
    with Fleet(firmware, [data_block(model.prefix_features(x), y)], tmp_path / "board", in_process_bridges=True) as fleet:
        uart_port = int(fleet.board_urls[0].rsplit(":", 1)[1])
        hci_port = _free_port()
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(Air().add_board(f"tcp-server:127.0.0.1:{hci_port}", "F0:F1:F2:F3:F4:F5",
                                                         ("127.0.0.1", uart_port)), loop).result(10)
        for mtu in (247, 23):
            client = BoardClient(f"ble://F0:F1:F2:F3:F4:F5?hci=tcp-client:127.0.0.1:{hci_port}&mtu={mtu}",
                                 timeout=5.0, retries=3)
            assert client.port.mtu == mtu
            info = client.hello()
            assert info["protocol"] == 1 and info["samples"] == 40
            blob = model.to_bytes()
            client.load_model(blob)
            assert client.hello()["model_crc32"] == zlib.crc32(blob)
            client.close()
        loop.call_soon_threadsafe(loop.stop)
