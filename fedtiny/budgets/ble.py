"""Bytes over the air, radio time and radio energy of fedtiny's framed protocol over BLE (NUS).

What goes over the air for one ATT operation carrying `v` value bytes (Bluetooth Core 5.x, Vol 6
Part B 2.1 and 2.4; Vol 3 Part A 3; Vol 3 Part F 3.4):

* ATT: 3 header bytes (opcode, attribute handle) for a Write Command, Write Request or Handle
  Value Notification; a Write Response is 1 byte (its opcode).
* L2CAP: 4 bytes of basic header (length, channel id) per ATT PDU.
* Link layer: the L2CAP PDU is cut into data PDUs of at most the connection's data length
  (27 bytes without Data Length Extension, up to 251 with it); each packet on air adds a
  preamble (1 byte on the 1M PHY, 2 on 2M), a 4-byte access address, a 2-byte header and a
  3-byte CRC (no MIC: the NUS link is not encrypted).
* Every packet is answered in the same connection event by the other side (an empty 2-byte PDU,
  10 bytes on air, when it has nothing to send), 150 us (T_IFS) apart.

So `v` bytes cost ``ceil((v + 7) / data_length)`` packets and ``v + 7 + 10 x packets`` bytes
on air. The host link (``fedtiny.devices.protocol_ble``) counts these exactly for every write
and notification it makes or gets, and the connection events they need: a write burst of k
packets needs ``ceil(k / packets_per_event)`` events, each write *with* response one more (the
response comes in a later event), a burst of notifications ``ceil(k / packets_per_event)``.

:func:`radio` turns the counts into the peripheral's radio-on time and energy for a board
profile's ``ble`` section (TX and RX power, per-event overhead) and the elapsed radio time
(events x connection interval). What this leaves out, and says so: connection events with no
data while the link idles between rounds (slave latency decides those), retransmissions
(the virtual air loses nothing), and connection set-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedtiny.config import BLE_LIMITS

ATT_HEADER = 3  # opcode + handle: Write Command / Write Request / Handle Value Notification
ATT_WRITE_RESPONSE = 1
L2CAP_HEADER = 4
LL_HEADER = 2
ACCESS_ADDRESS = 4
CRC = 3
T_IFS_US = 150.0


@dataclass(frozen=True)
class LinkParams:
    """The connection's parameters: ATT MTU, LL data length (27: no DLE), PHY (1 or 2 Mbit/s),
    connection interval and the packets a side may send per connection event."""

    mtu: int = 247
    data_length: int = 251
    phy: int = 1
    interval_ms: float = 7.5
    packets_per_event: int = 6

    def __post_init__(self) -> None:
        for key, (low, high) in BLE_LIMITS.items():
            if not low <= getattr(self, key) <= high:
                raise ValueError(f"BLE {key} must be in [{low:g}, {high:g}], got {getattr(self, key)}")
        if self.phy not in (1, 2):
            raise ValueError(f"BLE phy must be 1 or 2 (Mbit/s), got {self.phy}")

    @property
    def overhead(self) -> int:
        """Bytes on air around one LL PDU's payload: preamble, access address, header, CRC."""
        return self.phy + ACCESS_ADDRESS + LL_HEADER + CRC

    @property
    def us_per_byte(self) -> float:
        return 8.0 / self.phy


def link_params(b) -> LinkParams:
    """The connection parameters of a board profile's ``ble`` section."""
    return LinkParams(int(b.mtu), int(b.data_length), int(b.phy), float(b.interval_ms), int(b.packets_per_event))


def att_packets(value_bytes: int, link: LinkParams, header: int = ATT_HEADER) -> tuple[int, int]:
    """(LL packets, bytes on air) of one ATT PDU carrying `value_bytes` of value."""
    l2cap = L2CAP_HEADER + header + value_bytes
    packets = -(-l2cap // link.data_length)
    return packets, l2cap + packets * link.overhead


def empty_counts() -> dict:
    return {"att_up": 0, "att_down": 0, "value_bytes_up": 0,
            "value_bytes_down": 0, "packets_up": 0, "packets_down": 0, "air_bytes_up": 0, "air_bytes_down": 0,
            "events": 0}


class AirCounter:
    """Exact counts of one host link: call :meth:`write_burst` for each frame written (its
    packets' value sizes and which went with response) and :meth:`notification` for each one
    received; :attr:`counts` then holds ATT operations, LL packets and bytes on air each way
    ("up": board to host, as in fedtiny's traffic), and the connection events they needed."""

    def __init__(self, link: LinkParams) -> None:
        self.link = link
        self.counts = empty_counts()
        self._down_burst = 0  # LL packets of the notifications since the last write

    def _close_down_burst(self) -> None:
        if self._down_burst:
            self.counts["events"] += -(-self._down_burst // self.link.packets_per_event)
            self._down_burst = 0

    def write_burst(self, values: list[int], with_response: list[bool]) -> None:
        self._close_down_burst()
        c, pk = self.counts, 0
        for v, resp in zip(values, with_response):
            n, air = att_packets(v, self.link)
            c["att_down"] += 1
            c["value_bytes_down"] += v
            c["packets_down"] += n
            c["air_bytes_down"] += air
            pk += n
            if resp:  # the peripheral's Write Response, one event later
                rn, rair = att_packets(0, self.link, ATT_WRITE_RESPONSE)
                c["packets_up"] += rn
                c["air_bytes_up"] += rair
                c["events"] += 1
        c["events"] += -(-pk // self.link.packets_per_event)

    def notification(self, value: int) -> None:
        n, air = att_packets(value, self.link)
        c = self.counts
        c["att_up"] += 1
        c["value_bytes_up"] += value
        c["packets_up"] += n
        c["air_bytes_up"] += air
        self._down_burst += n

    def snapshot(self) -> dict:
        """The counts, the events of the notification burst still open included (it stays open)."""
        out = dict(self.counts)
        out["events"] += -(-self._down_burst // self.link.packets_per_event)
        return out


@dataclass(frozen=True)
class BleRadio:
    """A board's BLE radio: TX power at its output setting, RX power, and the radio-on time per
    connection event beyond the packets (wake-up and ramp-up)."""

    tx_mw: float
    rx_mw: float
    event_overhead_us: float

    @classmethod
    def from_cfg(cls, b) -> BleRadio:
        return cls(float(b.tx_mw), float(b.rx_mw), float(b.event_overhead_us))


def radio(counts: dict, link: LinkParams, board: BleRadio) -> dict:
    """The board's (peripheral's) radio for `counts` (:class:`AirCounter`'s): connection events,
    packet pairs (each data packet answered, empty PDUs included), bytes on air with the empty
    PDUs, radio-on time and energy, and elapsed radio time (events x interval)."""
    data_up, data_down = int(counts["packets_up"]), int(counts["packets_down"])
    events = int(counts["events"])
    # fedtiny's traffic is request/response: a data packet of one side meets an empty one of the
    # other, and every event has at least one pair
    pairs = max(data_up + data_down, events)
    empty = link.overhead  # a 0-byte LL PDU on air
    air_up = int(counts["air_bytes_up"]) + (pairs - data_up) * empty
    air_down = int(counts["air_bytes_down"]) + (pairs - data_down) * empty
    tx_us = air_up * link.us_per_byte  # the board transmits what goes up
    rx_us = air_down * link.us_per_byte
    gaps_us = max(0, 2 * pairs - events) * T_IFS_US  # between the packets of each event
    overhead_us = events * board.event_overhead_us
    energy_uj = (tx_us * board.tx_mw + (rx_us + gaps_us + overhead_us) * board.rx_mw) * 1e-3
    return {"events": events, "pairs": pairs, "air_bytes_up": air_up, "air_bytes_down": air_down,
            "radio_on_ms": (tx_us + rx_us + gaps_us + overhead_us) / 1e3,
            "elapsed_ms": events * link.interval_ms, "energy_mj": energy_uj * 1e-3}


def stream_counts(bytes_up: int, bytes_down: int, link: LinkParams, window: int = 8) -> dict:
    """The counts of `bytes_down` written by the host and `bytes_up` notified by the board, each
    as one stream cut at MTU - 3 (fedtiny's NUS link, every `window`-th write with response):
    how the energy model prices a simulated device's bytes on a BLE board."""
    counter = AirCounter(link)
    n = link.mtu - 3
    if bytes_down:
        sizes = [n] * (bytes_down // n) + ([bytes_down % n] if bytes_down % n else [])
        counter.write_burst(sizes, [(k + 1) % window == 0 or k == len(sizes) - 1 for k in range(len(sizes))])
    for _ in range(bytes_up // n):
        counter.notification(n)
    if bytes_up % n:
        counter.notification(bytes_up % n)
    return counter.snapshot()


def serial_line(value_bytes: int, baud: int = 115200) -> dict:
    """The same frames over a UART at 8N1: every byte costs 10 bit times (start and stop bits)."""
    return {"line_bytes": value_bytes, "line_bits": 10 * value_bytes, "elapsed_ms": 1e3 * 10 * value_bytes / baud}
