"""Typed configuration: schemas for every config group, composition, and validation.

Every check runs before anything expensive starts (data loading, pretraining, Ray): a typo or
an impossible value ends the run with one clear line. The schemas are the documentation of
what each group accepts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from fedtiny.errors import ConfigError
from fedtiny.plugins import DATASET_KEYS, TARGET, check_arguments, nearest, resolve
from fedtiny.trainer.runtime import (MAX_BATCH, MAX_EPOCHS, MAX_LR, MAX_PROX_MU, MAX_WEIGHT_DECAY, PRECISIONS,
                                     ROUNDINGS)


def conf_dir() -> Path:
    """The Hydra config directory: the repository's ``conf/`` (or the copy installed with the package)."""
    env = os.environ.get("FEDTINY_CONF")
    for candidate in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[1] / "conf",
                                                     Path(__file__).resolve().parent / "conf"]:
        if (candidate / "config.yaml").exists():
            return candidate
    raise ConfigError("cannot find fedtiny's conf/ directory (set FEDTINY_CONF)")


@dataclass
class ImuShift:  # fedtiny.data.shift: per-device mounting rotation (degrees), gain (log-uniform), offset (std)
    rotation: float = 0.0
    gain: float = 0.0
    offset: float = 0.0


@dataclass
class ImageShift:  # fedtiny.data.shift: per-device ranges [lo, hi] of exposure, log contrast, rotation (deg), noise
    exposure: list[float] = field(default_factory=lambda: [0.0, 0.0])
    contrast: list[float] = field(default_factory=lambda: [0.0, 0.0])
    rotation: list[float] = field(default_factory=lambda: [0.0, 0.0])
    noise: list[float] = field(default_factory=lambda: [0.0, 0.0])


@dataclass
class WatchData:
    name: str = "watch"
    pretrain_subjects: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    device: str = "subject_side"
    window_s: float = 2.0
    overlap: float = 0.5
    test_fraction: float = 0.2
    holdout_fraction: float = 0.2
    field_shift: ImuShift = field(default_factory=ImuShift)
    seed: int = 0


@dataclass
class DigitsData:
    name: str = "digits"
    pretrain_fraction: float = 0.3
    num_clients: int = 10
    alpha: float = 1.0
    test_fraction: float = 0.25
    holdout_fraction: float = 0.2
    seed: int = 0


@dataclass
class FashionData:
    name: str = "fashion"
    path: str | None = None
    pretrain_size: int = 10000
    num_clients: int = 100
    alpha: float = 0.5
    test_fraction: float = 0.2
    server_test_size: int = 2000
    max_samples_per_client: int = 0
    field_shift: ImageShift = field(default_factory=ImageShift)
    seed: int = 0


SERIAL_MODES = ("tcp", "pty")  # how a bridge reaches an emulated board's UART (devices.serial, Fleet)
LINKS = ("serial", "ble")  # how an emulated board's bridge reaches the board (devices.link, Fleet)
# a BLE connection's parameters (Bluetooth Core 5.x): ATT MTU, LL data length, interval, packets per event
BLE_LIMITS = {"mtu": (23, 517), "data_length": (27, 251), "interval_ms": (7.5, 4000.0), "packets_per_event": (1, 64)}

DATASETS: dict[str, type] = {"watch": WatchData, "digits": DigitsData, "fashion": FashionData}


@dataclass
class ModelCfg:
    arch: str = "imu_cnn"  # a built-in backbone (fedtiny.models.nets.ARCHITECTURES), "tflite", unless _target_ names one
    _target_: Optional[str] = None  # a plugin backbone: fn(input_shape, num_classes, width) -> nn.Sequential
    path: Optional[str] = None  # arch=tflite: the int8 .tflite file imported instead of pretraining
    width: int = 32
    trainable_layers: int = 2
    pretrain_epochs: int = 40
    pretrain_lr: float = 0.003
    pretrain_batch_size: int = 64
    calibration_samples: int = 512
    int8_max_drop: float = 0.03  # warn (and record in summary.json) when int8 loses more field accuracy


@dataclass
class FedAvgCfg:
    name: str = "fedavg"


@dataclass
class FedAdamCfg:
    name: str = "fedadam"
    eta: float = 0.01
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 0.001


@dataclass
class FedProxCfg:
    name: str = "fedprox"
    proximal_mu: float = 0.1


STRATEGIES: dict[str, type] = {"fedavg": FedAvgCfg, "fedadam": FedAdamCfg, "fedprox": FedProxCfg}


@dataclass
class ClientCfg:
    epochs: int = 3
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 16
    precision: str = "float32"  # updated weights in RAM: float32, or int8 with QAS steps
    rounding: str = "stochastic"  # int8 steps: stochastic or nearest


SIM_BACKENDS = ("inprocess", "ray")


@dataclass
class SimulationCfg:
    backend: str = "inprocess"
    workers: int | None = None
    num_cpus: int = 2
    client_cpus: float = 1.0
    address: str | None = None
    timeout_s: float = 600.0


@dataclass
class FaultsCfg:
    raise_partitions: list[int] = field(default_factory=list)
    raise_rounds: list[int] = field(default_factory=list)
    nan_partitions: list[int] = field(default_factory=list)
    nan_rounds: list[int] = field(default_factory=list)
    malformed_partitions: list[int] = field(default_factory=list)
    malformed_rounds: list[int] = field(default_factory=list)
    malformed_kinds: list[str] = field(default_factory=lambda: ["truncated"])
    crash_partitions: list[int] = field(default_factory=list)
    crash_rounds: list[int] = field(default_factory=list)


MALFORMED_KINDS = ("truncated", "bits", "nan_scale", "inf_scale", "subset", "oversize")


@dataclass
class PrivacyCfg:
    mode: str = "off"
    clip: float = 1.0
    noise_multiplier: float = 1.0
    target_epsilon: Any = None
    max_epsilon: Any = None
    delta: float = 1e-5
    accountant: str = "pld"
    sampling: str = "poisson"


@dataclass
class RadioCfg:
    kind: str = "BLE"
    tx_nj_per_byte: float = 230.0
    rx_nj_per_byte: float = 220.0
    throughput_kbps: float = 100.0


@dataclass
class CyclesCfg:
    int8: float = 4.0
    float_fwd: float = 4.0
    float_bwd: float = 5.0
    update: float = 1.0


@dataclass
class BleCfg:
    tx_mw: float = 19.2
    rx_mw: float = 18.78
    event_overhead_us: float = 200.0
    mtu: int = 247
    data_length: int = 251
    phy: int = 1
    interval_ms: float = 7.5
    packets_per_event: int = 6


@dataclass
class BoardCfg:
    name: str = "nrf52840"
    core: str = "Cortex-M4F"
    clock_mhz: float = 64.0
    sram_kb: float = 256.0
    flash_kb: float = 1024.0
    active_mw: float = 9.9
    sleep_mw: float = 0.0095
    radio: RadioCfg = field(default_factory=RadioCfg)
    ble: Optional[BleCfg] = None
    cycles_per_mac: CyclesCfg = field(default_factory=CyclesCfg)


@dataclass
class EnergyCfg:
    round_period_s: float = 60.0
    budget_mj: Any = None
    battery_mj: Any = None


@dataclass
class DevicesCfg:
    emulate: int = 0
    urls: list[str] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    timeout_s: float = 600.0
    firmware: Any = None
    damage: float = 0.0
    serial: str = "tcp"
    link: str = "serial"


@dataclass
class CodecCfg:
    bits: int = 32
    per_channel: bool = True
    error_feedback: bool = False
    rounding: str = "auto"
    max_update_bytes: int = 4194304
    downlink_bits: int = 32


@dataclass
class MemoryBudgetCfg:
    sram_kb: list[float] = field(default_factory=list)
    reserve_kb: float = 8.0
    contribution_epochs: int = 5
    precisions: list[str] = field(default_factory=lambda: ["float32"])  # the planner may choose among these


@dataclass
class BudgetCfg:
    memory: MemoryBudgetCfg = field(default_factory=MemoryBudgetCfg)


@dataclass
class TopCfg:
    seed: int = 0
    rounds: int = 10
    clients_per_round: int = 0
    cache_dir: str = "~/.cache/fedtiny"
    progress: bool = True
    dataset: Any = None
    model: ModelCfg = field(default_factory=ModelCfg)
    strategy: Any = None
    client: ClientCfg = field(default_factory=ClientCfg)
    simulation: SimulationCfg = field(default_factory=SimulationCfg)
    faults: FaultsCfg = field(default_factory=FaultsCfg)
    budget: BudgetCfg = field(default_factory=BudgetCfg)
    codec: CodecCfg = field(default_factory=CodecCfg)
    privacy: PrivacyCfg = field(default_factory=PrivacyCfg)
    board: BoardCfg = field(default_factory=BoardCfg)
    energy: EnergyCfg = field(default_factory=EnergyCfg)
    devices: DevicesCfg = field(default_factory=DevicesCfg)


def _typed(schema: type, node: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        if isinstance(err, ConfigKeyError) and key:  # an unknown key: say which keys there are
            path = str(key).split(".")
            root = OmegaConf.structured(schema)
            parent = OmegaConf.select(root, ".".join(path[:-1])) if len(path) > 1 else root
            if isinstance(parent, DictConfig):
                prefix = [] if where == "config" else [where]
                raise ConfigError(_unknown_key(prefix + path, parent)) from None
        raise ConfigError(f"{where}: {msg}" + (f" (key '{key}')" if key and key not in msg else "")) from None


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> DictConfig:
    """Type-check every group against its schema and check ranges; return the typed config."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    raw.pop("hydra", None)
    plugin = TARGET in (raw.get("dataset") or {})
    ds_name = (raw.get("dataset") or {}).get("name")
    st_name = (raw.get("strategy") or {}).get("name")
    _check(plugin or ds_name in DATASETS,
           f"dataset.name: unknown dataset '{ds_name}' (known: {', '.join(sorted(DATASETS))}; or name your own "
           "loader with dataset._target_)")
    _check(st_name in STRATEGIES, f"strategy.name: unknown strategy '{st_name}' (known: {', '.join(sorted(STRATEGIES))})")
    dataset, strategy = raw.pop("dataset"), raw.pop("strategy")
    top = _typed(TopCfg, raw, "config")
    top.dataset = _plugin_dataset(dataset) if plugin else _typed(DATASETS[ds_name], dataset, "dataset")
    top.strategy = _typed(STRATEGIES[st_name], strategy, "strategy")

    from fedtiny.models.nets import ARCHITECTURES

    _check(top.rounds >= 1, f"rounds must be >= 1, got {top.rounds}")
    shift = getattr(top.dataset, "field_shift", None)
    if shift is not None and "exposure" in shift:
        for key in ("exposure", "contrast", "rotation", "noise"):
            r = list(getattr(shift, key))
            _check(len(r) == 2 and r[0] <= r[1], f"dataset.field_shift.{key} must be a range [lo, hi] with lo <= hi, got {r}")
        _check(shift.noise[0] >= 0, f"dataset.field_shift.noise must be >= 0, got {list(shift.noise)}")
    elif shift is not None:
        for key in ("rotation", "gain", "offset"):
            _check(getattr(shift, key) >= 0, f"dataset.field_shift.{key} must be >= 0, got {getattr(shift, key)}")
    _check(top.clients_per_round >= 0, f"clients_per_round must be >= 0 (0 = all), got {top.clients_per_round}")
    if top.model[TARGET] is not None:  # a plugin backbone: called as fn(input_shape, num_classes, width)
        check_arguments(resolve(top.model[TARGET], "model._target_"), {}, "model",
                        supplied=("input_shape", "num_classes", "width"))
    elif top.model.arch == "tflite":  # an int8 .tflite imported (fedtiny.models.tflite): read it now
        from fedtiny.models.tflite import read_tflite

        _check(bool(top.model.path), "model.path: arch=tflite needs the .tflite file (model.path=/path/to/model.tflite)")
        layers = len(read_tflite(str(Path(top.model.path).expanduser())).spec.layers)
        _check(top.model.trainable_layers <= layers,
               f"model.trainable_layers: {top.model.path} has {layers} layers, got {top.model.trainable_layers}")
    else:
        _check(top.model.arch in ARCHITECTURES,
               f"model.arch: unknown architecture '{top.model.arch}' (known: {', '.join(sorted(ARCHITECTURES))}, "
               "tflite; or name your own with model._target_)")
    for key in ("width", "trainable_layers", "pretrain_epochs", "pretrain_batch_size", "calibration_samples"):
        _check(getattr(top.model, key) >= 1, f"model.{key} must be >= 1, got {getattr(top.model, key)}")
    _check(top.model.pretrain_lr > 0, f"model.pretrain_lr must be > 0, got {top.model.pretrain_lr}")
    _check(0 <= top.model.int8_max_drop <= 1, f"model.int8_max_drop must be in [0, 1], got {top.model.int8_max_drop}")
    c = top.client
    _check(1 <= c.epochs <= MAX_EPOCHS, f"client.epochs must be in [1, {MAX_EPOCHS}], got {c.epochs}")
    _check(0 < c.lr <= MAX_LR, f"client.lr must be in (0, {MAX_LR:g}], got {c.lr}")
    _check(0 <= c.momentum < 1, f"client.momentum must be in [0, 1), got {c.momentum}")
    _check(0 <= c.weight_decay <= MAX_WEIGHT_DECAY,
           f"client.weight_decay must be in [0, {MAX_WEIGHT_DECAY:g}], got {c.weight_decay}")
    _check(1 <= c.batch_size <= MAX_BATCH, f"client.batch_size must be in [1, {MAX_BATCH}], got {c.batch_size}")
    _check(c.precision in PRECISIONS, f"client.precision must be one of {list(PRECISIONS)}, got {c.precision!r}")
    _check(c.rounding in ROUNDINGS, f"client.rounding must be one of {list(ROUNDINGS)}, got {c.rounding!r}")
    s = top.simulation
    _check(s.num_cpus >= 1 and 0 < s.client_cpus <= s.num_cpus,
           f"simulation: need num_cpus >= 1 and 0 < client_cpus <= num_cpus, got {s.num_cpus} and {s.client_cpus}")
    _check(s.timeout_s > 0, f"simulation.timeout_s must be > 0, got {s.timeout_s}")
    _check(s.backend in SIM_BACKENDS, f"simulation.backend must be one of {list(SIM_BACKENDS)}, got {s.backend!r}")
    _check(s.workers is None or s.workers >= 0, f"simulation.workers must be >= 0 (0: in the server's process), got {s.workers}")
    mem = top.budget.memory
    _check(mem.reserve_kb >= 0 and all(kb > mem.reserve_kb for kb in mem.sram_kb),
           f"budget.memory: every sram_kb must exceed reserve_kb={mem.reserve_kb}, got {list(mem.sram_kb)}")
    _check(mem.contribution_epochs >= 1, "budget.memory.contribution_epochs must be >= 1")
    _check(len(mem.precisions) >= 1 and all(p in PRECISIONS for p in mem.precisions),
           f"budget.memory.precisions must be a non-empty subset of {list(PRECISIONS)}, got {list(mem.precisions)}")
    st = top.strategy
    if st_name == "fedprox":
        _check(0 <= st.proximal_mu <= MAX_PROX_MU,
               f"strategy.proximal_mu must be in [0, {MAX_PROX_MU:g}], got {st.proximal_mu}")
    if st_name == "fedadam":
        _check(st.eta > 0 and st.tau > 0, f"strategy.eta and strategy.tau must be > 0, got {st.eta} and {st.tau}")
        _check(0 <= st.beta_1 < 1 and 0 <= st.beta_2 < 1, "strategy.beta_1 and beta_2 must be in [0, 1)")
    d = top.dataset
    devices = d.num_clients if plugin else _builtin_dataset_devices(ds_name, d)  # a plugin's: checked above
    _check(top.clients_per_round <= devices,
           f"clients_per_round={top.clients_per_round} exceeds the {devices} devices of dataset '{d.name}'")
    f = top.faults
    _check(len(f.malformed_kinds) >= 1 and all(k in MALFORMED_KINDS for k in f.malformed_kinds),
           f"faults.malformed_kinds must be a non-empty list of {list(MALFORMED_KINDS)}, got {list(f.malformed_kinds)}")
    q = top.codec
    _check(q.bits in (32, 16, 8, 4, 2, 1), f"codec.bits must be 32, 16, 8, 4, 2 or 1, got {q.bits}")
    _check(not (q.error_feedback and q.bits == 32), "codec.error_feedback needs codec.bits < 32 (float32 has no error)")
    _check(q.max_update_bytes >= 16, f"codec.max_update_bytes must be >= 16, got {q.max_update_bytes}")
    _check(q.rounding in ("auto", "stochastic", "nearest"),
           f"codec.rounding must be auto, stochastic or nearest, got {q.rounding!r}")
    _check(q.downlink_bits in (32, 16, 8), f"codec.downlink_bits must be 32, 16 or 8, got {q.downlink_bits}")
    pr = top.privacy
    _check(pr.mode in ("off", "central", "local"), f"privacy.mode must be off, central or local, got {pr.mode!r}")
    _check(pr.clip > 0, f"privacy.clip must be > 0, got {pr.clip}")
    _check(pr.noise_multiplier >= 0, f"privacy.noise_multiplier must be >= 0, got {pr.noise_multiplier}")
    _check(0 < pr.delta < 1, f"privacy.delta must be in (0, 1), got {pr.delta}")
    _check(pr.accountant in ("pld", "rdp"), f"privacy.accountant must be pld or rdp, got {pr.accountant!r}")
    _check(pr.sampling in ("poisson", "fixed"), f"privacy.sampling must be poisson or fixed, got {pr.sampling!r}")
    for key in ("target_epsilon", "max_epsilon"):
        value = pr[key]
        _check(value is None or (isinstance(value, (int, float)) and value > 0),
               f"privacy.{key} must be a number > 0 or null, got {value!r}")
    _check(pr.mode == "off" or not q.error_feedback,
           "privacy: error feedback would carry clipped-away and noised values across rounds; turn one off")
    b = top.board
    _check(b.name in board_profiles(), f"board.name={b.name!r} is not a board profile ({', '.join(board_profiles())}); "
           f"select one with board=<name>, or add conf/board/{b.name}.yaml with the board's sourced figures")
    numbers = {"clock_mhz": b.clock_mhz, "sram_kb": b.sram_kb, "flash_kb": b.flash_kb, "active_mw": b.active_mw,
               "radio.tx_nj_per_byte": b.radio.tx_nj_per_byte, "radio.rx_nj_per_byte": b.radio.rx_nj_per_byte,
               "radio.throughput_kbps": b.radio.throughput_kbps,
               **{f"cycles_per_mac.{k}": v for k, v in b.cycles_per_mac.items()}}
    bad = [k for k, v in numbers.items() if not v > 0]
    _check(not bad and b.sleep_mw >= 0, f"board {b.name}: {bad or ['sleep_mw']} must be > 0 (sleep_mw >= 0)")
    e = top.energy
    _check(e.round_period_s > 0, f"energy.round_period_s must be > 0, got {e.round_period_s}")
    for key in ("budget_mj", "battery_mj"):
        _check(e[key] is None or (isinstance(e[key], (int, float)) and e[key] > 0),
               f"energy.{key} must be a number > 0 or null, got {e[key]!r}")
    dv = top.devices
    boards = max(int(dv.emulate), len(dv.urls))
    parts = list(dv.partitions) or list(range(boards))
    _check(dv.emulate >= 0 and not (dv.emulate and dv.urls),
           f"devices: give emulate (a number of QEMU boards) or urls (running bridges), not both; got {dv.emulate} and "
           f"{list(dv.urls)}")
    _check(len(parts) == boards and len(set(parts)) == boards and all(0 <= p < devices for p in parts),
           f"devices.partitions must be {boards} distinct partition ids in [0, {devices}), one per board; got {parts}")
    _check(dv.timeout_s > 0 and 0 <= dv.damage < 0.5, "devices: need timeout_s > 0 and damage in [0, 0.5)")
    _check(dv.serial in SERIAL_MODES, f"devices.serial must be one of {list(SERIAL_MODES)}, got {dv.serial!r}")
    _check(not (dv.serial == "pty" and dv.damage > 0),
           "devices: damage needs devices.serial=tcp (the injector is a TCP proxy between bridge and board)")
    _check(dv.link in LINKS, f"devices.link must be one of {list(LINKS)}, got {dv.link!r}")
    _check(dv.link == "serial" or (dv.emulate > 0 and dv.serial == "tcp"),
           "devices.link=ble is for emulated boards over devices.serial=tcp (real boards over BLE take ble:// URLs "
           "in devices.urls)")
    if top.board.ble is not None:
        b = top.board.ble
        for key, (low, high) in BLE_LIMITS.items():
            _check(low <= b[key] <= high, f"board.ble.{key} must be in [{low:g}, {high:g}], got {b[key]!r}")
        _check(b.phy in (1, 2), f"board.ble.phy must be 1 or 2 (Mbit/s), got {b.phy!r}")
        _check(b.tx_mw > 0 and b.rx_mw > 0 and b.event_overhead_us >= 0,
               "board.ble: need tx_mw > 0, rx_mw > 0 and event_overhead_us >= 0")
    _check(not (boards and q.error_feedback),
           "devices: the board firmware keeps no error-feedback residual between rounds; set codec.error_feedback=false")
    for key in ("raise_partitions", "nan_partitions", "malformed_partitions", "crash_partitions"):
        bad = [p for p in top.faults[key] if not 0 <= p < devices]
        _check(not bad, f"faults.{key}: {bad} are not partition ids in [0, {devices})")
    _check(not (top.faults.crash_partitions and top.simulation.backend == "inprocess" and top.simulation.workers == 0),
           "faults.crash_partitions kill the process that runs the client: with simulation.workers=0 that is the "
           "server; use simulation.workers >= 1")
    return top


def _builtin_dataset_devices(ds_name: str, d) -> int:
    """Check a built-in data set's ranges; return its number of devices."""
    _check(0 < d.test_fraction < 1, f"dataset.test_fraction must be in (0, 1), got {d.test_fraction}")
    if ds_name in ("watch", "digits"):
        _check(0 < d.holdout_fraction < 1 and d.test_fraction + d.holdout_fraction < 0.9,
               f"dataset: test_fraction + holdout_fraction must leave training data, got {d.test_fraction} + {d.holdout_fraction}")
    if ds_name == "watch":
        _check(d.window_s > 0 and 0 <= d.overlap < 1, "dataset: need window_s > 0 and overlap in [0, 1)")
        _check(d.device in ("subject_side", "subject"), f"dataset.device must be subject_side or subject, got '{d.device}'")
        _check(set(d.pretrain_subjects) <= set(range(1, 11)) and 0 < len(set(d.pretrain_subjects)) < 10,
               f"dataset.pretrain_subjects must be 1-9 distinct subjects out of 1..10, got {list(d.pretrain_subjects)}")
        devices = (10 - len(set(d.pretrain_subjects))) * (2 if d.device == "subject_side" else 1)
    else:
        _check(d.num_clients >= 1 and d.alpha > 0, "dataset: need num_clients >= 1 and alpha > 0")
        devices = d.num_clients
    if ds_name == "digits":
        _check(0 < d.pretrain_fraction < 1, f"dataset.pretrain_fraction must be in (0, 1), got {d.pretrain_fraction}")
    if ds_name == "fashion":
        _check(1000 <= d.pretrain_size <= 50000, f"dataset.pretrain_size must be in [1000, 50000], got {d.pretrain_size}")
        _check(1 <= d.server_test_size <= 10000, f"dataset.server_test_size must be in [1, 10000], got {d.server_test_size}")
    return devices


def _plugin_dataset(node: dict) -> DictConfig:
    """A data set named by ``_target_``: its keys checked against the loader's signature
    (fedtiny.plugins), ``num_clients`` required (the federation is sized before data loads),
    ``name`` defaulting to the loader's module."""
    fn = resolve(node[TARGET], "dataset._target_")
    n = node.get("num_clients")
    _check(isinstance(n, int) and not isinstance(n, bool) and n >= 1,
           f"dataset.num_clients: a plugin data set says how many devices its loader returns (an int >= 1), got {n!r}")
    name = node.get("name") or str(node[TARGET]).rsplit(".", 2)[-2]
    _check(isinstance(name, str), f"dataset.name must be a string, got {name!r}")
    given = {k: v for k, v in node.items() if k != TARGET and k not in DATASET_KEYS}
    check_arguments(fn, given, "dataset", supplied=DATASET_KEYS)
    return OmegaConf.create({**node, "name": name})


def num_devices(cfg: DictConfig) -> int:
    d = cfg.dataset
    if TARGET in d:
        return int(d.num_clients)
    if d.name == "watch":
        return (10 - len(set(d.pretrain_subjects))) * (2 if d.device == "subject_side" else 1)
    return int(d.num_clients)


def dataset_dict(cfg: DictConfig) -> dict:
    """The dataset group as a dict (what a backbone's cache key hashes); a field shift that is
    all zeros is left out, so it names the same backbone as no shift."""
    out = OmegaConf.to_container(cfg.dataset, resolve=True)
    values = [float(x) for v in (out.get("field_shift") or {}).values() for x in (v if isinstance(v, list) else [v])]
    if not any(values):
        out.pop("field_shift", None)
    if TARGET in out:  # a plugin's data file changed in place names another backbone (size, modification time)
        files = {k: Path(v).expanduser() for k, v in out.items() if isinstance(v, str) and k != TARGET}
        stats = {k: f.stat() for k, f in sorted(files.items()) if f.is_file()}
        if stats:
            out["_files"] = {k: [st.st_size, st.st_mtime_ns] for k, st in stats.items()}
    return out


def split_config_dirs(argv: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's ``--config-dir DIR`` / ``-cd DIR`` / ``--config-dir=DIR`` taken out of a command
    line: (the directories, the rest)."""
    dirs, rest, it = [], [], iter(argv)
    for arg in it:
        if arg in ("--config-dir", "-cd"):
            value = next(it, None)
            if value is None:
                raise ConfigError(f"{arg} needs a directory")
            dirs.append(value)
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return dirs, rest


def _searchpath(overrides: list[str], config_dirs: list[str]) -> list[str]:
    """The overrides, with the user's config directories added to ``hydra.searchpath`` (so a
    plugin's groups compose here as they do under Hydra's own ``--config-dir``)."""
    if not config_dirs:
        return list(overrides)
    for d in config_dirs:
        _check(Path(d).expanduser().is_dir(), f"--config-dir {d}: no such directory")
    paths = [f"file://{Path(d).expanduser().resolve()}" for d in config_dirs]
    given = [p for ov in overrides for p in _searchpath_entries(ov) or []]
    out = [ov for ov in overrides if _searchpath_entries(ov) is None]
    return [f"hydra.searchpath=[{','.join(paths + given)}]", *out]


def search_dirs(overrides: list[str]) -> list[Path]:
    """The config directories a composition searches: fedtiny's conf/, then every ``file://``
    entry of a ``hydra.searchpath`` override."""
    return [conf_dir()] + [Path(p[len("file://"):]) for ov in overrides for p in _searchpath_entries(ov) or []
                           if p.startswith("file://")]


def _searchpath_entries(override: str) -> list[str] | None:
    """The entries of a ``hydra.searchpath=[a,b]`` override; None for any other override."""
    key, _, value = override.partition("=")
    if key != "hydra.searchpath":
        return None
    return [p.strip() for p in value.strip().strip("[]").split(",") if p.strip()]


def compose(overrides: list[str], config_dirs: list[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides and validate it (no output directory).
    ``config_dirs`` (``--config-dir``) and ``hydra.searchpath=[file://...]`` overrides add a
    user's config groups (plugins)."""
    overrides = _searchpath(list(overrides), list(config_dirs))
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    for ov in overrides:  # renaming the board would keep another board's figures
        if ov.split("=", 1)[0].lstrip("+~") == "board.name":
            raise ConfigError(f"{ov}: board.name only renames the profile and keeps its figures; select a "
                              f"profile with board={ov.split('=', 1)[-1]} (profiles: {', '.join(board_profiles())})")
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(explain(err, search_dirs(overrides))) from None
    return validate(cfg)


def board_profiles() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "board").glob("*.yaml"))


def _unknown_key(path: list[str], parent: DictConfig) -> str:
    """`path` (dotted from the top) is not a key of `parent`: name the keys it has, and the
    nearest spelling."""
    keys = sorted(str(k) for k in parent.keys())
    owner = ".".join(path[:-1]) or "the config"
    return f"unknown key '{'.'.join(path)}' ({owner} has: {', '.join(keys)}){nearest(path[-1], keys)}"


def explain(err: BaseException, dirs: list[Path] | None = None) -> str:
    """One line for a Hydra/OmegaConf composition error, with the hint Hydra's message buries
    (the options of a group, the keys of a node, the nearest spelling)."""
    import re

    text = str(err).strip()
    m = re.match(r"In '[^']*': Could not find '([^']+/[^'/]+)'", text)
    if m:
        group, option = m.group(1).rsplit("/", 1)
        options = sorted({p.stem for d in (dirs or [conf_dir()]) for p in (d / group).glob("*.yaml")})
        return (f"{group}={option}: no such {group} option (available: {', '.join(options) or 'none'})"
                f"{nearest(option, options)}")
    m = re.match(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' (?:is )?not in", text)
    if m:
        path = m.group(1).split(".")
        if not re.match(r"Could not override", text):  # "Key 'foo' not in 'TopCfg'": a top-level key
            path = [path[-1]]
        node = OmegaConf.structured(TopCfg)
        if path[0] in ("dataset", "strategy"):  # schemas chosen by name: the union of their keys
            schemas = DATASETS if path[0] == "dataset" else STRATEGIES
            keys = sorted({f for sc in schemas.values() for f in OmegaConf.structured(sc).keys()})
            node = OmegaConf.create({path[0]: {k: None for k in keys}})
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, DictConfig) and part in node else None
        if isinstance(node, DictConfig):
            return _unknown_key(path, node)
    return first_line(err)


def first_line(err: BaseException) -> str:
    """The first non-empty message line along an exception's cause chain."""
    seen: BaseException | None = err
    while seen is not None:
        text = str(seen).strip()
        if text:
            return text.splitlines()[0]
        seen = seen.__cause__ or seen.__context__
    return type(err).__name__
