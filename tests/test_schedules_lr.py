"""Schedules equal optax's; the logged / live learning rate follows them; setting it works."""

from __future__ import annotations

import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef
from conftest import MLP, assert_params_close, grad_of, make_data, params_of, train_programs

STEPS = np.arange(0, 45)


def _values(schedule, total=None):
    fn = schedule.resolve(total)
    return np.array([float(fn(s)) for s in STEPS])


def _optax_values(fn):
    return np.array([float(fn(s)) for s in STEPS])


def test_constant():
    np.testing.assert_allclose(_values(ef.schedules.constant(0.3), 40),
                               _optax_values(optax.constant_schedule(0.3)), rtol=1e-6)


def test_cosine_steps_and_fraction():
    expected = _optax_values(optax.cosine_decay_schedule(0.5, 20, alpha=0.1))
    np.testing.assert_allclose(_values(ef.schedules.cosine(0.5, decay=20, end=0.05)), expected,
                               rtol=1e-6)
    # a fraction of training resolves against total_steps
    np.testing.assert_allclose(_values(ef.schedules.cosine(0.5, decay=0.5, end=0.05), 40),
                               expected, rtol=1e-6)
    # default: all of training
    np.testing.assert_allclose(_values(ef.schedules.cosine(0.5), 40),
                               _optax_values(optax.cosine_decay_schedule(0.5, 40)), rtol=1e-6,
                               atol=1e-9)


def test_linear():
    np.testing.assert_allclose(
        _values(ef.schedules.linear(1.0, 0.1, steps=30, begin=5)),
        _optax_values(optax.linear_schedule(1.0, 0.1, 30, transition_begin=5)), rtol=1e-6)
    np.testing.assert_allclose(
        _values(ef.schedules.linear(1.0, 0.1, steps=0.75, begin=0.125), 40),
        _optax_values(optax.linear_schedule(1.0, 0.1, 30, transition_begin=5)), rtol=1e-6)


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential(staircase):
    np.testing.assert_allclose(
        _values(ef.schedules.exponential(0.2, 0.5, decay_steps=8, staircase=staircase)),
        _optax_values(optax.exponential_decay(0.2, 8, 0.5, staircase=staircase)), rtol=1e-6)


def test_piecewise():
    # optax's convention: the new value applies from the boundary step on (Keras's
    # PiecewiseConstantDecay switches one step later, after `step > boundary`)
    expected = _optax_values(optax.piecewise_constant_schedule(1.0, {10: 0.5, 20: 0.2}))
    np.testing.assert_allclose(
        _values(ef.schedules.piecewise([10, 20], [1.0, 0.5, 0.1])), expected, rtol=1e-6)
    np.testing.assert_allclose(
        _values(ef.schedules.piecewise([0.25, 0.5], [1.0, 0.5, 0.1]), 40), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="one more value"):
        ef.schedules.piecewise([10, 20], [1.0, 0.5])


def test_warmup_cosine():
    expected = _optax_values(optax.warmup_cosine_decay_schedule(
        0.0, 1e-2, warmup_steps=10, decay_steps=40, end_value=1e-4))
    np.testing.assert_allclose(
        _values(ef.schedules.warmup_cosine(1e-2, warmup=0.25, end=1e-4), 40), expected,
        rtol=1e-6)
    np.testing.assert_allclose(
        _values(ef.schedules.warmup_cosine(1e-2, warmup=10, end=1e-4), 40), expected, rtol=1e-6)


def test_fraction_without_known_length_is_a_clear_error():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ef.schedules.warmup_cosine(1e-2, warmup=0.1).resolve(None)


def test_logged_lr_follows_the_schedule():
    # 190 rows at batch 40: 5 steps an epoch (the last padded), 4 epochs = 20 steps;
    # warmup 0.5 -> 10 steps, i.e. the end of the second epoch.
    x, y = make_data(190)
    peak, steps_per_epoch, epochs = 0.05, 5, 4
    expected_fn = optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=10, decay_steps=20, end_value=0.0)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    optimizer = ef.optimizers.sgd(ef.schedules.warmup_cosine(peak, warmup=0.5))
    model.compile(optimizer, "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=40, epochs=epochs, verbose=0)
    expected = [float(expected_fn(steps_per_epoch * (e + 1))) for e in range(epochs)]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6, atol=1e-9)
    assert history.history["learning_rate"][1] == pytest.approx(peak, rel=1e-6)  # end of warmup
    assert model.optimizer.learning_rate == pytest.approx(float(expected_fn(20)), abs=1e-9)


def test_learning_rate_before_fit_is_the_step_zero_rate():
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(ef.schedules.warmup_cosine(0.05, warmup=0.5)),
                  "sparse_categorical_crossentropy")
    assert model.optimizer.learning_rate == pytest.approx(0.0)


def test_logged_lr_of_a_constant_rate():
    x, y = make_data(64)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.adam(3e-3), "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    np.testing.assert_allclose(history.history["learning_rate"], [3e-3, 3e-3], rtol=1e-6)
    assert model.optimizer.learning_rate == pytest.approx(3e-3)


def test_setting_the_learning_rate_between_fits_changes_the_update_without_recompiling():
    x, y = make_data(32)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(0.1, momentum=0.0), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # one step at 0.1
    assert model.optimizer.learning_rate == pytest.approx(0.1)

    model.optimizer.learning_rate = 0.0
    assert model.optimizer.learning_rate == 0.0
    before = params_of(model.module)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert history.history["learning_rate"] == [0.0]
    assert_params_close(params_of(model.module), before, atol=0)

    model.optimizer.learning_rate = 0.25
    grads = grad_of(model.module, x, y)
    expected = [p - 0.25 * g for p, g in zip(before, grads)]
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert_params_close(params_of(model.module), expected, atol=1e-6)
    assert model.optimizer.learning_rate == pytest.approx(0.25)
    assert model.trainer.steps.train.cache_size() == train_programs(model)


def test_setting_the_learning_rate_before_fit():
    x, y = make_data(32)
    start = MLP(rngs=nnx.Rngs(0))
    grads = grad_of(start, x, y)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(0.1, momentum=0.0), "sparse_categorical_crossentropy")
    model.optimizer.learning_rate = 0.3
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    expected = [p - 0.3 * g for p, g in zip(params_of(start), grads)]
    assert_params_close(params_of(model.module), expected, atol=1e-6)


@pytest.mark.parametrize("value, error", [("1e-3", TypeError), (None, TypeError),
                                          (-0.1, ValueError)])
def test_setting_a_learning_rate_that_is_not_a_rate(value, error):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(0.1), "sparse_categorical_crossentropy")
    with pytest.raises(error, match=r"optimizer.learning_rate must be a number, 0 or more"):
        model.optimizer.learning_rate = value
    assert model.optimizer.learning_rate == pytest.approx(0.1)


def test_setting_a_scheduled_rate_rescales_the_schedule():
    # a constant schedule at 0.1 set to 0.05 mid-training: the next update uses 0.05
    x, y = make_data(32)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(ef.schedules.constant(0.1), momentum=0.0),
                  "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.optimizer.learning_rate = 0.05
    assert model.optimizer.learning_rate == pytest.approx(0.05)
    before = params_of(model.module)
    grads = grad_of(model.module, x, y)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    expected = [p - 0.05 * g for p, g in zip(before, grads)]
    assert_params_close(params_of(model.module), expected, atol=1e-6)


def test_optax_inject_hyperparams_rate_is_logged_and_settable():
    x, y = make_data(32)
    start = MLP(rngs=nnx.Rngs(0))
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
                  "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert history.history["learning_rate"] == [pytest.approx(0.1)]
    expected = [p - 0.1 * g for p, g in zip(params_of(start), grad_of(start, x, y))]
    assert_params_close(params_of(model.module), expected, atol=1e-6)
    model.optimizer.learning_rate = 0.02
    assert model.optimizer.learning_rate == pytest.approx(0.02)
    before = params_of(model.module)
    grads = grad_of(model.module, x, y)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert_params_close(params_of(model.module),
                        [p - 0.02 * g for p, g in zip(before, grads)], atol=1e-6)
    assert model.trainer.steps.train.cache_size() == train_programs(model)
