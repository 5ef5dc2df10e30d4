"""Energy model: what one round costs a device, from the trainer's work and the exact bytes.

Per client per round (millijoules):

* **compute** = cycles / clock x active power. Cycles come from multiply-accumulates counted per
  layer from the model (conv: out_h out_w out_c k_h k_w in_c; depthwise: out_h out_w out_c k_h
  k_w; fully connected: in x out; pooling: one add per input value) times a cycles-per-MAC
  figure per kernel class from the board profile:
    - ``int8``: the frozen prefix, run once per round over the device's samples to cache the
      features the scheme starts from (and the float layers below the scheme's first layer);
    - ``float_fwd``: the float layers the scheme runs, per sample per epoch;
    - ``float_bwd``: backward — weight gradients of the updated output channels and input
      gradients of every layer above the first one backprop reaches — per sample per epoch;
    - ``update``: one SGD step per updated value per batch (counted as 4 MAC-equivalents).
  The cycles-per-MAC table is a modelling assumption until calibrated on the emulated board.
* **radio** = bytes sent x TX energy per byte + bytes received x RX energy per byte, with the
  exact per-client bytes of the round (``traffic.csv``: payload and overhead). A profile whose
  radio is BLE (``radio.kind`` "BLE ...") with a ``ble`` section prices the bytes as they go over
  the air instead (:mod:`fedtiny.budgets.ble`): cut at MTU - 3 into ATT packets, with ATT, L2CAP
  and link-layer headers, empty PDUs and write responses, at the radio's TX and RX power, plus a
  per-connection-event overhead; its radio time is connection events x interval.
* **idle** = the rest of the round period in sleep, at sleep power.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedtiny.budgets.ble import BleRadio, LinkParams, link_params, radio, stream_counts
from fedtiny.trainer import Model, TrainConfig, plan


@dataclass(frozen=True)
class Board:
    name: str
    clock_hz: float
    sram_kb: float
    flash_kb: float
    active_mw: float
    sleep_mw: float
    tx_nj_per_byte: float
    rx_nj_per_byte: float
    throughput_bps: float
    cycles_per_mac: dict
    ble: BleRadio | None = None  # set when the profile's radio is BLE: bytes priced over the air
    ble_link: LinkParams | None = None

    @classmethod
    def from_cfg(cls, b) -> Board:
        ble = b.get("ble") if hasattr(b, "get") else getattr(b, "ble", None)
        over_ble = ble is not None and str(b.radio.kind).upper().startswith("BLE")
        return cls(str(b.name), float(b.clock_mhz) * 1e6, float(b.sram_kb), float(b.flash_kb),
                   float(b.active_mw), float(b.sleep_mw), float(b.radio.tx_nj_per_byte),
                   float(b.radio.rx_nj_per_byte), float(b.radio.throughput_kbps) * 1e3,
                   {k: float(v) for k, v in b.cycles_per_mac.items()},
                   BleRadio.from_cfg(ble) if over_ble else None, link_params(ble) if over_ble else None)


def layer_macs(layer) -> int:
    """Multiply-accumulates of one forward pass of a layer on one sample (adds for pooling)."""
    oh, ow, oc = layer.out_shape
    ih, iw, ic = layer.in_shape
    kh, kw = layer.kernel
    if layer.type == "conv2d":
        return oh * ow * oc * kh * kw * ic
    if layer.type == "dwconv2d":
        return oh * ow * oc * kh * kw
    if layer.type == "fc":
        return ih * iw * ic * oc
    if layer.type == "avgpool":
        return oh * ow * oc * kh * kw
    return 0


def training_macs(model: Model, config: TrainConfig, samples: int, epochs: int) -> dict[str, int]:
    """MACs per kernel class of one round of local training (see the module docstring)."""
    p = plan(model, config)
    layers = model.spec.layers
    first = model.first_trainable
    start = first + int(config.start_layer)  # samples enter here
    k_min = first + p.first_backward
    update = config.update
    int8 = sum(layer_macs(layer) for layer in layers[:first]) * samples
    cache_float = sum(layer_macs(layer) for layer in layers[first:start]) * samples
    fwd = sum(layer_macs(layer) for layer in layers[start:]) * samples * epochs
    bwd = 0
    for i in range(k_min, len(layers)):
        layer = layers[i]
        macs = layer_macs(layer)
        if i > k_min:
            bwd += macs  # input gradient
        if layer.has_params:
            u = update[i - first] if update is not None else None
            if u is None or u.weights == "all":
                bwd += macs
            elif u.weights != "none":
                bwd += macs * int(u.weights) // layer.out_shape[2]
    bwd *= samples * epochs
    steps = epochs * -(-samples // max(1, config.batch_size))
    return {"int8": int(int8), "float_fwd": int(fwd + cache_float), "float_bwd": int(bwd),
            "update": int(4 * p.update_count * steps)}


def compute_mj(board: Board, macs: dict[str, int]) -> float:
    cycles = sum(macs[k] * board.cycles_per_mac[k] for k in macs)
    return cycles / board.clock_hz * board.active_mw  # s x mW = mJ


def compute_seconds(board: Board, macs: dict[str, int]) -> float:
    return sum(macs[k] * board.cycles_per_mac[k] for k in macs) / board.clock_hz


def radio_mj(board: Board, bytes_up: int, bytes_down: int) -> float:
    if board.ble is not None:
        return radio(stream_counts(bytes_up, bytes_down, board.ble_link), board.ble_link, board.ble)["energy_mj"]
    return (bytes_up * board.tx_nj_per_byte + bytes_down * board.rx_nj_per_byte) * 1e-6


def radio_seconds(board: Board, bytes_up: int, bytes_down: int) -> float:
    if board.ble is not None:
        return radio(stream_counts(bytes_up, bytes_down, board.ble_link), board.ble_link, board.ble)["elapsed_ms"] / 1e3
    return 8.0 * (bytes_up + bytes_down) / board.throughput_bps


def round_energy(board: Board, macs: dict[str, int], bytes_up: int, bytes_down: int, period_s: float) -> dict:
    """Compute, radio and idle energy of one round (mJ) and the busy time (s)."""
    busy = compute_seconds(board, macs) + radio_seconds(board, bytes_up, bytes_down)
    idle_s = max(0.0, period_s - busy)
    out = {"compute_mj": compute_mj(board, macs), "radio_mj": radio_mj(board, bytes_up, bytes_down),
           "idle_mj": idle_s * board.sleep_mw, "busy_s": busy}
    out["total_mj"] = out["compute_mj"] + out["radio_mj"] + out["idle_mj"]
    return out


def affordable_epochs(board: Board, model: Model, config: TrainConfig, samples: int, epochs: int,
                      budget_mj: float, bytes_up: int, bytes_down: int, period_s: float) -> int:
    """The most local epochs (<= epochs) whose round energy fits `budget_mj`; 0: the device
    cannot afford even one epoch and declines the round."""
    best = 0
    for e in range(1, epochs + 1):
        if round_energy(board, training_macs(model, config, samples, e), bytes_up, bytes_down,
                        period_s)["total_mj"] <= budget_mj:
            best = e
    return best


def pareto_front(points: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """Boolean mask of the points no other point dominates (>= in every objective, > in one)."""
    pts = np.where(np.array(maximize), points, -points)
    mask = np.ones(len(pts), bool)
    for i in range(len(pts)):
        dominated = np.all(pts >= pts[i], axis=1) & np.any(pts > pts[i], axis=1)
        mask[i] = not dominated.any()
    return mask
