"""The learning-rate range test: leaves the model alone, suggests a rate that trains,
stops when the loss diverges, works with easyfit and optax optimizers."""

from __future__ import annotations

import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef
from conftest import MLP, make_data
from easyfit.tune.lr_finder import suggest

GOOD_LR = 1e-2  # AdamW on the digits MLP: 0.92 test accuracy after 5 epochs (1e-3: 0.85)


def _digits_model(optimizer="adamw") -> ef.Model:
    model = ef.Model(MLP(din=64, hidden=64, dout=10, rngs=nnx.Rngs(0)))
    model.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"])
    return model


def test_the_model_is_left_exactly_as_it_was(digits):
    x_train, y_train, _, _ = digits
    model = _digits_model()
    model.fit(x_train, y_train, epochs=1, verbose=0)
    weights, opt_state = model.get_weights(), model.trainer.state.opt_state
    lr = model.optimizer.learning_rate
    model.find_lr(x_train, y_train, steps=30)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert model.trainer.state.opt_state is opt_state and model.optimizer.learning_rate == lr


def test_the_suggestion_trains_well_and_is_near_a_good_rate(digits):
    x_train, y_train, x_test, y_test = digits
    result = _digits_model().find_lr(x_train, y_train, min_lr=1e-6, max_lr=10.0)
    assert GOOD_LR / 10 <= result.suggestion <= GOOD_LR * 10
    model = _digits_model(ef.optimizers.adamw(result.suggestion))
    model.fit(x_train, y_train, epochs=5, verbose=0)
    assert model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"] > 0.85


def test_divergence_stops_the_sweep_early(digits):
    x_train, y_train, _, _ = digits
    result = _digits_model().find_lr(x_train, y_train, min_lr=1e-4, max_lr=1e4, steps=100)
    assert result.diverged and len(result.lrs) < 100
    assert result.smoothed[-1] > 4 * np.nanmin(result.smoothed[:-1]) or \
        not np.isfinite(result.smoothed[-1])
    # the rates grow exponentially from min_lr
    np.testing.assert_allclose(result.lrs[:3], 1e-4 * (1e8 ** (np.arange(3) / 99)), rtol=1e-6)


def test_short_data_is_cycled():
    x, y = make_data(64)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile("sgd", "sparse_categorical_crossentropy")
    result = model.find_lr(x, y, batch_size=16, steps=20, max_lr=1e-2)   # 4 batches/epoch
    assert len(result.lrs) == 20 and not result.diverged


def test_too_few_steps_for_a_suggestion_warn():
    x, y = make_data(48)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile("sgd", "sparse_categorical_crossentropy")
    one_shot = iter([(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)])
    with pytest.warns(UserWarning, match=r"only 3 steps.*ran out after 3 of 100.*None"):
        result = model.find_lr(one_shot)
    assert result.suggestion is None


def test_optax_optimizer_with_injected_rate_works_and_without_is_refused():
    x, y = make_data(64)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
                  "sparse_categorical_crossentropy")
    assert len(model.find_lr(x, y, steps=12, max_lr=1e-2).lrs) == 12
    model.compile(optax.adam(1e-3), "sparse_categorical_crossentropy")
    with pytest.raises(AttributeError, match="inject_hyperparams"):
        model.find_lr(x, y, steps=12)


def test_bad_arguments_are_named():
    x, y = make_data(32)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    with pytest.raises(RuntimeError, match="compile"):
        model.find_lr(x, y)
    model.compile("adamw", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="min_lr < max_lr"):
        model.find_lr(x, y, min_lr=1.0, max_lr=0.1)


def test_suggest_picks_the_steepest_descent():
    lrs = np.logspace(-5, 0, 50)
    loss = 2.0 - np.tanh(3 * (np.log10(lrs) + 2.5))    # falls fastest at 10**-2.5
    assert suggest(lrs, loss) == pytest.approx(10 ** -2.5, rel=0.3)
    assert suggest(lrs[:5], loss[:5]) is None
