"""An emulated fleet: N QEMU mps2-an386 boards running fedtiny's firmware, each behind its own
bridge process (``fedtiny board serve``), optionally with a damaging proxy on the serial link.
With ``link="ble"`` each board's UART sits behind a BLE-UART peripheral on a virtual air
(``fedtiny.devices.ble_bumble``, one process for the fleet) and its bridge opens a ``ble://``
URL: bleak over bumble, HCI over TCP to the air.

    with Fleet(firmware, [data_block(x0, y0), data_block(x1, y1)], workdir) as fleet:
        fleet.urls      # bridge URLs, one per board: what devices.urls / board-url take

Each board gets its local data placed in PSRAM at boot by QEMU's ``-device loader`` (as a
board's flash would hold it). QEMU and the bridges die with the process that started them
(Linux parent-death signal), and :meth:`Fleet.stop` terminates them with timeouts, killing
what does not exit, so no emulator is left running. With ``supervise=True`` (what a run's fleet
uses) a thread restarts an emulator or a bridge that dies: the board boots again with its data
on the same UART port, its bridge keeps its URL, and the board rejoins at its next round with
its model reloaded (the host sees the board's model CRC change). Restarts are counted.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedtiny.client.context import RunContext
from fedtiny.config import LINKS, SERIAL_MODES

ROOT = Path(__file__).resolve().parents[2] / "device_trainer_c"
DATA_ADDR = 0x21000000
TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm", "cmake")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_firmware(build: Path, target: str = "ft_board_mps2") -> Path:
    """Cross-build `target` of device_trainer_c for the Cortex-M4F (Debian's arm-none-eabi-gcc)
    into `build`; returns the ELF."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"building the firmware needs {missing} (bash scripts/setup.sh installs them)")
    if not (ROOT / "CMakeLists.txt").exists():
        raise RuntimeError(f"no firmware sources at {ROOT}: pass devices.firmware=<ELF> instead")
    for step in (["cmake", "-S", str(ROOT), "-B", str(build),
                  f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake/arm-none-eabi-cortex-m4.cmake'}", "-DCMAKE_BUILD_TYPE=Release"],
                 ["cmake", "--build", str(build), "--target", target, "-j", "2"]):
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"firmware build failed: {' '.join(step[:3])}...\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return build / f"{target}.elf"


def cached_firmware(cache_dir: str | Path) -> Path:
    """The board firmware built once per source version into the cache."""
    digest = hashlib.sha256()
    for path in sorted(p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".c", ".h", ".inc", ".ld", ".txt",
                                                                                   ".cmake")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    build = Path(cache_dir).expanduser() / "firmware" / digest.hexdigest()[:16]
    elf = build / "ft_board_mps2.elf"
    return elf if elf.exists() else build_firmware(build)


class Fleet:
    """N emulated boards and their bridges. `damage` > 0 puts an injector (fedtiny.devices.injector)
    between each bridge and its board that damages that fraction of bytes in both directions
    (`damage_every` = n: also one byte in every n);
    `icount` runs QEMU with ``-icount shift=0`` (one instruction per virtual nanosecond, for
    instruction counts). `serial` is how a bridge reaches its board's UART: "tcp" (a
    ``socket://`` URL) or "pty" (a pseudo-terminal, ``/dev/pts/N``, opened by pyserial as the
    port of a board on USB would be; no injector then). `supervise` restarts emulators and
    bridges that die (counted in :meth:`restarts`)."""

    def __init__(self, firmware: str | Path, data_blocks: list[bytes], workdir: str | Path, damage: float = 0.0,
                 icount: bool = False, seed: int = 0, in_process_bridges: bool = False, retries: int = 0, damage_every: int = 0,
                 watch=None, serial: str = "tcp", supervise: bool = False, link: str = "serial",
                 ble_params: str = "") -> None:
        if serial not in SERIAL_MODES:
            raise ValueError(f"serial must be one of {SERIAL_MODES}, got {serial!r}")
        if serial == "pty" and (damage > 0 or damage_every or watch is not None):
            raise ValueError("damage and watch need serial='tcp': the injector is a TCP proxy")
        if link not in LINKS:
            raise ValueError(f"link must be one of {LINKS}, got {link!r}")
        if link == "ble" and serial != "tcp":
            raise ValueError("link='ble' needs serial='tcp': the BLE-UART peripheral reaches the board's UART over TCP")
        self.serial, self.link, self.ble_params = serial, link, ble_params
        # the host's Bluetooth stack for link='ble': "bumble" (fedtiny's bleak backend, HCI over TCP;
        # what CI uses) or "bluez" (bleak's BlueZ backend; the air's controller on /dev/vhci)
        self.ble_stack = os.environ.get("FEDTINY_BLE_STACK", "bumble")
        if link == "ble" and self.ble_stack not in ("bumble", "bluez"):
            raise ValueError(f"FEDTINY_BLE_STACK must be bumble or bluez, got {self.ble_stack!r}")
        self.air: subprocess.Popen | None = None  # link='ble': the air (fedtiny.devices.ble_bumble)
        self.hci_ports: list[int] = []
        self.air_restarts = 0
        self.firmware, self.blocks, self.workdir = Path(firmware), list(data_blocks), Path(workdir)
        self.damage, self.icount, self.seed, self.in_process = damage, icount, seed, in_process_bridges
        # a damaged link loses more frames: the bridges try more often (default 3, 10 with damage)
        self.retries = retries or (10 if damage > 0 or damage_every else 3)
        self.damage_every, self.watch = damage_every, watch  # watch(i, direction, bytes) on board i's link
        self.qemu: list[subprocess.Popen | None] = []
        self.bridges: list = []  # subprocesses, or Bridge objects in process
        self.ports: list[int] = []  # each board's UART port (tcp), kept when it is restarted
        self.supervise, self.supervise_interval = supervise, 0.5
        self.board_restarts = [0] * len(self.blocks)
        self.bridge_restarts = [0] * len(self.blocks)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.timeout = 30.0
        self.injectors: list = []
        self.urls: list[str] = []
        self.board_urls: list[str] = []  # where each bridge reaches its board

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> Fleet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        try:
            for i, block in enumerate(self.blocks):
                (self.workdir / f"board{i}.data").write_bytes(block)
                self.ports.append(_free_port())
                self.qemu.append(None)
                url = self._start_board(i)
                if self.damage > 0 or self.damage_every or self.watch is not None:
                    from fedtiny.devices.injector import Injector

                    watch = (lambda way, data, i=i: self.watch(i, way, data)) if self.watch is not None else None
                    inj = Injector(("127.0.0.1", self.ports[i]), self.damage, seed=self.seed + i,
                                   every=self.damage_every, watch=watch).start()
                    self.injectors.append(inj)
                    url = inj.url
                self.board_urls.append(url)
            if self.link == "ble":
                self.hci_ports = [_free_port() for _ in self.blocks]
                self._start_air()
                self.board_urls = [self.ble_url(i) for i in range(len(self.blocks))]
            for i in range(len(self.blocks)):
                self.bridges.append(None)
                self._start_bridge(i, 0)
            for i, b in enumerate(self.bridges):
                self.urls.append(b.url if self.in_process else self._bridge_ready(i))
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self._thread = threading.Thread(target=self._supervise, daemon=True, name="fleet-supervisor")
            self._thread.start()
        return self

    def _start_board(self, i: int) -> str:
        """Boot board i's emulator (on its UART port, kept across restarts); its UART's URL."""
        port = self.ports[i]
        uart = f"tcp:127.0.0.1:{port},server=on,wait=off" if self.serial == "tcp" else "pty"
        cmd = ["qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-monitor", "none",
               "-serial", uart, "-semihosting-config",
               "enable=on,target=native", "-kernel", str(self.firmware),
               "-device", f"loader,file={self.workdir / f'board{i}.data'},addr={DATA_ADDR:#x}"]
        if self.icount:
            cmd[1:1] = ["-icount", "shift=0"]
        log_path = self.workdir / f"board{i}.qemu.log"
        with open(log_path, "wb") as log:
            self.qemu[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent)
        if self.serial == "pty":
            return _wait_pty(log_path, self.qemu[i], self.timeout)
        _wait_listening(port, self.qemu[i], self.timeout)
        return f"socket://127.0.0.1:{port}"

    @staticmethod
    def ble_address(i: int) -> str:
        """Board i's BLE address (a random static one) on the virtual air."""
        return f"F1:00:00:00:{(i + 1) >> 8:02X}:{(i + 1) & 0xFF:02X}"

    def ble_url(self, i: int) -> str:
        """The ``ble://`` URL board i's bridge opens: bleak over bumble, HCI over TCP to the air;
        with the BlueZ stack, bleak's own BlueZ backend (the air's controller is the kernel's)."""
        if self.ble_stack == "bluez":
            return f"ble://{self.ble_address(i)}" + (f"?{self.ble_params}" if self.ble_params else "")
        extra = f"&{self.ble_params}" if self.ble_params else ""
        return f"ble://{self.ble_address(i)}?hci=tcp-client:127.0.0.1:{self.hci_ports[i]}{extra}"

    def _start_air(self) -> None:
        """The air (one process): per board a NUS peripheral forwarding to the board's UART (or
        the injector in front of it) and a host-facing controller on its HCI port (with the
        BlueZ stack, one controller for all on the kernel's vhci)."""
        bluez = self.ble_stack == "bluez"
        boards = [f"{self.ble_address(i)}={int(self._uart_url(i).rsplit(':', 1)[1])}"
                  + ("" if bluez else f"@{self.hci_ports[i]}") for i in range(len(self.blocks))]
        with open(self.workdir / "air.log", "ab") as log:
            self.air = subprocess.Popen([sys.executable, "-m", "fedtiny.devices.ble_bumble",
                                         *(["--host-hci", "vhci"] if bluez else []), *boards],
                                        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                                        preexec_fn=_die_with_parent)
        line = _read_line(self.air, self.timeout, "the BLE air")
        if not line.startswith("air with"):
            raise RuntimeError(f"the BLE air did not start: {line!r} (see {self.workdir / 'air.log'})")
        if bluez:
            from fedtiny.devices.ble_bumble import wait_for_bluez

            wait_for_bluez(1, self.timeout)  # bluetoothd has taken the air's vhci controller

    def _uart_url(self, i: int) -> str:
        """Where board i's UART is reached: its injector when there is one, else QEMU's port."""
        return self.injectors[i].url if self.injectors else f"socket://127.0.0.1:{self.ports[i]}"

    def _start_bridge(self, i: int, port: int) -> None:
        """Start board i's bridge (serving on `port`, 0: any free one)."""
        from fedtiny.devices.bridge import Bridge

        if self.in_process:
            self.bridges[i] = Bridge(self.board_urls[i], port=port, retries=self.retries).start()
            return
        with open(self.workdir / f"board{i}.bridge.log", "ab") as err:
            self.bridges[i] = subprocess.Popen(
                [sys.executable, "-m", "fedtiny", "board", "serve", self.board_urls[i], "--retries", str(self.retries),
                 "--port", str(port)],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True, preexec_fn=_die_with_parent)

    def _bridge_ready(self, i: int) -> str:
        line = _read_line(self.bridges[i], self.timeout)
        if not line.startswith("bridge "):
            raise RuntimeError(f"a bridge did not start: {line!r}")
        return line.split(" on ")[-1]

    # -- supervision -----------------------------------------------------------------------------

    def _supervise(self) -> None:
        """Restart every emulator or bridge process that died, until :meth:`stop`: a board boots
        again with its data (its model is reloaded at its next round: the host sees its model
        CRC change) and its bridge keeps its URL."""
        # what this thread starts gets the parent-death signal when this thread ends: in stop(),
        # which ends those processes anyway
        while not self._stopping.wait(self.supervise_interval):
            with self._lock:
                try:
                    self._revive_air()
                except Exception as err:  # noqa: BLE001 - try again at the next look
                    print(f"fedtiny fleet: the BLE air could not be restarted: {err}", file=sys.stderr, flush=True)
                for i in range(len(self.qemu)):
                    if self._stopping.is_set():
                        return
                    try:
                        self._revive(i)
                    except Exception as err:  # noqa: BLE001 - try again at the next look
                        print(f"fedtiny fleet: board {i} could not be restarted: {err}", file=sys.stderr, flush=True)

    def _revive_air(self) -> None:
        if self.air is not None and self.air.poll() is not None:
            self.air_restarts += 1
            self.air.stdout.close()
            self._start_air()  # the bridges open their links again at their next request

    def _revive(self, i: int) -> None:
        q, b = self.qemu[i], self.bridges[i]
        bridge_dead = isinstance(b, subprocess.Popen) and b.poll() is not None
        if q is not None and q.poll() is not None:
            self.board_restarts[i] += 1
            url = self._start_board(i)  # a TCP UART keeps its port (and the injector in front of it)
            if self.serial == "pty" and url != self.board_urls[i]:  # a new pseudo-terminal: the bridge opens it
                self.board_urls[i] = url
                if isinstance(b, subprocess.Popen):
                    _end(b)
                    self._start_bridge(i, int(self.urls[i].rsplit(":", 1)[1]))
                    self._bridge_ready(i)
                else:
                    b.board_url = url
        if bridge_dead:
            self.bridge_restarts[i] += 1
            self._start_bridge(i, int(self.urls[i].rsplit(":", 1)[1]))
            self._bridge_ready(i)

    def restarts(self) -> dict:
        """Emulator and bridge restarts so far (the supervisor's), summed over the boards."""
        return {"board_restarts": sum(self.board_restarts),
                "bridge_restarts": sum(self.bridge_restarts) + self.air_restarts}

    def kill_board(self, i: int) -> None:
        """Kill board i's emulator outright (SIGKILL), as pulling a board's power would."""
        with self._lock:
            self.qemu[i].kill()
            self.qemu[i].wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout + 30)
            self._thread = None
        for b in self.bridges:
            if isinstance(b, subprocess.Popen):
                if b.poll() is None:
                    b.send_signal(signal.SIGTERM)
            elif b is not None:
                b.close()
        for inj in self.injectors:
            inj.close()
        for q in self.qemu + [self.air]:
            if q is not None and q.poll() is None:
                q.terminate()
        deadline = time.monotonic() + timeout
        for proc in ([b for b in self.bridges if isinstance(b, subprocess.Popen)] + [q for q in self.qemu if q]
                     + ([self.air] if self.air is not None else [])):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        self.qemu, self.bridges, self.injectors, self.urls, self.board_urls, self.ports = [], [], [], [], [], []
        self.air = None


def _end(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"QEMU exited with status {proc.returncode} before opening its serial port")
        with socket.socket() as s:
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                time.sleep(0.05)
                continue
        return  # QEMU accepted (and saw the probe close); the port takes the next client
    raise RuntimeError(f"QEMU did not open its serial port within {timeout:g} s")


def _wait_pty(log: Path, proc: subprocess.Popen, timeout: float) -> str:
    """The pseudo-terminal QEMU gave the board's UART, from its report in `log`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(rb"char device redirected to (/dev/pts/\d+) \(label serial0\)", log.read_bytes())
        if found:
            return found.group(1).decode()
        if proc.poll() is not None:
            raise RuntimeError(f"QEMU exited with status {proc.returncode} before opening its serial port")
        time.sleep(0.05)
    raise RuntimeError(f"QEMU did not report its serial pseudo-terminal within {timeout:g} s")


def _read_line(proc: subprocess.Popen, timeout: float, what: str = "a bridge") -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise RuntimeError(f"{what} printed nothing within {timeout:g} s")
    return proc.stdout.readline().strip()


def fleet_for_experiment(run: RunContext, workdir: Path, log=print, **fleet_options) -> Fleet:
    """Start `devices.emulate` boards for a run: board i holds the training split of partition
    ``devices.partitions[i]`` (default i) as the simulated device has it: int8 boundary
    features, or float32 features cached where its update scheme starts."""
    from fedtiny.devices.link import data_block

    cfg = run.cfg
    n = int(cfg.devices.emulate)
    parts = list(cfg.devices.partitions) or list(range(n))
    blocks = []
    for pid in parts[:n]:
        c = run.device(pid)
        blocks.append(data_block(c.x_train, c.y_train, c.start_layer))
    firmware = Path(cfg.devices.firmware) if cfg.devices.firmware else cached_firmware(cfg.cache_dir)
    log(f"emulating {n} mps2-an386 boards (partitions {parts[:n]}) with {firmware}")
    return Fleet(firmware, blocks, workdir, damage=float(cfg.devices.damage), seed=int(cfg.seed),
                 serial=str(cfg.devices.serial), link=str(cfg.devices.link), ble_params=ble_query(cfg.board.get("ble")),
                 **fleet_options).start()


def ble_query(ble) -> str:
    """The ``ble://`` URL parameters of a board profile's `ble` section (MTU, data length, PHY,
    interval, packets per event); the defaults without one."""
    from fedtiny.budgets.ble import LinkParams, link_params

    p = link_params(ble) if ble is not None else LinkParams()
    return f"mtu={p.mtu}&dl={p.data_length}&phy={p.phy}&interval={p.interval_ms:g}&ppe={p.packets_per_event}"
