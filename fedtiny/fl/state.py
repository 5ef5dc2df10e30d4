"""Per-process state of an experiment: the task, the int8 model and each client's cached
frozen-prefix features. Keyed by the experiment's config JSON, which the server sends in
every message, so the same ClientApp serves simulation and ``flwr run``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fedtiny.config import dataset_dict
from fedtiny.data import FederatedTask, build_task
from fedtiny.models.pretrain import Backbone, get_backbone
from fedtiny.trainer import Model


@dataclass
class ExperimentState:
    cfg: DictConfig
    task: FederatedTask
    backbone: Backbone
    model: Model


@dataclass
class ClientState:
    x_train: np.ndarray  # features computed once: int8 at the model boundary, or float32 entering
    y_train: np.ndarray  # trainable layer `start_layer` (the deepest layer the device's scheme leaves alone)
    x_test: np.ndarray   # int8 boundary features (evaluation of the whole global model)
    y_test: np.ndarray
    start_layer: int = 0


def config_json(cfg: DictConfig) -> str:
    return json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)


_STATES: dict[str, ExperimentState] = {}


def experiment_state(cfg_json: str, log=None) -> ExperimentState:
    """The experiment's state in this process, built once per config (`log` only reports
    pretraining; it is not part of the key)."""
    if cfg_json not in _STATES:
        cfg = OmegaConf.create(json.loads(cfg_json))
        task = build_task(cfg.dataset.name, cfg.dataset)
        backbone = get_backbone(task, dataset_dict(cfg), cfg.model, cfg.seed, cfg.cache_dir,
                                log=log or (lambda *_: None))
        if len(_STATES) >= 2:  # keep memory bounded across experiments in one process
            _STATES.pop(next(iter(_STATES)))
        _STATES[cfg_json] = ExperimentState(cfg, task, backbone, Model(backbone.model_bytes))
    return _STATES[cfg_json]


def features(model: Model, x: np.ndarray) -> np.ndarray:
    return model.prefix_features(model.quantize_input(x))


@lru_cache(maxsize=512)
def client_state(cfg_json: str, partition_id: int) -> ClientState:
    st = experiment_state(cfg_json)
    if not 0 <= partition_id < len(st.task.clients):
        raise ValueError(f"partition-id {partition_id} outside [0, {len(st.task.clients)})")
    c = st.task.clients[partition_id]
    scheme, _ = device_scheme(cfg_json, device_budget_kb(st.cfg, partition_id))
    start = train_config_for(cfg_json, partition_id).start_layer if scheme is not None else 0
    x_train = st.model.features_at(st.model.quantize_input(c.train.x), start) if start else features(st.model, c.train.x)
    return ClientState(x_train, c.train.y.astype(np.uint8), features(st.model, c.test.x), c.test.y.astype(np.uint8),
                       start)


def scheme_scores(cfg_json: str) -> dict[str, float]:
    """Contribution analysis of the run's candidate schemes by transfer on vendor data (cached)."""
    from fedtiny.budgets.memory import contribution_analysis

    st = experiment_state(cfg_json)
    return contribution_analysis(st.model, lambda: transfer_proxy(st), st.cfg.cache_dir,
                                 epochs=int(st.cfg.budget.memory.contribution_epochs), seed=int(st.cfg.seed),
                                 tag=f"{st.task.name}-vendor-{len(st.task.pretrain)}",
                                 precisions=tuple(st.cfg.budget.memory.precisions))


def transfer_proxy(st: ExperimentState):
    """A backbone pretrained like the run's one without one vendor group, and that group's data
    split in two (fine-tune, score), as int8 model inputs."""
    from dataclasses import replace

    from fedtiny.models.export import export_int8
    from fedtiny.models.pretrain import train_float

    cfg, task = st.cfg, st.task
    rng = np.random.default_rng(int(cfg.seed))
    groups = task.pretrain_groups
    if groups is not None and len(np.unique(groups)) > 1:
        held = groups == np.max(groups)
    else:
        held = rng.random(len(task.pretrain)) < 0.3
    seen, unseen = task.pretrain.take(np.flatnonzero(~held)), task.pretrain.take(np.flatnonzero(held))
    net = train_float(replace(task, pretrain=seen), cfg.model, int(cfg.seed))
    calib = seen.x[rng.permutation(len(seen))[: int(cfg.model.calibration_samples)]]
    proxy = Model(export_int8(net, calib, task.num_classes, int(cfg.model.trainable_layers)))
    order = rng.permutation(len(unseen))
    tune, score = order[: len(order) // 2], order[len(order) // 2 :]
    q = proxy.quantize_input
    return (proxy, q(unseen.x[tune]), unseen.y[tune].astype(np.uint8), q(unseen.x[score]),
            unseen.y[score].astype(np.uint8))


def device_budget_kb(cfg: DictConfig, partition_id: int) -> float | None:
    kbs = list(cfg.budget.memory.sram_kb)
    return float(kbs[partition_id % len(kbs)]) if kbs else None


@lru_cache(maxsize=64)
def device_scheme(cfg_json: str, sram_kb: float | None):
    """(scheme, arena bytes) for a device with `sram_kb` of SRAM; (None, None) without a budget."""
    from fedtiny.budgets.memory import choose_scheme

    if sram_kb is None:
        return None, None
    st = experiment_state(cfg_json)
    budget = int((sram_kb - float(st.cfg.budget.memory.reserve_kb)) * 1024)
    q = st.cfg.codec
    return choose_scheme(st.model, client_train_config(st.cfg), budget, lambda: scheme_scores(cfg_json),
                         tuple(st.cfg.budget.memory.precisions), int(q.bits) if q.error_feedback else None)


def train_config_for(cfg_json: str, partition_id: int, prox_mu: float = 0.0):
    """The device's training settings: its scheme, with samples entering where the scheme begins."""
    from fedtiny.budgets.memory import scheme_config

    st = experiment_state(cfg_json)
    scheme, _ = device_scheme(cfg_json, device_budget_kb(st.cfg, partition_id))
    base = client_train_config(st.cfg, prox_mu=prox_mu)
    return base if scheme is None else scheme_config(st.model, base, scheme.update, scheme.precision)


def client_train_config(cfg: DictConfig, update=None, prox_mu: float = 0.0):
    from fedtiny.trainer import TrainConfig

    c = cfg.client
    return TrainConfig(lr=float(c.lr), momentum=float(c.momentum), weight_decay=float(c.weight_decay),
                       batch_size=int(c.batch_size), prox_mu=prox_mu, update=update, precision=str(c.precision),
                       rounding=str(c.rounding))


@lru_cache(maxsize=16)
def privacy_plan(cfg_json: str) -> dict:
    """Noise multiplier, accounting and allowed rounds of the run (fedtiny.budgets.privacy)."""
    from fedtiny.budgets.privacy import plan_privacy

    st = experiment_state(cfg_json)
    return plan_privacy(st.cfg, len(st.task.clients))


def dp_denominators(cfg_json: str, shapes: dict, axes: dict) -> dict:
    """Central DP: per tensor and output channel, q times the devices whose scheme updates it
    (a public, fixed quantity; what DP-FedAvg divides the noisy sum by)."""
    from fedtiny.trainer import Trainer

    st = experiment_state(cfg_json)
    plan = privacy_plan(cfg_json)
    capable = {k: np.zeros(shapes[k][axes[k]]) for k in shapes}
    for pid in range(len(st.task.clients)):
        trainer = Trainer(st.model, train_config_for(cfg_json, pid))
        for k in range(len(st.model.layers) - st.model.first_trainable):
            kind, bias_on, channels = trainer.layer_update(k)
            if kind != "none":
                capable[f"layer{k}.weight"][channels] += 1
            if bias_on:
                capable[f"layer{k}.bias"][:] += 1
    return {k: plan["q"] * v for k, v in capable.items()}
