"""Memory planner: exact bytes of an update scheme, candidate schemes, and the choice of the
best scheme that fits a board's SRAM budget.

* :func:`memory_report` itemises the trainer's arena (the C plan, which equals the measured
  high-water mark) plus what lives in flash (the model file) and the caller-owned trainer state.
* :func:`candidate_schemes` lists sparse updates in the spirit of MIT's tiny-training: the last
  layer (the classifier) is always updated in full; deeper layers add their biases, a fraction of
  their output channels' weights (ranked by weight L2 norm), or their full weights. Each scheme
  comes in every allowed precision: float32 weight copies, or int8 weights with a per-channel
  scale and QAS steps (named ``<scheme>/int8``; see ft_trainer.h).
* :func:`contribution_analysis` scores every candidate by transfer on the vendor's data: a proxy
  backbone is pretrained and exported exactly like the real one but without one vendor group
  (a subject, or 30 % of the samples when the data has no groups); each scheme then fine-tunes
  the proxy (pretrained classifier included) on half of the held-out group with the C trainer,
  and its score is the accuracy on the other half. A scheme that adapts better to data the
  backbone has not seen scores higher. No field data is used. Scores are cached.
* :func:`codec_bytes` sizes what the update codec adds in RAM: the error-feedback residual (kept
  between rounds, one float32 per value sent) and the encoded update (transmit buffer).
* :func:`choose_scheme` picks the highest-scoring scheme whose arena (plus the error-feedback
  residual, when the run uses it) fits the budget (ties: the smaller arena); a budget that holds no scheme is a :class:`~fedtiny.errors.ConfigError`. Each
  scheme is sized with its samples cached at the deepest layer it leaves untouched
  (:func:`scheme_config`), which is how fedtiny's simulated devices train.
"""

from __future__ import annotations

from collections.abc import Callable

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedtiny import _core
from fedtiny.errors import ConfigError, TrainerError
from fedtiny.trainer import LayerUpdate, Model, TrainConfig, Trainer, plan
from fedtiny.trainer.runtime import PRECISIONS

FRACTIONS = (0.125, 0.25, 0.5)


@dataclass(frozen=True)
class Scheme:
    name: str
    update: tuple[LayerUpdate, ...]
    precision: str = "float32"


def update_tensors(model: Model, config: TrainConfig) -> list[tuple[int, int, bool]]:
    """(values, channels, is_weight) of every tensor an update of `config` sends."""
    out = []
    layers = model.spec.layers[model.first_trainable :]
    update = config.update or tuple(LayerUpdate("all", True) for _ in layers)
    for layer, u in zip(layers, update):
        if not layer.has_params:
            continue
        out_c = layer.out_shape[2]
        row = int(np.prod(np.shape(layer.weights))) // out_c
        if u.weights != "none":
            ch = out_c if u.weights == "all" else int(u.weights)
            out.append((ch * row, ch, True))
        if u.bias:
            out.append((out_c, out_c, False))
    return out


def codec_bytes(model: Model, config: TrainConfig, bits: int = 32, per_channel: bool = True,
                error_feedback: bool = False) -> dict[str, int]:
    """Device RAM the update codec needs besides the arena: the error-feedback residual (one
    float32 per value sent, kept between rounds) and the encoded update (the transmit buffer)."""
    from fedtiny.trainer.codec import Layout, blob_bytes

    tensors = update_tensors(model, config)
    return {"ef_residual": 4 * sum(n for n, _, _ in tensors) if error_feedback else 0,
            "tx_buffer": sum(blob_bytes(bits, per_channel and w, Layout(c, False), n) for n, c, w in tensors)}


def memory_report(model: Model, config: TrainConfig, bits: int = 32, per_channel: bool = True,
                  error_feedback: bool = False) -> dict[str, int]:
    """Itemised bytes: the arena (exact), the codec's residual and transmit buffer, the trainer
    state, their sum (``device_ram``), and the model in flash."""
    p = plan(model, config)
    c = codec_bytes(model, config, bits, per_channel, error_feedback)
    return {
        "arena_params": p.params_bytes, "arena_int8_weights": p.qparams_bytes, "arena_int8_scales": p.qscale_bytes,
        "arena_momentum": p.momentum_bytes, "arena_gradients": p.grads_bytes,
        "arena_anchor": p.anchor_bytes, "arena_channel_maps": p.index_bytes, "arena_int8_prefix": p.prefix_bytes,
        "arena_kernel_scratch": p.scratch_bytes, "arena_activations": p.acts_bytes,
        "arena_gradient_buffers": p.grad_acts_bytes, "arena_total": p.arena_bytes,
        "ef_residual": c["ef_residual"], "tx_buffer": c["tx_buffer"], "trainer_state": int(_core.TRAINER_STRUCT_BYTES),
        "device_ram": p.arena_bytes + c["ef_residual"] + c["tx_buffer"] + int(_core.TRAINER_STRUCT_BYTES),
        "flash_model": len(model.to_bytes()),
    }


def candidate_schemes(model: Model, precisions: tuple[str, ...] = ("float32",)) -> list[Scheme]:
    layers = model.spec.layers[model.first_trainable :]
    with_params = [k for k, layer in enumerate(layers) if layer.has_params]
    if not with_params:
        raise ConfigError("the model has no trainable layer with parameters")
    last = with_params[-1]
    deeper = with_params[:-1]

    def scheme(name: str, extra: dict[int, LayerUpdate]) -> Scheme:
        ups = [LayerUpdate("none", False)] * len(layers)
        for k, u in extra.items():
            ups[k] = u
        ups[last] = LayerUpdate("all", True)
        return Scheme(name, tuple(ups))

    out = [scheme("head", {})]
    for depth in range(1, len(deeper) + 1):
        targets = deeper[-depth:]
        out.append(scheme(f"head+bias{depth}", {k: LayerUpdate("none", True) for k in targets}))
        for frac in FRACTIONS:
            ups = {k: LayerUpdate(max(1, int(round(layers[k].out_shape[2] * frac))), True) for k in targets}
            out.append(scheme(f"head+ch{frac:g}x{depth}", ups))
        out.append(scheme(f"head+full{depth}", {k: LayerUpdate("all", True) for k in targets}))
    seen, unique = set(), []
    for s in out:
        if s.update not in seen:
            seen.add(s.update)
            unique.append(s)
    if not precisions or any(p not in PRECISIONS for p in precisions):
        raise ConfigError(f"precisions must be a non-empty subset of {list(PRECISIONS)}, got {list(precisions)}")
    return [Scheme(s.name if p == "float32" else f"{s.name}/{p}", s.update, p)
            for s in unique for p in precisions]


def _scores_path(cache_dir: Path, model: Model, settings: dict) -> Path:
    key = hashlib.sha256(model.to_bytes() + json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"contribution-{key}.json"


def contribution_analysis(model: Model, data, cache_dir: str | Path, epochs: int = 5, lr: float = 0.005,
                          seed: int = 0, tag: str = "", precisions: tuple[str, ...] = ("float32",)) -> dict[str, float]:
    """Accuracy each candidate scheme of `model` reaches by transfer (see the module docstring).

    `data` is a callable returning (proxy model, x_train, y_train, x_val, y_val), the inputs as
    int8 model inputs; it runs only when the scores are not cached. The proxy must have the
    structure of `model` (same candidates). `tag` names the data in the cache key."""
    schemes = candidate_schemes(model, precisions)
    settings = {"schemes": [s.name for s in schemes], "epochs": epochs, "lr": lr, "seed": seed, "data": tag,
                "protocol": "transfer-1"}
    path = _scores_path(Path(cache_dir), model, settings)
    if path.exists():
        return json.loads(path.read_text())
    proxy, x_train, y_train, x_val, y_val = data()
    feats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    scores = {}
    for s in schemes:
        config = scheme_config(proxy, TrainConfig(lr=lr, momentum=0.9, batch_size=16), s.update, s.precision)
        k = config.start_layer
        if k not in feats:  # samples enter where the scheme begins, as on a device
            if k > 0:
                feats[k] = (proxy.features_at(x_train, k), proxy.features_at(x_val, k))
            else:
                feats[k] = (proxy.prefix_features(x_train), proxy.prefix_features(x_val))
        trainer = Trainer(proxy, config)
        trainer.train_epochs(feats[k][0], y_train, epochs=epochs, seed=seed)
        scores[s.name] = round(trainer.evaluate(feats[k][1], y_val).accuracy, 6)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores, indent=2))
    return scores


def scheme_config(model: Model, config: TrainConfig, update: tuple[LayerUpdate, ...],
                  precision: str | None = None) -> TrainConfig:
    """`config` with `update` (and `precision`, if given), its samples entering at the earliest
    layer the update changes (features cached below it, so the frozen layers neither run nor hold
    buffers)."""
    from dataclasses import replace

    config = replace(config, precision=precision or config.precision)
    first = plan(model, replace(config, update=update, start_layer=0, with_prefix=False)).first_backward
    return replace(config, update=update, start_layer=first, with_prefix=False)


def choose_scheme(model: Model, config: TrainConfig, budget_bytes: int,
                  scores: dict[str, float] | Callable[[], dict[str, float]],
                  precisions: tuple[str, ...] = ("float32",), ef_bits: int | None = None) -> tuple[Scheme, int]:
    """The best-scoring scheme whose arena (plus, with error feedback at `ef_bits`, the residual
    the device keeps between rounds) fits `budget_bytes`; returns it and those bytes.

    `scores` may be a function: it is called only when more than one scheme fits, so an
    impossible budget is refused before any (slow) contribution analysis."""
    fits = []
    smallest = None
    for s in candidate_schemes(model, precisions):
        try:
            sc = scheme_config(model, config, s.update, s.precision)
            need = plan(model, sc).arena_bytes
            if ef_bits is not None:
                need += codec_bytes(model, sc, ef_bits, error_feedback=True)["ef_residual"]
        except TrainerError:
            continue
        smallest = need if smallest is None else min(smallest, need)
        if need <= budget_bytes:
            fits.append((need, s))
    if not fits:
        raise ConfigError(f"a {budget_bytes}-byte training arena{' + residual' if ef_bits else ''} holds no update "
                          f"scheme for this model "
                          f"(the smallest needs {smallest} bytes)")
    if len(fits) == 1:
        return fits[0][1], fits[0][0]
    table = scores() if callable(scores) else scores
    _, need, best = min(((-table.get(s.name, 0.0), need, s) for need, s in fits), key=lambda t: (t[0], t[1]))
    return best, need
