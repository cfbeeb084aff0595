"""keras/src/callbacks/early_stopping_test.py, translated (NNX modules for Keras layers)."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import easyfit as ef
from keras_like import random_data, regression_model


class F1Score(ef.metrics.Metric):
    """A metric of the user's with its own direction, as Keras's F1Score (``_direction='up'``)."""

    name, direction = "f1_score", "up"

    def values(self, y_true, y_pred):
        return jnp.zeros(y_pred.shape[:1])


def _chosen_mode(callback, model, monitor: str) -> str:
    """``"max"`` or ``"min"``: which of two epochs the callback keeps as best."""
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_end(0, {monitor: 1.0})
    callback.on_epoch_end(1, {monitor: 2.0})
    return "max" if callback.best == 2.0 else "min"


def test_early_stopping():
    model = regression_model(metrics=["mse", "acc", "accuracy",
                                      ef.metrics.Mean(lambda y, p: p, name="hinge", direction="down"), F1Score()])
    cases = [("max", "val_mse", "max"), ("min", "val_loss", "min"), ("auto", "val_mse", "min"),
             ("auto", "loss", "min"), ("auto", "acc", "max"), ("auto", "val_accuracy", "max"),
             ("auto", "hinge", "min"), ("auto", "f1_score", "max")]
    for mode, monitor, expected in cases:
        stopper = ef.callbacks.EarlyStopping(patience=5, monitor=monitor, mode=mode)
        assert _chosen_mode(stopper, model, monitor) == expected, (mode, monitor)
    with pytest.raises(ValueError, match="'unknown'"):
        _chosen_mode(ef.callbacks.EarlyStopping(monitor="unknown"), model, "unknown")
    # easyfit: a plain function's direction is unknown, so "auto" asks rather than guesses
    plain = regression_model(metrics=[ef.metrics.Mean(lambda y, p: p, name="my_acc")])
    with pytest.raises(ValueError, match="direction is unknown"):
        _chosen_mode(ef.callbacks.EarlyStopping(monitor="val_my_acc"), plain, "val_my_acc")
    x, y = random_data(10, 5)
    with pytest.raises(ValueError, match="mode='max'"):  # during fit, nothing trained yet
        model.fit(x, y, batch_size=5, epochs=2, verbose=0,
                  callbacks=[ef.callbacks.EarlyStopping(monitor="unknown")])


def test_early_stopping_patience():
    losses = [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5]
    model = regression_model(loss="mse", metrics=())
    for patience in [0, 1, 2, 3]:
        stopper = ef.callbacks.EarlyStopping(monitor="loss", patience=patience)
        stopper.set_model(model)
        model.stop_training = False
        stopper.on_train_begin()
        for epoch, loss in enumerate(losses):
            stopper.on_epoch_end(epoch=epoch, logs={"loss": loss})
            if model.stop_training:
                break
        assert stopper.stopped_epoch == max(patience, 1) + 2


def test_early_stopping_reuse():
    x, y = random_data(100, 1)
    y = (x > 0.5).astype("float32")
    model = regression_model(din=1, metrics=["mse"])
    stopper = ef.callbacks.EarlyStopping(monitor="mse", patience=3)
    first = model.fit(x, y, callbacks=[stopper], verbose=0, epochs=20)
    assert len(first.epoch) >= 3
    second = model.fit(x, y, callbacks=[stopper], verbose=0, epochs=20)
    assert len(second.epoch) >= 3


def test_state_reset_across_fit_calls():
    stopper = ef.callbacks.EarlyStopping(monitor="loss", patience=3)
    stopper.set_model(regression_model())
    stopper.on_train_begin()
    stopper.best, stopper.wait, stopper.stopped_epoch, stopper.best_epoch = 0.1, 3, 5, 5
    stopper.best_weights = object()
    stopper.on_train_begin()
    assert stopper.best is None
    assert (stopper.wait, stopper.stopped_epoch, stopper.best_epoch) == (0, 0, 0)
    assert stopper.best_weights is None


def test_early_stopping_with_baseline():
    x, y = random_data(10, 5)
    stopper = ef.callbacks.EarlyStopping(monitor="mse", patience=3, baseline=0.6)
    history = regression_model().fit(x, y, callbacks=[stopper], verbose=0, epochs=20)
    assert len(history.epoch) >= 3


class DummyModel:
    def __init__(self):
        self.stop_training, self.weights = False, -1

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights


def _drive(stopper, losses, stop_at=None):
    model = DummyModel()
    stopper.set_model(model)
    stopper.on_train_begin()
    trained = 0
    for epoch, loss in enumerate(losses):
        trained += 1
        model.weights = epoch
        stopper.on_epoch_end(epoch, logs={"val_loss": loss})
        if epoch == stop_at:
            model.stop_training = True
        if model.stop_training:
            break
    stopper.on_train_end()
    return trained, model.weights


def test_early_stopping_final_weights_when_restoring_model_weights():
    stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=2,
                                         restore_best_weights=True)
    assert _drive(stopper, [0.2, 0.15, 0.1, 0.11, 0.12])[1] == 2
    losses = [0.9, 0.8, 0.7, 0.71, 0.72, 0.73]
    stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=5, baseline=0.5,
                                         restore_best_weights=True)
    assert _drive(stopper, losses) == (5, 2)
    stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=5, baseline=0.5,
                                         restore_best_weights=True)
    assert _drive(stopper, losses, stop_at=3) == (4, 2)


def test_early_stopping_with_start_from_epoch():
    x, y = random_data(10, 5)
    stopper = ef.callbacks.EarlyStopping(monitor="mse", patience=3, start_from_epoch=2)
    history = regression_model().fit(x, y, callbacks=[stopper], verbose=0, epochs=20)
    assert len(history.epoch) >= 3 + 2
    stopper = ef.callbacks.EarlyStopping(monitor="mse", patience=0, start_from_epoch=2)
    history = regression_model().fit(x, y, callbacks=[stopper], verbose=0, epochs=20)
    assert len(history.epoch) >= 2
