"""A loss that diverges (issue 22 part 5): without ``TerminateOnNaN``, a NaN or infinite
training loss is reported once per ``fit``, as a ``DivergenceWarning`` naming the epoch, the
step and the usual causes; it is read from the epoch-end logs (no extra host sync), and
training goes on as Keras's does. Escalated to an error, each case goes through
``clear_error``."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from clear_errors import clear_error
from conftest import MLP, make_data
from easyfit.errors import DivergenceWarning


@pytest.fixture(autouse=True)
def diverging_is_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        yield


def _model(lr=0.01, loss="sparse_categorical_crossentropy"):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(optimizer=ef.optimizers.sgd(learning_rate=lr), loss=loss, steps_per_execution=1)
    return model


def test_nan_in_the_inputs(tmp_path):
    x, y = make_data(32)
    x[3, 2] = np.nan
    with clear_error(DivergenceWarning, r"model\.fit\b", "NaN", "end of epoch 1", r"step 4\b",
                     r"`x` holds 1 NaN", "TerminateOnNaN", untouched=tmp_path):
        _model().fit(x, y, batch_size=8, epochs=3, verbose=0)


def test_a_learning_rate_too_high(tmp_path):
    x, y = make_data(32)
    with clear_error(DivergenceWarning, "learning rate is too high", r"1e\+06", "10x lower",
                     "clipnorm", untouched=tmp_path):
        _model(lr=1e6, loss="mse").fit(x, np.eye(4, dtype=np.float32)[y], batch_size=8,
                                       epochs=3, verbose=0)


def test_a_regression_loss_does_not_suspect_class_ids():
    x, y = make_data(32)
    with pytest.raises(DivergenceWarning) as info:
        _model(lr=1e6, loss="mse").fit(x, np.eye(4, dtype=np.float32)[y], batch_size=8,
                                       epochs=3, verbose=0)
    assert "learning rate is too high" in str(info.value)
    assert "labels out of range" not in str(info.value)


def test_labels_out_of_range(tmp_path):
    x, y = make_data(32)
    y[5] = 10  # the module has 4 outputs
    with clear_error(DivergenceWarning, "labels out of range", r"0 \.\. outputs - 1",
                     r"`y` holds 0 to 10", untouched=tmp_path):
        _model().fit(x, y, batch_size=8, epochs=2, verbose=0)


def test_an_infinite_loss(tmp_path):
    x, y = make_data(32)
    infinite = lambda y_true, y_pred: jnp.full(y_pred.shape[:1], jnp.inf)
    with clear_error(DivergenceWarning, "loss is inf", "epoch 1", untouched=tmp_path):
        _model(loss=infinite).fit(x, y, batch_size=8, verbose=0)


def test_diverging_after_finite_epochs_names_both_steps(tmp_path):
    x, y = make_data(32)
    model = _model()
    raise_lr = ef.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: setattr(model.optimizer, "learning_rate", 1e12))
    with clear_error(DivergenceWarning, "end of epoch 2", r"step 8\b",
                     r"finite at step 4\b", untouched=tmp_path):
        model.fit(x, y, batch_size=8, epochs=3, callbacks=[raise_lr], verbose=0)


def test_a_generator_input(tmp_path):
    x, y = make_data(32)
    x[0, 0] = np.inf
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    with clear_error(DivergenceWarning, "epoch 1", "NaN or inf in the inputs",
                     untouched=tmp_path):
        _model().fit(batches, epochs=2, verbose=0)


def test_reported_once_per_fit(tmp_path):
    x, y = make_data(32)
    x[0, 0] = np.nan
    model = _model()
    with clear_error(DivergenceWarning, "epoch 1", untouched=tmp_path):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            history = model.fit(x, y, batch_size=8, epochs=4, verbose=0)
        found = [w for w in seen if issubclass(w.category, DivergenceWarning)]
        assert len(found) == 1 and len(history.history["loss"]) == 4  # training went on
        raise found[0].message


def test_not_reported_with_terminate_on_nan(capsys):
    x, y = make_data(32)
    x[0, 0] = np.nan
    model = _model()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[ef.callbacks.TerminateOnNaN()])  # its own report; no warning (error)
    assert "Invalid loss" in capsys.readouterr().out


def test_not_reported_when_training_is_finite():
    x, y = make_data(32)
    _model().fit(x, y, batch_size=8, epochs=2, verbose=0)  # no DivergenceWarning (error)


def test_a_nan_validation_loss_names_validation_data(tmp_path):
    x, y = make_data(32)
    x_val, y_val = make_data(16)
    x_val[2, 1] = np.inf
    with clear_error(DivergenceWarning, "validation loss is NaN", "epoch 1",
                     r"validation_data's `x` holds 1 NaN or inf", "training loss is finite",
                     untouched=tmp_path):
        _model().fit(x, y, batch_size=8, epochs=2, validation_data=(x_val, y_val), verbose=0)
