"""keras/src/callbacks/learning_rate_scheduler_test.py, translated."""

from __future__ import annotations

import numpy as np
import pytest

import easyfit as ef
from keras_like import Dense2


def _fit(scheduler, epochs=1, optimizer=None):
    rng = np.random.default_rng(1337)
    x, y = rng.random((10, 3), np.float32), np.eye(2, dtype=np.float32)[rng.integers(0, 2, 10)]
    model = ef.Model(Dense2(3, 5, 2, relu=False))
    model.compile(optimizer or ef.optimizers.sgd(0.01, momentum=0.0), "mse")
    history = model.fit(x, y, callbacks=[scheduler], epochs=epochs, verbose=0)
    return model, history


def test_updates_learning_rate():
    model, _ = _fit(ef.callbacks.LearningRateScheduler(lambda step: 1.0 / (2.0 + step)))
    assert model.optimizer.learning_rate == 0.5


def test_verbose_logging(capsys):
    _fit(ef.callbacks.LearningRateScheduler(lambda step: 1.0 / (1.0 + step), verbose=1))
    assert "LearningRateScheduler setting learning rate to 1" in capsys.readouterr().out


def test_schedule_dependent_on_previous_learning_rate():
    model, _ = _fit(ef.callbacks.LearningRateScheduler(lambda step, lr: lr / 2), epochs=2,
                    optimizer=ef.optimizers.adam(0.03))
    assert model.optimizer.learning_rate == pytest.approx(0.03 / 4.0)


def test_throws_when_optimizer_has_schedule():
    """Deliberate difference: Keras raises TypeError; easyfit rescales the rest of the
    schedule so that its next step uses the rate set (0.02 = 0.2 x the scheduled 0.1)."""
    def schedule():
        return ef.optimizers.adam(ef.schedules.warmup_cosine(0.1, warmup=0.0))
    _, plain = _fit(ef.callbacks.LambdaCallback(), epochs=1, optimizer=schedule())
    _, scaled = _fit(ef.callbacks.LearningRateScheduler(lambda step, lr: 0.02), epochs=1,
                     optimizer=schedule())
    assert scaled.history["learning_rate"][0] == pytest.approx(
        0.2 * plain.history["learning_rate"][0], rel=1e-5)


def test_learning_rate_in_history():
    _, history = _fit(ef.callbacks.LearningRateScheduler(lambda step, lr: 0.5))
    assert "learning_rate" in history.history
    assert type(history.history["learning_rate"][0]) is float
    assert history.history["learning_rate"][0] == 0.5


def test_schedule_must_return_a_number():
    with pytest.raises(ValueError, match="should be a float"):
        _fit(ef.callbacks.LearningRateScheduler(lambda step, lr: "fast"))
