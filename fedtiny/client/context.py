"""The run context: what one process needs to play its part in a run, built once and passed
explicitly to whatever uses it.

:class:`RunContext` holds the run's validated config, its task (the devices' data), the
pretrained backbone and the int8 :class:`~fedtiny.trainer.Model`, and computes on first use,
then keeps: every device's frozen-prefix features (:class:`DeviceData`), the update scheme each
memory budget allows, the privacy plan and central DP's denominators. The server builds it in
:func:`fedtiny.server.prepare.prepare_output`; a client process builds it the first time a
message of the run reaches it (:func:`run_context`), so a simulated device's features are
computed once per process, not once per round.

A run is named by :attr:`RunContext.run_id`, a hash of its config without the settings that
only say where files live or how progress shows (``cache_dir``, ``progress``): that hash, not
the config, travels in every Flower message, and a client whose own config hashes otherwise
refuses the message (it would train another experiment).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fedtiny.client.features import cached_features
from fedtiny.config import dataset_dict
from fedtiny.data import FederatedTask, build_task
from fedtiny.models.pretrain import Backbone, get_backbone
from fedtiny.trainer import Model, TrainConfig, Trainer

LOCAL_KEYS = ("cache_dir", "progress")  # where files live, how progress shows: not part of a run's identity


@dataclass
class DeviceData:
    """One device's data as its trainer sees it, computed once per process."""

    x_train: np.ndarray  # int8 at the model boundary, or float32 entering trainable layer `start_layer`
    y_train: np.ndarray  # (the deepest layer the device's scheme leaves alone)
    x_test: np.ndarray  # int8 boundary features (evaluation of the whole global model)
    y_test: np.ndarray
    start_layer: int = 0


def config_json(cfg: DictConfig) -> str:
    """The resolved config as canonical JSON (sorted keys): what a client process rebuilds it from."""
    return json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)


def run_id_of(cfg_json: str) -> str:
    """The run's identifier: 16 hex digits of SHA-256 over its config without :data:`LOCAL_KEYS`."""
    raw = {k: v for k, v in json.loads(cfg_json).items() if k not in LOCAL_KEYS}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def train_config(cfg: DictConfig, update=None, prox_mu: float = 0.0) -> TrainConfig:
    """The run's base training settings (``client`` group), before a device's scheme."""
    c = cfg.client
    return TrainConfig(lr=float(c.lr), momentum=float(c.momentum), weight_decay=float(c.weight_decay),
                       batch_size=int(c.batch_size), prox_mu=prox_mu, update=update, precision=str(c.precision),
                       rounding=str(c.rounding))


class RunContext:
    """One run in this process: config, task, backbone and model, and per-device plans."""

    def __init__(self, cfg: DictConfig, log=None):
        self.config_json = config_json(cfg)
        self.cfg = OmegaConf.create(json.loads(self.config_json))
        self.run_id = run_id_of(self.config_json)
        self.task: FederatedTask = build_task(self.cfg.dataset.name, self.cfg.dataset)
        self.backbone: Backbone = get_backbone(self.task, dataset_dict(self.cfg), self.cfg.model, self.cfg.seed,
                                               self.cfg.cache_dir, log=log or (lambda *_: None),
                                               progress=log is not None and bool(self.cfg.get("progress", False)))
        self.model = Model(self.backbone.model_bytes)
        self._devices: dict[int, DeviceData] = {}
        self._schemes: dict[float, tuple] = {}
        self._scores: dict[str, float] | None = None
        self._privacy: dict | None = None

    @classmethod
    def from_json(cls, cfg_json: str, log=None) -> RunContext:
        return cls(OmegaConf.create(json.loads(cfg_json)), log=log)

    # -- devices -------------------------------------------------------------------------------

    def budget_kb(self, partition_id: int) -> float | None:
        """The device's SRAM budget in KiB (``budget.memory.sram_kb``, cycled), None without one."""
        kbs = list(self.cfg.budget.memory.sram_kb)
        return float(kbs[partition_id % len(kbs)]) if kbs else None

    def scheme(self, sram_kb: float | None):
        """(scheme, arena bytes) for a device with `sram_kb` of SRAM; (None, None) without a budget."""
        from fedtiny.budgets.memory import choose_scheme

        if sram_kb is None:
            return None, None
        if sram_kb not in self._schemes:
            budget = int((sram_kb - float(self.cfg.budget.memory.reserve_kb)) * 1024)
            q = self.cfg.codec
            self._schemes[sram_kb] = choose_scheme(self.model, train_config(self.cfg), budget, self.scheme_scores,
                                                   tuple(self.cfg.budget.memory.precisions),
                                                   int(q.bits) if q.error_feedback else None)
        return self._schemes[sram_kb]

    def device_scheme(self, partition_id: int):
        return self.scheme(self.budget_kb(partition_id))

    def memory_schemes(self) -> dict:
        """The update scheme and arena bytes of every distinct memory budget of the run."""
        return {float(kb): self.scheme(float(kb)) for kb in sorted(set(self.cfg.budget.memory.sram_kb))}

    def train_config(self, partition_id: int, prox_mu: float = 0.0) -> TrainConfig:
        """The device's training settings: its scheme, with samples entering where the scheme begins."""
        from fedtiny.budgets.memory import scheme_config

        scheme, _ = self.device_scheme(partition_id)
        base = train_config(self.cfg, prox_mu=prox_mu)
        return base if scheme is None else scheme_config(self.model, base, scheme.update, scheme.precision)

    def device(self, partition_id: int) -> DeviceData:
        """The device's features, computed the first time they are asked for in this process."""
        if partition_id not in self._devices:
            if not 0 <= partition_id < len(self.task.clients):
                raise ValueError(f"partition-id {partition_id} outside [0, {len(self.task.clients)})")
            c = self.task.clients[partition_id]
            scheme, _ = self.device_scheme(partition_id)
            start = self.train_config(partition_id).start_layer if scheme is not None else 0
            self._devices[partition_id] = DeviceData(self.features(c.train.x, start), c.train.y.astype(np.uint8),
                                                     self.features(c.test.x), c.test.y.astype(np.uint8), start)
        return self._devices[partition_id]

    def features(self, x: np.ndarray, start_layer: int = 0) -> np.ndarray:
        """Features of samples `x` where trainable layer `start_layer` begins, computed once per
        (model, data) on this machine: mapped read-only from the on-disk cache
        (:mod:`fedtiny.client.features`) by every process and run that needs them."""
        return cached_features(self.cfg.cache_dir, self.model, x, start_layer, self.backbone.model_bytes)

    # -- scheme choice ---------------------------------------------------------------------------

    def scheme_scores(self) -> dict[str, float]:
        """Contribution analysis of the run's candidate schemes by transfer on vendor data (cached on disk)."""
        from fedtiny.budgets.memory import contribution_analysis

        if self._scores is None:
            cfg = self.cfg
            self._scores = contribution_analysis(
                self.model, self.transfer_proxy, cfg.cache_dir, epochs=int(cfg.budget.memory.contribution_epochs),
                seed=int(cfg.seed), tag=f"{self.task.name}-vendor-{len(self.task.pretrain)}",
                precisions=tuple(cfg.budget.memory.precisions))
        return self._scores

    def transfer_proxy(self):
        """A backbone pretrained like the run's one without one vendor group, and that group's data
        split in two (fine-tune, score), as int8 model inputs. An imported ``.tflite`` is its own
        proxy, with all the vendor data."""
        from fedtiny.models.export import export_int8
        from fedtiny.models.pretrain import train_float

        cfg, task = self.cfg, self.task
        rng = np.random.default_rng(int(cfg.seed))
        if self.backbone.net is None:  # an imported .tflite: trained elsewhere, so all vendor data is unseen by it
            order = rng.permutation(len(task.pretrain))
            tune, score = order[: len(order) // 2], order[len(order) // 2 :]
            q, v = self.model.quantize_input, task.pretrain
            return (self.model, q(v.x[tune]), v.y[tune].astype(np.uint8), q(v.x[score]), v.y[score].astype(np.uint8))
        groups = task.pretrain_groups
        if groups is not None and len(np.unique(groups)) > 1:
            held = groups == np.max(groups)
        else:
            held = rng.random(len(task.pretrain)) < 0.3
        seen, unseen = task.pretrain.take(np.flatnonzero(~held)), task.pretrain.take(np.flatnonzero(held))
        float_model = train_float(replace(task, pretrain=seen), cfg.model, int(cfg.seed))
        calib = seen.x[rng.permutation(len(seen))[: int(cfg.model.calibration_samples)]]
        proxy = Model(export_int8(float_model, calib, task.num_classes, int(cfg.model.trainable_layers)))
        order = rng.permutation(len(unseen))
        tune, score = order[: len(order) // 2], order[len(order) // 2 :]
        q = proxy.quantize_input
        return (proxy, q(unseen.x[tune]), unseen.y[tune].astype(np.uint8), q(unseen.x[score]),
                unseen.y[score].astype(np.uint8))

    # -- privacy ---------------------------------------------------------------------------------

    def privacy_plan(self) -> dict:
        """Noise multiplier, accounting and allowed rounds of the run (fedtiny.budgets.privacy)."""
        from fedtiny.budgets.privacy import plan_privacy

        if self._privacy is None:
            self._privacy = plan_privacy(self.cfg, len(self.task.clients))
        return self._privacy

    def dp_denominators(self, shapes: dict, axes: dict) -> dict:
        """Central DP: per tensor and output channel, q times the devices whose scheme updates it
        (a public, fixed quantity; what DP-FedAvg divides the noisy sum by)."""
        capable = {k: np.zeros(shapes[k][axes[k]]) for k in shapes}
        for pid in range(len(self.task.clients)):
            trainer = Trainer(self.model, self.train_config(pid))
            for k in range(len(self.model.layers) - self.model.first_trainable):
                kind, bias_on, channels = trainer.layer_update(k)
                if kind != "none":
                    capable[f"layer{k}.weight"][channels] += 1
                if bias_on:
                    capable[f"layer{k}.bias"][:] += 1
        return {k: self.privacy_plan()["q"] * v for k, v in capable.items()}


_RUNS: dict[str, RunContext] = {}


def run_context(cfg_json: str, log=None) -> RunContext:
    """This process's context of the run whose config is `cfg_json`: built the first time, then
    the same object. A process keeps the contexts of its last two runs (a sweep in one process
    moves on; its memory stays bounded)."""
    key = hashlib.sha256(cfg_json.encode()).hexdigest()
    if key not in _RUNS:
        if len(_RUNS) >= 2:
            _RUNS.pop(next(iter(_RUNS)))
        _RUNS[key] = RunContext.from_json(cfg_json, log=log)
    return _RUNS[key]
