"""Server-side validation of client updates."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fedtiny.client.records import check_record, expected_shapes, params_to_record, record_to_params

TEMPLATE = [(np.zeros(0, np.float32), np.zeros(0, np.float32)), (np.ones((3, 4), np.float32), np.ones(3, np.float32))]
SHAPES = expected_shapes(TEMPLATE)


def test_round_trip():
    rec = params_to_record(TEMPLATE)
    assert sorted(rec.keys()) == ["layer1.bias", "layer1.weight"]
    assert check_record(rec, SHAPES) is None
    back = record_to_params(rec, TEMPLATE)
    np.testing.assert_array_equal(back[1][0], TEMPLATE[1][0])


def test_bad_updates_have_reasons():
    good = {"layer1.weight": np.ones((3, 4), np.float32), "layer1.bias": np.ones(3, np.float32)}

    def record(**change):
        arrays = {**good, **change}
        return ArrayRecord({k: Array(v) for k, v in arrays.items() if v is not None})

    assert "missing ['layer1.bias']" in check_record(record(**{"layer1.bias": None}), SHAPES)
    assert "unexpected ['layer9.bias']" in check_record(record(**{"layer9.bias": np.ones(3, np.float32)}), SHAPES)
    assert "shape (4, 3)" in check_record(record(**{"layer1.weight": np.ones((4, 3), np.float32)}), SHAPES)
    assert "dtype float64" in check_record(record(**{"layer1.weight": np.ones((3, 4))}), SHAPES)
    nan = np.ones((3, 4), np.float32)
    nan[1, 2] = np.inf
    assert "non-finite" in check_record(record(**{"layer1.weight": nan}), SHAPES)
