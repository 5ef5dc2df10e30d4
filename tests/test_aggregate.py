"""Per-channel weighted means of partial updates, against a direct computation."""

from __future__ import annotations

import numpy as np

from fedtiny.server.aggregate import masked_mean
from fedtiny.trainer.updates import parse_update

SHAPES = {"layer0.weight": (3, 2, 2, 4), "layer1.weight": (2, 2, 4), "layer1.bias": (4,)}
AXES = {"layer0.weight": 0, "layer1.weight": 2, "layer1.bias": 0}


def test_masked_mean_by_hand():
    g = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    a = {"layer0.weight": (np.ones((2, 2, 2, 4), np.float32), [0, 2]), "layer1.bias": (np.full(4, 2.0, np.float32), None)}
    b = {"layer0.weight": (np.full((1, 2, 2, 4), 4.0, np.float32), [2]),
         "layer1.weight": (np.full((2, 2, 1), 8.0, np.float32), [3])}
    out, count = masked_mean(g, [(1.0, a), (3.0, b)], AXES)
    w0 = out["layer0.weight"]
    assert (w0[0] == 1.0).all() and (w0[1] == 0.0).all() and np.allclose(w0[2], (1 * 1 + 3 * 4) / 4)
    assert count["layer0.weight"].tolist() == [1, 0, 2]
    assert (out["layer1.weight"][..., 3] == 8.0).all() and (out["layer1.weight"][..., :3] == 0.0).all()
    assert (out["layer1.bias"] == 2.0).all() and count["layer1.bias"].tolist() == [1, 1, 1, 1]


def test_full_updates_give_the_plain_weighted_mean():
    rng = np.random.default_rng(0)
    g = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    ups = [(float(n), {k: (rng.normal(size=s).astype(np.float32), None) for k, s in SHAPES.items()}) for n in (3, 5, 2)]
    out, _ = masked_mean(g, ups, AXES)
    for k in SHAPES:
        want = sum(n * u[k][0].astype(np.float64) for n, u in ups) / 10
        np.testing.assert_allclose(out[k], want, rtol=1e-6)


def test_subset_validation():
    ok = {"layer0.weight": np.zeros((2, 2, 2, 4), np.float32)}
    assert parse_update(ok, {"channels.layer0.weight": [0, 1]}, SHAPES, AXES)[1] is None
    assert "sorted, unique" in parse_update(ok, {"channels.layer0.weight": [1, 0]}, SHAPES, AXES)[1]
    assert "within" in parse_update(ok, {"channels.layer0.weight": [0, 5]}, SHAPES, AXES)[1]
    assert "shape" in parse_update(ok, {"channels.layer0.weight": [0]}, SHAPES, AXES)[1]
    assert "shape" in parse_update(ok, {}, SHAPES, AXES)[1]  # compact array without its subset
    assert "not sent" in parse_update(ok, {"channels.layer0.weight": [0, 1], "channels.layer1.weight": [0]}, SHAPES, AXES)[1]
    assert "unexpected" in parse_update({"layer7.bias": np.zeros(4, np.float32)}, {}, SHAPES, AXES)[1]
    bad = {"layer1.bias": np.array([0, np.nan, 0, 0], np.float32)}
    assert "non-finite" in parse_update(bad, {}, SHAPES, AXES)[1]
