"""The memory planner: exact totals for every candidate scheme, budget choice, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedtiny.budgets.memory import (
    candidate_schemes,
    choose_scheme,
    contribution_analysis,
    memory_report,
    scheme_config,
)
from fedtiny.errors import ConfigError
from fedtiny.trainer import Model, TrainConfig
from tests.models import random_model
from tests.test_plan import _painted_peak

SUFFIX = ("conv2d", "dwconv2d", "conv2d", "avgpool", "flatten", "fc", "fc")


@pytest.fixture(scope="module")
def model() -> Model:
    rng = np.random.default_rng(21)
    return Model(random_model(rng, frozen=("conv2d",), trainable=SUFFIX, input_shape=(3, 8, 2)))


def test_candidates_always_train_the_classifier(model):
    schemes = candidate_schemes(model)
    deeper = sum(layer.has_params for layer in model.spec.layers[model.first_trainable :]) - 1
    # head, then per depth: biases, three channel fractions, full weights (duplicates removed)
    assert deeper + 2 <= len(schemes) <= 1 + 5 * deeper and len({s.update for s in schemes}) == len(schemes)
    for s in schemes:
        assert s.update[-1].weights == "all" and s.update[-1].bias
    both = candidate_schemes(model, ("float32", "int8"))
    assert [s.update for s in both[::2]] == [s.update for s in both[1::2]] == [s.update for s in schemes]
    assert {s.precision for s in both[1::2]} == {"int8"} and all(s.name.endswith("/int8") for s in both[1::2])
    with pytest.raises(ConfigError, match="precisions"):
        candidate_schemes(model, ("int4",))


@pytest.mark.parametrize("with_prefix", [False, True])
def test_report_total_equals_measured_for_every_candidate(model, with_prefix):
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (5, *model.input_shape)).astype(np.int8)
    samples = x if with_prefix else model.prefix_features(x)
    y = rng.integers(0, model.num_classes, 5)
    for s in candidate_schemes(model, ("float32", "int8")):
        config = TrainConfig(momentum=0.9, batch_size=2, with_prefix=with_prefix, update=s.update, precision=s.precision)
        report = memory_report(model, config)
        peak, hwm = _painted_peak(model, config, samples, y)
        assert report["arena_total"] == peak == hwm, s.name
        items = sum(v for k, v in report.items() if k.startswith("arena_") and k != "arena_total")
        assert items <= report["arena_total"] < items + 8 * 16, s.name  # the rest is alignment padding
        assert report["flash_model"] == len(model.to_bytes())


def test_budget_choice(model, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (60, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 60).astype(np.uint8)
    both = ("float32", "int8")
    scores = contribution_analysis(model, lambda: (model, x[:40], y[:40], x[40:], y[40:]), tmp_path, epochs=1,
                                   tag="t", precisions=both)
    assert set(scores) == {s.name for s in candidate_schemes(model, both)}
    def fail():
        raise AssertionError("the cached scores must be used")
    assert contribution_analysis(model, fail, tmp_path, epochs=1, tag="t", precisions=both) == scores
    config = TrainConfig(momentum=0.9)
    needs = {s.name: memory_report(model, scheme_config(model, config, s.update, s.precision))["arena_total"]
             for s in candidate_schemes(model, both)}
    ordered = sorted(needs.values())
    previous = -1.0
    for budget in (ordered[0], ordered[len(ordered) // 2], ordered[-1]):
        best, need = choose_scheme(model, config, budget, scores, both)
        assert need == needs[best.name] <= budget and scores[best.name] >= previous
        # nothing that fits scores higher (ties: the smaller arena)
        assert all(scores[n] < scores[best.name] or (scores[n] == scores[best.name] and needs[n] >= need)
                   for n in needs if needs[n] <= budget)
        previous = scores[best.name]
    with pytest.raises(ConfigError, match=f"holds no update scheme.*smallest needs {ordered[0]} bytes"):
        choose_scheme(model, config, ordered[0] - 1, scores, both)


@pytest.mark.parametrize("bits", [32, 8, 1])
def test_codec_items_match_a_real_encoded_update(model, bits):
    """ef_residual = one float per value the update sends (the C plan's update_count); tx_buffer =
    the bytes of the blobs the client really encodes for this scheme."""
    from fedtiny.trainer.updates import channel_axes
    from fedtiny.client.backend import partial_update
    from fedtiny.trainer.codec import encode, layout_of
    from fedtiny.trainer import Trainer, plan

    axes = channel_axes(model)
    for s in candidate_schemes(model, ("float32", "int8")):
        config = scheme_config(model, TrainConfig(momentum=0.9), s.update, s.precision)
        report = memory_report(model, config, bits=bits, per_channel=True, error_feedback=bits < 32)
        arrays, _ = partial_update(Trainer(model, config))
        sent = sum(encode(a, bits, k.endswith(".weight"), layout_of(a.shape, axes[k]), 1).size for k, a in arrays.items())
        assert report["tx_buffer"] == sent, s.name
        assert report["ef_residual"] == (4 * plan(model, config).update_count if bits < 32 else 0)
        assert report["device_ram"] == (report["arena_total"] + report["ef_residual"] + report["tx_buffer"]
                                        + report["trainer_state"])


def test_error_feedback_residual_counts_against_the_budget(model, tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (40, *model.input_shape)).astype(np.int8)
    y = rng.integers(0, model.num_classes, 40).astype(np.uint8)
    scores = contribution_analysis(model, lambda: (model, x[:20], y[:20], x[20:], y[20:]), tmp_path, epochs=1, tag="e")
    config = TrainConfig(momentum=0.9)
    best, need = choose_scheme(model, config, 1 << 30, scores)
    best_ef, need_ef = choose_scheme(model, config, 1 << 30, scores, ef_bits=4)
    assert best_ef == best
    assert need_ef == need + memory_report(model, scheme_config(model, config, best.update), 4,
                                           error_feedback=True)["ef_residual"] > need
    smallest = min(memory_report(model, scheme_config(model, config, s.update))["arena_total"]
                   for s in candidate_schemes(model))
    choose_scheme(model, config, smallest, scores)  # fits without a residual ...
    with pytest.raises(ConfigError, match=r"arena \+ residual holds no update scheme"):
        choose_scheme(model, config, smallest, scores, ef_bits=4)  # ... but not with one
