"""keras/src/callbacks/reduce_lr_on_plateau_test.py, translated."""

from __future__ import annotations

import numpy as np
import pytest

import easyfit as ef
from keras_like import Dense2


def _setup(optimizer=None):
    rng = np.random.default_rng(1337)
    x, x_val = rng.random((10, 3), np.float32), rng.random((10, 3), np.float32)
    y, y_val = (np.eye(2, dtype=np.float32)[rng.integers(0, 2, 10)] for _ in range(2))
    model = ef.Model(Dense2(3, 5, 2, relu=False))
    model.compile(optimizer or ef.optimizers.adam(0.1), "mse")
    return model, (x, y), (x_val, y_val)


def _fit(callback, epochs, optimizer=None):
    model, train, validation = _setup(optimizer)
    model.fit(*train, validation_data=validation, callbacks=[callback], epochs=epochs,
              verbose=0)
    return model


def test_reduces_lr_with_model_fit():
    model = _fit(ef.callbacks.ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss",
                                                min_delta=100), epochs=2)
    assert model.optimizer.learning_rate == pytest.approx(0.01)


def test_throws_when_optimizer_has_schedule():
    """Deliberate difference: Keras raises TypeError; easyfit rescales the rest of the
    schedule, so the rate becomes ``factor`` times the scheduled one."""
    def schedule():
        return ef.optimizers.adam(ef.schedules.warmup_cosine(0.1, warmup=0.0, end=0.05))
    plain = _fit(ef.callbacks.LambdaCallback(), epochs=3, optimizer=schedule())
    reduced = _fit(ef.callbacks.ReduceLROnPlateau(patience=1, factor=0.1, min_delta=100),
                   epochs=3, optimizer=schedule())
    assert reduced.optimizer.learning_rate == pytest.approx(
        0.01 * plain.optimizer.learning_rate, rel=1e-5)


def test_verbose_logging(capsys):
    _fit(ef.callbacks.ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss",
                                        min_delta=100, verbose=1), epochs=2)
    assert "ReduceLROnPlateau reducing learning rate to 0.01" in capsys.readouterr().out


def test_honors_min_lr():
    model = _fit(ef.callbacks.ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss",
                                                min_delta=10, min_lr=0.005), epochs=4)
    assert model.optimizer.learning_rate == pytest.approx(0.005)


def test_cooldown():
    model = _fit(ef.callbacks.ReduceLROnPlateau(patience=1, factor=0.1, monitor="val_loss",
                                                min_delta=100, cooldown=2), epochs=4)
    assert model.optimizer.learning_rate == pytest.approx(0.001)


def test_state_reset_across_fit_calls():
    reduce_lr = ef.callbacks.ReduceLROnPlateau(patience=1, factor=0.1, monitor="loss",
                                               min_delta=0, cooldown=2)
    reduce_lr.set_model(_setup()[0])
    reduce_lr.on_train_begin()
    reduce_lr.best, reduce_lr.wait, reduce_lr.cooldown_counter = 0.5, 3, 2
    reduce_lr.on_train_begin()
    assert reduce_lr.best is None
    assert (reduce_lr.wait, reduce_lr.cooldown_counter) == (0, 0)
