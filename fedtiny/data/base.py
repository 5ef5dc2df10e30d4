"""The data interface of fedtiny: what a task hands to the experiment.

A built-in task is a function ``build(cfg) -> FederatedTask`` registered under a name with
:func:`register_task`. Your own data set is a plugin: any importable function returning a
:class:`FederatedTask` (float32 samples shaped ``(N, H, W, C)``, integer labels), named by
``_target_`` in a dataset config of your own config directory and called with that config's
other keys as keyword arguments (``fedtiny.plugins``; the worked example is
``examples/csv_timeseries``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedtiny.errors import ConfigError
from fedtiny.plugins import DATASET_KEYS, TARGET, call, plain, resolve


@dataclass
class Split:
    """Samples ``x`` (float32, ``(N, H, W, C)``) and labels ``y`` (int64, ``(N,)``)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        self.y = np.ascontiguousarray(self.y, dtype=np.int64)
        if self.x.ndim != 4 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Split needs x (N, H, W, C) and y (N,), got {self.x.shape} and {self.y.shape}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> Split:
        return Split(self.x[idx], self.y[idx])

    @staticmethod
    def concat(parts: list[Split]) -> Split:
        return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


@dataclass
class ClientData:
    """One federated device: a name (e.g. ``subject07-left``) and its local splits."""

    name: str
    train: Split
    test: Split


@dataclass
class FederatedTask:
    """Everything an experiment needs from a data set.

    ``pretrain``/``pretrain_val``: the vendor's data, used only to pretrain and calibrate the
    backbone. ``clients``: the field devices, in partition-id order. ``server_test``:
    held-out field data the server evaluates the global model on each round.
    """

    name: str
    input_shape: tuple[int, int, int]
    class_names: list[str]
    pretrain: Split
    pretrain_val: Split
    clients: list[ClientData]
    server_test: Split
    info: dict = field(default_factory=dict)
    pretrain_groups: np.ndarray | None = None  # optional group id (e.g. subject) per pretrain sample

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_TASKS: dict[str, Callable[..., FederatedTask]] = {}


def register_task(name: str) -> Callable[[Callable[..., FederatedTask]], Callable[..., FederatedTask]]:
    """Decorator: make ``build(cfg) -> FederatedTask`` available as ``dataset.name=<name>``."""

    def wrap(fn: Callable[..., FederatedTask]) -> Callable[..., FederatedTask]:
        _TASKS[name] = fn
        return fn

    return wrap


def task_names() -> list[str]:
    return sorted(_TASKS)


def build_task(name: str, cfg) -> FederatedTask:
    """The task of a dataset config: its ``_target_`` loader (a plugin, fedtiny.plugins) or the
    built-in registered under ``name``."""
    if cfg is not None and TARGET in cfg:
        return _plugin_task(cfg)
    if name not in _TASKS:
        raise ConfigError(f"unknown dataset '{name}' (known: {', '.join(task_names())})")
    return _TASKS[name](cfg)


def _plugin_task(cfg) -> FederatedTask:
    target = cfg[TARGET]
    fn = resolve(target, "dataset._target_")
    node = plain(cfg)
    given = {k: v for k, v in node.items() if k != TARGET and k not in DATASET_KEYS}
    try:
        task = call(fn, given, {k: node.get(k) for k in DATASET_KEYS})
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's loader failed: its reason, in one line
        raise ConfigError(f"dataset: {target} failed: {type(err).__name__}: {err}") from err
    if not isinstance(task, FederatedTask):
        raise ConfigError(f"dataset: {target} returned {type(task).__name__}, not a fedtiny.data.FederatedTask")
    return task


def temporal_split(n: int, fractions: tuple[float, ...], gap: int) -> list[np.ndarray]:
    """Split n time-ordered windows into consecutive parts: the last parts get `fractions` of
    the windows, the first part the rest; `gap` windows are dropped between parts so
    overlapping windows never straddle a boundary."""
    sizes = [int(round(n * f)) for f in fractions]
    first = max(0, n - sum(sizes) - gap * len(sizes))
    parts, start = [np.arange(first)], first
    for size in sizes:
        start += gap
        parts.append(np.arange(start, min(n, start + size)))
        start += size
    return parts
