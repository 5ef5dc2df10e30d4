"""What the boards' links carried, per round, as a run sees them through the bridges
(``links.csv``; docs/boards.md "Over BLE")."""

from __future__ import annotations


class LinkMeter:
    """The boards' links as the run sees them through their bridges: reconnects since the run
    started (a URL that is not a bridge counts nothing), and per round what each link carried
    (:meth:`rows`, ``links.csv``): frames' bytes each way, and over BLE the exact air counts
    with the radio time and energy they model on the run's board profile."""

    def __init__(self, urls: list[str], partitions: list[int], board) -> None:
        from fedtiny.devices.link import bridge_stats

        self._stats = bridge_stats
        self.partitions = partitions
        self.start = {u: bridge_stats(u) for u in urls}
        self.last = dict(self.start)
        self.ble = board.get("ble") if board is not None else None

    def reconnects(self) -> int:
        """Reconnects up to the last :meth:`rows` (the round loop reads them there after each
        round, before its checkpoint and the summary ask for this: one BRIDGE request a round)."""
        return sum(int(self.last[url]["reconnects"]) - int(before["reconnects"])
                   for url, before in self.start.items() if before is not None)

    def rows(self) -> list[list]:
        """One row per board link that carried anything since the last call (LINK_COLUMNS)."""
        from fedtiny.budgets.ble import BleRadio, LinkParams, radio, serial_line

        out = []
        for k, (url, before) in enumerate(self.last.items()):
            now = self._stats(url) if before is not None else None
            if now is None:
                continue
            self.last[url] = now
            d = {key: int(now.get(key, 0)) - int(before.get(key, 0))
                 for key in ("requests", "bytes_to_board", "bytes_from_board")}
            if d["requests"] <= 0:
                continue
            frames = d["bytes_to_board"] + d["bytes_from_board"]
            row = [self.partitions[k], "ble" if "air" in now else "serial", d["requests"], d["bytes_to_board"],
                   d["bytes_from_board"], round(serial_line(frames)["elapsed_ms"], 3)]
            if "air" in now:
                air = {key: int(v) - int(before.get("air", {}).get(key, 0)) for key, v in now["air"].items()}
                link = LinkParams(**now["air_link"])
                board = BleRadio.from_cfg(self.ble) if self.ble is not None else BleRadio(0.0, 0.0, 0.0)
                r = radio(air, link, board)
                row += [link.mtu, link.data_length, air["att_down"], air["att_up"], air["packets_down"],
                        air["packets_up"], r["air_bytes_down"], r["air_bytes_up"], r["events"],
                        round(r["elapsed_ms"], 3), round(r["radio_on_ms"], 3),
                        round(r["energy_mj"], 6) if self.ble is not None else ""]
            else:
                row += [""] * 12
            out.append(row)
        return out


LINK_COLUMNS = ["partition", "link", "requests", "bytes_to_board", "bytes_from_board", "uart_115200_ms", "mtu",
                "data_length", "att_down", "att_up", "packets_down", "packets_up", "air_bytes_down", "air_bytes_up",
                "connection_events", "radio_ms", "radio_on_ms", "radio_mj"]
