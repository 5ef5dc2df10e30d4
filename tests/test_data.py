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


def test_image_sensor_by_hand():
    """No rotation, no noise: the sensor is contrast * x + exposure, clipped to the pixel range."""
    from fedtiny.data.shift import ImageSensor

    x = np.linspace(-0.5, 0.5, 2 * 4 * 4).reshape(2, 4, 4, 1).astype(np.float32)
    s = ImageSensor(exposure=-0.2, contrast=0.5, angle=0.0, noise=0.0)
    assert np.allclose(s.apply(x, np.random.default_rng(0)), np.clip(0.5 * x - 0.2, -0.5, 0.5))
    turned = ImageSensor(0.0, 1.0, 90.0, 0.0).apply(x, np.random.default_rng(0))
    assert np.allclose(turned[..., 0], np.rot90(x[..., 0], k=1, axes=(1, 2)), atol=1e-6)  # a quarter turn
    noisy = ImageSensor(0.0, 1.0, 0.0, 0.05).apply(np.zeros((50, 8, 8, 1), np.float32), np.random.default_rng(0))
    assert abs(float(noisy.std()) - 0.05) < 0.005


def test_imu_sensor_rotates_both_sensors_alike():
    """Gain 1 and offset 0: each accelerometer and gyroscope vector keeps its length, and the two
    turn by the same proper rotation."""
    from fedtiny.data.shift import ImuSensor

    rng = np.random.default_rng(1)
    s = ImuSensor.draw(rng, rotation=40.0, gain=0.0, offset=0.0)
    r = s.rotation
    assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1.0)
    angle = np.degrees(np.arccos((np.trace(r) - 1) / 2))
    assert 0 < angle <= 40.0 + 1e-9
    x = rng.normal(size=(5, 100, 6)).astype(np.float32)
    y = s.apply(x)
    assert np.allclose(np.linalg.norm(y[..., :3], axis=-1), np.linalg.norm(x[..., :3], axis=-1), atol=1e-5)
    assert np.allclose(y[..., 3:], x[..., 3:] @ r.T, atol=1e-5) and np.allclose(y[..., :3], x[..., :3] @ r.T, atol=1e-5)
    g = ImuSensor.draw(np.random.default_rng(2), rotation=0.0, gain=0.3, offset=0.5)
    assert np.allclose(g.apply(x), x * g.gain + g.offset, atol=1e-5) and np.all(np.abs(np.log(g.gain)) <= 0.3)


def test_field_shift_is_per_device_and_off_by_default():
    """A shifted fashion task keeps labels and sizes, moves every device's pixels, differently per
    device, the same on every build; with the default (all zero) nothing moves, and watch with a
    mounting shift keeps its windows' shapes but changes their values."""
    base = ["dataset=fashion", "dataset.num_clients=20", "dataset.max_samples_per_client=40",
            "dataset.server_test_size=100"]
    plain = build_task("fashion", compose(base).dataset)
    shift = base + ["dataset.field_shift.exposure=[-0.3,-0.1]", "dataset.field_shift.contrast=[-0.9,-0.3]",
                    "dataset.field_shift.rotation=[-5,5]", "dataset.field_shift.noise=[0,0.05]"]
    a, b = build_task("fashion", compose(shift).dataset), build_task("fashion", compose(shift).dataset)
    for c0, c1, c2 in zip(plain.clients, a.clients, b.clients):
        assert np.array_equal(c0.train.y, c1.train.y) and c1.train.x.shape == c0.train.x.shape
        assert np.array_equal(c1.train.x, c2.train.x) and not np.allclose(c1.train.x, c0.train.x)
        assert np.std(c1.train.x) < np.std(c0.train.x)  # flatter than the vendor's camera
    gains = [np.std(c1.train.x) / np.std(c0.train.x) for c0, c1 in zip(plain.clients, a.clients)]
    assert np.ptp(gains) > 0.05  # each device its own contrast
    assert not np.allclose(a.server_test.x, plain.server_test.x) and np.array_equal(a.server_test.y, plain.server_test.y)
    from fedtiny.config import dataset_dict

    assert "field_shift" not in dataset_dict(compose(base)) and "field_shift" in dataset_dict(compose(shift))
    w0 = build_task("watch", compose([]).dataset)
    w1 = build_task("watch", compose(["dataset.field_shift.rotation=30"]).dataset)
    assert [len(c.train) for c in w0.clients] == [len(c.train) for c in w1.clients]
    assert not np.allclose(w0.clients[0].train.x, w1.clients[0].train.x)
    assert np.array_equal(w0.pretrain.x, w1.pretrain.x)  # the vendor's data stay clean


def test_deterministic_elementary_functions_against_numpy():
    """fedtiny's exp, log, sin and cos (basic IEEE operations only) are within a few units in the
    last place of numpy's over the ranges the data pipeline uses and beyond."""
    from fedtiny.data import detmath

    x = np.linspace(-40.0, 40.0, 200_001)
    assert np.max(np.abs(detmath.exp(x) / np.exp(x) - 1.0)) < 4 * np.finfo(float).eps
    pos = np.exp(np.linspace(-50.0, 50.0, 200_001))
    assert np.max(np.abs(detmath.log(pos) - np.log(pos)) / np.maximum(1.0, np.abs(np.log(pos)))) < 4e-16
    t = np.linspace(-30.0, 30.0, 200_001)
    assert np.max(np.abs(detmath.sin(t) - np.sin(t))) < 4e-16 and np.max(np.abs(detmath.cos(t) - np.cos(t))) < 4e-16
    assert detmath.exp(0.0) == 1.0 and detmath.log(1.0) == 0.0 and detmath.sin(0.0) == 0.0


def test_deterministic_variates_have_their_distributions():
    """Box-Muller normals, Marsaglia-Tsang gammas (shape below and above 1) and Dirichlet points:
    moments within 5 standard errors; Kolmogorov-Smirnov against scipy's distributions."""
    from scipy import stats

    from fedtiny.data import detmath

    rng = np.random.default_rng(7)
    n = 100_000
    z = detmath.normal(rng, n, 1.0, 2.0)
    assert abs(z.mean() - 1.0) < 5 * 2.0 / np.sqrt(n) and abs(z.std() - 2.0) < 0.03
    assert stats.kstest(z, stats.norm(1.0, 2.0).cdf).pvalue > 1e-3
    for shape in (0.3, 0.5, 1.0, 4.0):
        g = detmath.gamma(rng, shape, n)
        assert g.min() > 0 and abs(g.mean() - shape) < 5 * np.sqrt(shape / n), shape
        assert stats.kstest(g, stats.gamma(shape).cdf).pvalue > 1e-3, shape
    d = np.array([detmath.dirichlet(rng, 0.5, 5) for _ in range(2000)])
    assert np.allclose(d.sum(axis=1), 1.0) and abs(d[:, 0].mean() - 0.2) < 0.02


def test_dirichlet_partitions_cover_every_sample_once_with_skew():
    from fedtiny.data.partition import dirichlet_partitions
    from fedtiny.errors import ConfigError

    labels = np.repeat(np.arange(10), 200)
    parts = dirichlet_partitions(labels, 20, 0.3, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    assert min(len(p) for p in parts) >= 10
    hists = np.array([np.bincount(labels[p], minlength=10) / len(p) for p in parts])
    assert hists.max(axis=1).mean() > 0.3  # skewed: IID would put about 0.1 in each class
    assert [p.tolist() for p in dirichlet_partitions(labels, 20, 0.3, seed=1)] == [p.tolist() for p in parts]
    with pytest.raises(ConfigError, match="no Dirichlet"):
        dirichlet_partitions(labels[:30], 20, 0.01, seed=1, min_partition_size=5)


def test_image_rotation_matches_scipy():
    """fedtiny's bilinear rotation against scipy.ndimage.rotate(order=1, reshape=False,
    mode="grid-constant") over the whole image."""
    from scipy.ndimage import rotate

    from fedtiny.data.shift import rotate_images

    x = np.random.default_rng(3).uniform(-0.5, 0.5, (4, 28, 28, 1)).astype(np.float32)
    for angle in (-5.0, 3.0, 30.0, 90.0):
        ours = rotate_images(x, angle, cval=-0.5)
        ref = rotate(x, angle, axes=(1, 2), reshape=False, order=1, mode="grid-constant", cval=-0.5)
        assert np.abs(ours - ref).max() < 1e-6, angle
