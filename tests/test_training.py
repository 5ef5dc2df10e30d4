"""Training behaviour on a real task (sklearn digits): learning, determinism, SGD maths,
and clear errors for bad data and settings."""

from __future__ import annotations

import numpy as np
import pytest

from fedtiny.errors import ConfigError, TrainerError
from fedtiny.trainer import TrainConfig, Trainer



def test_training_lowers_loss_and_raises_accuracy(task, features):
    f_train, f_test = features
    trainer = Trainer(task.model, TrainConfig(lr=0.002, momentum=0.9, batch_size=16))
    before = trainer.evaluate(f_test, task.y_test)
    stats = trainer.train_epochs(f_train, task.y_train, epochs=5, seed=0)
    after = trainer.evaluate(f_test, task.y_test)
    assert stats.steps == 5 * int(np.ceil(len(task.y_train) / 16))
    assert after.loss < 0.5 * before.loss
    assert before.accuracy < 0.2 and after.accuracy > 0.85


def test_same_seed_same_parameters_bit_for_bit(task, features):
    f_train, _ = features
    runs = []
    for seed in (3, 3, 4):
        trainer = Trainer(task.model, TrainConfig(lr=0.002, momentum=0.9, weight_decay=1e-4, batch_size=8))
        trainer.train_epochs(f_train, task.y_train, epochs=2, seed=seed)
        runs.append(b"".join(w.tobytes() + b.tobytes() for w, b in trainer.get_params()))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # the seed changes the sample order, hence the result


def _random_head(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.05, (10, 48)).astype(np.float32), rng.normal(0, 0.05, 10).astype(np.float32)


def test_sgd_momentum_weight_decay_against_numpy(task, features):
    """Two full-batch steps: v1 = g0 + wd w0; w1 = w0 - lr v1; v2 = mu v1 + g1 + wd w1; w2 = w1 - lr v2."""
    f_train, _ = features
    x, y = f_train[:64], task.y_train[:64]
    lr, mu, wd = 0.01, 0.9, 0.05
    w0 = _random_head(0)
    probe = Trainer(task.model, TrainConfig(lr=lr))
    probe.set_params([w0])
    g0 = probe.gradients(x, y)[0]
    v1 = [g + wd * p for g, p in zip(g0, w0)]
    w1 = [p - lr * v for p, v in zip(w0, v1)]
    probe.set_params([tuple(w1)])
    g1 = probe.gradients(x, y)[0]
    w2 = [p - lr * (mu * v + g + wd * p) for p, v, g in zip(w1, v1, g1)]

    trainer = Trainer(task.model, TrainConfig(lr=lr, momentum=mu, weight_decay=wd, batch_size=64))
    trainer.set_params([w0])
    trainer.train_epochs(x, y, epochs=2, seed=0)
    (w, b), = trainer.get_params()
    np.testing.assert_allclose(w, w2[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b, w2[1], rtol=1e-5, atol=1e-7)


def test_step_is_one_sgd_update(task, features):
    f_train, _ = features
    x, y = f_train[:32], task.y_train[:32]
    lr, wd = 0.01, 0.1
    w0 = _random_head(1)
    trainer = Trainer(task.model, TrainConfig(lr=lr, weight_decay=wd))
    trainer.set_params([w0])
    g0 = trainer.gradients(x, y)[0]
    loss = trainer.evaluate(x, y).loss
    stats = trainer.step(x, y)
    assert stats.steps == 1 and stats.samples == 32 and abs(stats.loss - loss) < 1e-6
    for got, p, g in zip(trainer.get_params()[0], w0, g0):
        np.testing.assert_allclose(got, p - lr * (g + wd * p), rtol=1e-6, atol=1e-8)


def test_fedprox_term_pulls_towards_the_anchor(task, features):
    """Two steps with prox_mu: the second step's gradient includes mu * (w1 - w0)."""
    f_train, _ = features
    x, y = f_train[:32], task.y_train[:32]
    lr, mu = 0.01, 0.5
    w0 = _random_head(2)
    probe = Trainer(task.model, TrainConfig(lr=lr))
    probe.set_params([w0])
    g0 = probe.gradients(x, y)[0]
    w1 = [p - lr * g for p, g in zip(w0, g0)]  # first step: w == anchor, no pull
    probe.set_params([tuple(w1)])
    g1 = probe.gradients(x, y)[0]
    w2 = [p1 - lr * (g + mu * (p1 - p0)) for p0, p1, g in zip(w0, w1, g1)]
    trainer = Trainer(task.model, TrainConfig(lr=lr, prox_mu=mu))
    trainer.set_params([w0])  # also sets the anchor
    trainer.step(x, y)
    trainer.step(x, y)
    for got, want in zip(trainer.get_params()[0], w2):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_bad_data_and_settings_are_refused(task, features):
    f_train, _ = features
    trainer = Trainer(task.model, TrainConfig())
    bad = task.y_train.astype(np.int64).copy()
    bad[5] = 10
    with pytest.raises(TrainerError, match="BAD_LABEL"):
        trainer.train_epochs(f_train, bad)
    with pytest.raises(TrainerError, match="BAD_DATA"):
        trainer.train_epochs(f_train[:, :-1], task.y_train)
    with pytest.raises(TrainerError, match="BAD_DATA"):
        trainer.train_epochs(f_train.astype(np.int16), task.y_train)
    with pytest.raises(TrainerError, match="BAD_DATA"):
        trainer.train_epochs(f_train, task.y_train[:-1])
    with pytest.raises(TrainerError, match="BAD_CONFIG"):
        trainer.set_params([(np.zeros((10, 47), np.float32), np.zeros(10, np.float32))])
    for kwargs in ({"lr": 0.0}, {"lr": float("nan")}, {"momentum": 1.0}, {"weight_decay": -1.0}, {"batch_size": 0},
                   {"prox_mu": -0.1}):
        with pytest.raises(ConfigError):
            TrainConfig(**kwargs)
