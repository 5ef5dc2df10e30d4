"""Boards over BLE (issue 20): bleak's own client API reaches a NUS peripheral on a virtual air
(bumble's LocalLink and controllers) through fedtiny's bumble backend (HCI over TCP), or through
BlueZ in the slow tier (``FEDTINY_BLE_STACK=bluez``, tests/ble_stack.py). A 4 KB echo cut at
MTU - 3 comes back intact at MTU 247 and 23; an emulated board behind the NUS peripheral (a
BLE-UART bridge chip) answers HELLO and takes a multi-frame LOAD through ``ble://`` URLs, the way
every serial URL is opened, and lost or truncated notifications cost a retry, not a result. The
air counts are checked against bumble's own PDUs and a btsnoop capture of the host's HCI
traffic. No mocks: bleak's client, bumble's host, controllers and GATT."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from tests.ble_stack import STACK, AirThread, bumble_only
from tests.cortex_m import needs_cortex_m


@pytest.mark.parametrize("mtu", [247, 23])
def test_bleak_echoes_through_nus(mtu):
    """bleak's BleakClient (over fedtiny's bumble backend; in the BlueZ tier, its BlueZ backend)."""
    from bleak import BleakClient

    from fedtiny.devices.ble_bumble import NUS_RX, NUS_TX, BumbleBleakClient

    def echo(peripheral, data):
        asyncio.get_running_loop().create_task(peripheral.device.notify_subscribers(peripheral.tx, data))

    with AirThread() as air:
        air.peripheral("F0:F1:F2:F3:F4:F5", echo)

        async def main() -> bytes:
            if STACK == "bumble":
                client = BleakClient("F0:F1:F2:F3:F4:F5", backend=BumbleBleakClient, timeout=10, mtu=mtu,
                                     hci=f"tcp-client:127.0.0.1:{air.ports['F0:F1:F2:F3:F4:F5']}")
            else:
                client = BleakClient("F0:F1:F2:F3:F4:F5", timeout=30)
            await client.connect()
            if STACK == "bumble":
                assert client.mtu_size == mtu
                n = mtu - 3
            else:
                n = 20 if mtu == 23 else 244  # BlueZ negotiates its own MTU: write at most what both allow
            got, done = bytearray(), asyncio.Event()

            def on_notify(_char, data):
                got.extend(data)
                if len(got) >= 4096:
                    done.set()

            await client.start_notify(NUS_TX, on_notify)
            data = bytes(range(256)) * 16
            for i in range(0, len(data), n):
                await client.write_gatt_char(NUS_RX, data[i:i + n], response=False)
            await asyncio.wait_for(done.wait(), 30)
            await client.disconnect()
            return bytes(got)

        assert asyncio.run(main()) == bytes(range(256)) * 16


@pytest.fixture(scope="module")
def firmware(tmp_path_factory):
    from tests.cortex_m import build_firmware

    return build_firmware(tmp_path_factory.mktemp("fw"), "ft_board_mps2")


@contextlib.contextmanager
def _board_behind_the_air(firmware, workdir, seed: int, samples: int, address: str, faults=None):
    """An emulated board holding `samples` random samples of a small random model, its UART
    behind a NUS peripheral at `address` on the air: yields (model, air, peripheral)."""
    from fedtiny.devices.emulate import Fleet
    from fedtiny.devices.link import data_block
    from fedtiny.trainer import Model
    from tests.models import random_model

    rng = np.random.default_rng(seed)
    model = Model(random_model(rng, frozen=("conv2d",), trainable=("dwconv2d", "conv2d", "flatten", "fc"),
                               input_shape=(6, 6, 2)))
    x = rng.integers(-128, 128, (samples, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, samples).astype(np.uint8)
    with Fleet(firmware, [data_block(model.prefix_features(x), y)], workdir, in_process_bridges=True) as fleet, \
            AirThread() as air:
        yield model, air, air.board(address, ("127.0.0.1", int(fleet.board_urls[0].rsplit(":", 1)[1])), faults)


@needs_cortex_m
def test_a_board_over_ble_answers_hello_and_takes_its_model(firmware, tmp_path):
    """An emulated board's UART behind the bumble NUS peripheral (a BLE-UART bridge chip): the
    host's BoardClient opens ble://ADDRESS?hci=... as it opens a serial port, and HELLO and a
    multi-frame LOAD go through the framed protocol cut at MTU - 3 and reassembled."""
    import zlib

    from fedtiny.devices.link import BoardClient

    with _board_behind_the_air(firmware, tmp_path / "board", 42, 40, "F0:F1:F2:F3:F4:F5") as (model, air, _):
        for mtu in (247, 23):
            client = BoardClient(air.url("F0:F1:F2:F3:F4:F5", mtu=mtu), timeout=5.0, retries=3)
            if STACK == "bumble":
                assert client.port.mtu == mtu
            info = client.hello()
            assert info["protocol"] == 1 and info["samples"] == 40
            blob = model.to_bytes()
            client.load_model(blob)
            assert client.hello()["model_crc32"] == zlib.crc32(blob)
            client.close()


# -- bytes over the air ------------------------------------------------------------------------


def _ll_packets_on_air(l2cap_pdu: bytes, data_length: int, phy: int) -> list[bytes]:
    """The link-layer packets that carry one L2CAP PDU, built byte by byte (Core 5.x Vol 6 Part B
    2.1 and 2.4): preamble (1 byte on 1M, 2 on 2M), access address, a 2-byte data PDU header
    (LLID 2 start / 1 continuation, length), the payload fragment, a 3-byte CRC."""
    out = []
    for k, i in enumerate(range(0, len(l2cap_pdu), data_length)):
        frag = l2cap_pdu[i:i + data_length]
        header = bytes([0x02 if k == 0 else 0x01, len(frag)])
        out.append(b"\xaa" * phy + b"\xd6\xbe\x89\x8e" + header + frag + b"\x00\x00\x00")
    return out


@pytest.mark.parametrize("mtu,dl,phy", [(23, 27, 1), (247, 251, 1), (247, 27, 1), (185, 251, 2), (517, 251, 1)])
def test_air_counts_equal_packets_built_from_bumbles_att_and_l2cap_pdus(mtu, dl, phy):
    """Oracle: bumble's own ATT and L2CAP serialisers, and LL packets built byte by byte; the
    counter's packets and bytes on air for writes, write responses and notifications of every
    size up to MTU - 3 must equal them."""
    from bumble import att, l2cap

    from fedtiny.budgets.ble import AirCounter, LinkParams

    link = LinkParams(mtu=mtu, data_length=dl, phy=phy)
    rng = np.random.default_rng(mtu + dl)
    sizes = sorted({0, 1, mtu - 3, *rng.integers(0, mtu - 2, 20).tolist()})
    for v in sizes:
        value = bytes(v)
        for pdu, kind in ((att.ATT_Write_Command(attribute_handle=0x0012, attribute_value=value), "write"),
                          (att.ATT_Handle_Value_Notification(attribute_handle=0x0014, attribute_value=value), "notify")):
            l2 = bytes(l2cap.L2CAP_PDU(cid=4, payload=bytes(pdu)))
            packets = _ll_packets_on_air(l2, dl, phy)
            c = AirCounter(link)
            if kind == "write":
                c.write_burst([v], [False])
                got = (c.counts["packets_down"], c.counts["air_bytes_down"], c.counts["packets_up"])
                assert got == (len(packets), sum(map(len, packets)), 0), (v, kind)
            else:
                c.notification(v)
                got = (c.counts["packets_up"], c.counts["air_bytes_up"], c.counts["packets_down"])
                assert got == (len(packets), sum(map(len, packets)), 0), (v, kind)
    c = AirCounter(link)
    c.write_burst([5], [True])  # with response: the peripheral's Write Response goes up
    resp = _ll_packets_on_air(bytes(l2cap.L2CAP_PDU(cid=4, payload=bytes(att.ATT_Write_Response()))), dl, phy)
    assert (c.counts["packets_up"], c.counts["air_bytes_up"]) == (len(resp), sum(map(len, resp)))


def test_radio_time_and_energy_of_a_worked_example():
    """By hand, from the rules in fedtiny.budgets.ble: 1,000 bytes written at MTU 247 / DL 251
    (4 writes of 244 and one of 24, the last with response), then 500 bytes notified (244, 244, 12)."""
    from fedtiny.budgets.ble import AirCounter, BleRadio, LinkParams, radio

    link = LinkParams(mtu=247, data_length=251, phy=1, interval_ms=7.5, packets_per_event=6)
    c = AirCounter(link)
    c.write_burst([244, 244, 244, 244, 24], [False, False, False, False, True])
    for v in (244, 244, 12):
        c.notification(v)
    n = c.snapshot()
    # writes: 5 packets of 251, 251, 251, 251, 31 bytes of L2CAP + 10 each; one write response (5 + 10)
    assert (n["packets_down"], n["air_bytes_down"]) == (5, 4 * 261 + 41)
    # up: the write response and 3 notifications (261, 261, 29)
    assert (n["packets_up"], n["air_bytes_up"]) == (4, 15 + 261 + 261 + 29)
    # events: the burst of 5 packets (1 event) + 1 for the response + the notifications (1 event)
    assert n["events"] == 3
    r = radio(n, link, BleRadio(tx_mw=10.0, rx_mw=20.0, event_overhead_us=100.0))
    pairs = 9  # every data packet meets an empty one
    assert r["pairs"] == pairs and r["events"] == 3
    assert r["air_bytes_down"] == 4 * 261 + 41 + (pairs - 5) * 10
    assert r["air_bytes_up"] == 15 + 261 + 261 + 29 + (pairs - 4) * 10
    tx_us, rx_us = 8 * r["air_bytes_up"], 8 * r["air_bytes_down"]
    gaps_us, overhead_us = (2 * pairs - 3) * 150, 3 * 100
    assert r["energy_mj"] == pytest.approx((tx_us * 10 + (rx_us + gaps_us + overhead_us) * 20) * 1e-6)
    assert r["elapsed_ms"] == pytest.approx(3 * 7.5)


@bumble_only
@pytest.mark.parametrize("mtu", [247, 23])
def test_the_host_link_counts_what_went_over_hci(tmp_path, mtu):
    """A ble:// port echoes 3 KB through a NUS peripheral while bumble writes the host's HCI
    traffic to a btsnoop file; parsed independently, the ATT writes and notifications in the
    capture (count, value bytes, with or without response) equal the port's own counts."""
    import struct

    import serial

    def echo(peripheral, data):
        asyncio.get_running_loop().create_task(peripheral.notify(data))

    snoop = tmp_path / "host.btsnoop"
    if "fedtiny.devices" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("fedtiny.devices")
    with AirThread() as air:
        air.peripheral("F0:F1:F2:F3:F4:F6", echo)
        link = serial.serial_for_url(air.url("F0:F1:F2:F3:F4:F6", mtu=mtu, snoop=snoop), timeout=5.0)
        data = bytes(np.random.default_rng(mtu).integers(0, 256, 3000, dtype=np.uint8))
        link.write(data)
        got = b""
        while len(got) < len(data):
            part = link.read(4096)
            assert part, "the echo stopped"
            got += part
        counts = link.air()
        link.close()
    assert got == data

    raw = snoop.read_bytes()
    assert raw[:8] == b"btsnoop\0"
    at, pdus, partial = 16, [], {True: b"", False: b""}
    while at + 24 <= len(raw):  # btsnoop records; H4 ACL packets reassembled into L2CAP PDUs
        _orig, incl, flags, _drops, _ts = struct.unpack_from(">IIIIq", raw, at)
        pkt = raw[at + 24: at + 24 + incl]
        at += 24 + incl
        if pkt[0] != 0x02:  # not ACL data
            continue
        sent = not flags & 1  # btsnoop flag bit 0: 0 sent by the host, 1 received
        handle_flags, _n = struct.unpack_from("<HH", pkt, 1)
        partial[sent] = (partial[sent] if (handle_flags >> 12) & 3 == 1 else b"") + pkt[5:]
        l2 = partial[sent]
        if len(l2) >= 4 and len(l2) == 4 + struct.unpack_from("<H", l2)[0]:
            pdus.append((sent, l2))
            partial[sent] = b""
    ops = {"write_cmd": [], "write_req": [], "notify": []}
    att_pdus = [(sent, l2[4:]) for sent, l2 in pdus if struct.unpack_from("<H", l2, 2)[0] == 4]  # ATT channel
    rx_handle = next(a[1:3] for sent, a in att_pdus if sent and a[0] == 0x52)  # NUS RX: the written one
    for sent, a in att_pdus:
        if sent and a[0] == 0x52 and a[1:3] == rx_handle:
            ops["write_cmd"].append(len(a) - 3)
        elif sent and a[0] == 0x12 and a[1:3] == rx_handle:
            ops["write_req"].append(len(a) - 3)
        elif not sent and a[0] == 0x1B:
            ops["notify"].append(len(a) - 3)
    assert counts["att_down"] == len(ops["write_cmd"]) + len(ops["write_req"])
    assert counts["value_bytes_down"] == sum(ops["write_cmd"]) + sum(ops["write_req"]) == 3000
    assert counts["att_up"] == len(ops["notify"]) and counts["value_bytes_up"] == sum(ops["notify"]) == 3000
    assert max(ops["write_cmd"] + ops["write_req"] + ops["notify"]) == mtu - 3
    n = -(-3000 // (mtu - 3))
    assert len(ops["write_req"]) == n // 8 + (n % 8 != 0)  # every 8th write and the last wait for a response


def test_bad_ble_urls_are_refused_with_the_reason():
    import serial

    if "fedtiny.devices" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("fedtiny.devices")
    for url, reason in (("ble://F0:00:00:00:00:01?mtu=600", "mtu must be in"),
                        ("ble://F0:00:00:00:00:01?dl=300", "data_length must be in"),
                        ("ble://F0:00:00:00:00:01?window=0", "window must be"),
                        ("ble://F0:00:00:00:00:01?speed=2", "unknown ble:// parameters")):
        with pytest.raises(serial.SerialException, match=reason):
            serial.serial_for_url(url)


@needs_cortex_m
def test_lost_and_truncated_notifications_cost_a_retry_not_a_result(firmware, tmp_path):
    """The air loses one notification and truncates another on an emulated board's link: the
    host's frame receiver drops the broken replies (CRC, inter-byte timeout), asks again under
    the same seq, and the board resends its reply: HELLO and a multi-frame LOAD complete with the
    model's CRC, in the expected number of tries."""
    import zlib

    from fedtiny.devices.ble_bumble import Faults
    from fedtiny.devices.link import BoardClient

    with _board_behind_the_air(firmware, tmp_path / "board", 3, 20, "F0:F1:F2:F3:F4:F7",
                               Faults(drop=[2], truncate=[4])) as (model, air, peripheral):
        client = BoardClient(air.url("F0:F1:F2:F3:F4:F7"), timeout=1.0, retries=3)
        tries = []
        send = client.send_raw
        client.send_raw = lambda data: (tries.append(data), send(data))[1]
        assert client.hello()["samples"] == 20  # notification 1
        blob = model.to_bytes()
        client.load_model(blob)
        assert client.hello()["model_crc32"] == zlib.crc32(blob)
        client.close()
    chunks = -(-len(blob) // (1024 - 8))
    assert peripheral.notifications >= chunks + 2 + 2  # every reply once, and the 2 damaged ones again
    assert len(tries) == 2 + chunks + 2  # 2 HELLOs, the LOAD chunks, one repeat per damaged reply
