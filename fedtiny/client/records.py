"""Trainable parameters <-> Flower ArrayRecords, and validation of client updates.

Keys are ``layer<k>.weight`` / ``layer<k>.bias`` for the k-th trainable layer that has
parameters. The server checks every update against the expected keys, shapes and dtype and
for finite values before it is aggregated; a bad update is rejected with its reason.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

Params = list[tuple[np.ndarray, np.ndarray]]


def params_to_record(params: Params) -> ArrayRecord:
    arrays: dict[str, Array] = {}
    for k, (w, b) in enumerate(params):
        if w.size == 0:
            continue
        arrays[f"layer{k}.weight"] = Array(np.ascontiguousarray(w, dtype=np.float32))
        arrays[f"layer{k}.bias"] = Array(np.ascontiguousarray(b, dtype=np.float32))
    return ArrayRecord(arrays)


def expected_shapes(template: Params) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for k, (w, b) in enumerate(template):
        if w.size:
            shapes[f"layer{k}.weight"], shapes[f"layer{k}.bias"] = w.shape, b.shape
    return shapes


def check_record(record: ArrayRecord, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """None if `record` carries exactly the expected float32 finite arrays, else the reason."""
    from fedtiny.trainer.updates import parse_update

    keys = set(record.keys())
    if keys != set(shapes):
        missing, extra = sorted(set(shapes) - keys), sorted(keys - set(shapes))
        return f"wrong arrays (missing {missing}, unexpected {extra})"
    try:
        arrays = {k: a.numpy() for k, a in record.items()}
    except Exception as err:  # malformed payload
        return f"undecodable arrays ({type(err).__name__})"
    return parse_update(arrays, {}, shapes, dict.fromkeys(shapes, 0))[1]


def record_to_params(record: ArrayRecord, template: Params) -> Params:
    """Parameters shaped like `template` from a record (validated first)."""
    reason = check_record(record, expected_shapes(template))
    if reason is not None:
        raise ValueError(f"bad parameter record: {reason}")
    out = []
    for k, (w, b) in enumerate(template):
        if w.size == 0:
            out.append((w, b))
        else:
            out.append((record[f"layer{k}.weight"].numpy(), record[f"layer{k}.bias"].numpy()))
    return out
