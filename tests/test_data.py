"""Data tasks: shapes, partitions, splits without leakage, and the IDX reader's checks."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedtiny.config import compose
from fedtiny.data import build_task
from fedtiny.data.base import temporal_split
from fedtiny.data.fashion import read_idx
from fedtiny.errors import ConfigError


@pytest.fixture(scope="module")
def watch():
    return build_task("watch", compose([]).dataset)


def test_watch_devices_are_wrists_of_field_subjects(watch):
    names = [c.name for c in watch.clients]
    assert names == [f"subject{s:02d}-{side}" for s in range(5, 11) for side in ("left", "right")]
    assert watch.input_shape == (1, 100, 6) and watch.num_classes == 7
    for c in watch.clients:
        assert c.train.x.shape[1:] == (1, 100, 6) and len(c.train) > 100 and len(c.test) > 20
        assert set(np.unique(c.train.y)) == set(range(7))  # every device did every exercise


def test_watch_splits_do_not_share_windows(watch):
    def rows(split):
        return {x.tobytes() for x in split.x}

    held = rows(watch.server_test)
    for c in watch.clients:
        train, test = rows(c.train), rows(c.test)
        assert not train & test and not train & held and not test & held
    vendor = rows(watch.pretrain) | rows(watch.pretrain_val)
    assert not vendor & held


def test_temporal_split_leaves_gaps():
    train, test, hold = temporal_split(100, (0.2, 0.2), gap=1)
    assert len(test) == len(hold) == 20 and train[-1] + 1 < test[0] and test[-1] + 1 < hold[0] and hold[-1] == 99


def test_per_subject_devices():
    cfg = OmegaConf.merge(compose([]).dataset, {"device": "subject"})
    task = build_task("watch", cfg)
    assert [c.name for c in task.clients] == [f"subject{s:02d}" for s in range(5, 11)]


def test_digits_dirichlet_partitions():
    task = build_task("digits", compose(["dataset=digits"]).dataset)
    assert len(task.clients) == 10 and task.input_shape == (8, 8, 1)
    sizes = [len(c.train) + len(c.test) for c in task.clients]
    assert min(sizes) >= 5
    hists = np.array([np.bincount(c.train.y, minlength=10) / len(c.train) for c in task.clients])
    assert hists.std(axis=0).mean() > 0.02  # label skew, not IID


def test_fashion_scale():
    cfg = compose(["dataset=fashion", "dataset.num_clients=120"]).dataset
    task = build_task("fashion", cfg)
    assert len(task.clients) == 120 and task.input_shape == (28, 28, 1) and len(task.server_test) == 2000
    assert all(len(c.train) > 0 for c in task.clients)


def test_idx_reader_rejects_bad_files(tmp_path):
    good = tmp_path / "ok-ubyte.gz"
    with gzip.open(good, "wb") as fh:
        fh.write(bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6)))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tmp_path / "short-ubyte.gz"
    with gzip.open(short, "wb") as fh:
        fh.write(bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(5)))
    with pytest.raises(ConfigError, match="holds 5 bytes"):
        read_idx(short)
    wrong = tmp_path / "wrong-ubyte.gz"
    with gzip.open(wrong, "wb") as fh:
        fh.write(b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"abcd")
    with pytest.raises(ConfigError, match="not an unsigned-byte IDX"):
        read_idx(wrong)
