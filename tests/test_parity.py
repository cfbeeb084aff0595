"""fit() equals a hand-written optax loop on the same batches (params to 1e-6)."""

from __future__ import annotations

import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef
from conftest import MLP, assert_params_close, hand_fit, make_data, params_of

EPOCHS = 3


def _fit(module, optimizer, x, y, batch_size, **compile_kw):
    model = ef.Model(module)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", **compile_kw)
    model.fit(x, y, batch_size=batch_size, epochs=EPOCHS, shuffle=False, verbose=0)
    return model


# 200 rows: batch 40 divides evenly; batch 48 leaves an 8-row last batch (padded to 48).
@pytest.mark.parametrize("n, batch_size", [(200, 40), (200, 48)])
def test_sgd_momentum_matches_optax(n, batch_size):
    x, y = make_data(n)
    module = MLP(rngs=nnx.Rngs(0))
    reference = hand_fit(nnx.clone(module), optax.sgd(0.1, momentum=0.9), x, y,
                         batch_size, EPOCHS)
    model = _fit(module, ef.optimizers.sgd(0.1, momentum=0.9), x, y, batch_size)
    trained = params_of(model.module)
    assert_params_close(trained, reference, atol=1e-6)
    # the weights really moved, so the comparison means something
    assert max(np.abs(a - b).max() for a, b in zip(trained, params_of(MLP(rngs=nnx.Rngs(0))))) \
        > 1e-2


def test_sgd_string_matches_optax_defaults():
    # "sgd" resolves to ef.optimizers.sgd(): learning rate 0.01, momentum 0.9 (easyfit's
    # documented default; Keras's "sgd" has momentum 0).
    x, y = make_data(200)
    module = MLP(rngs=nnx.Rngs(1))
    reference = hand_fit(nnx.clone(module), optax.sgd(0.01, momentum=0.9), x, y, 48, EPOCHS)
    model = _fit(module, "sgd", x, y, 48)
    assert_params_close(params_of(model.module), reference, atol=1e-6)


@pytest.mark.parametrize("n, batch_size", [(200, 48)])  # 5 batches, the last of 8 rows
def test_adamw_warmup_cosine_matches_optax(n, batch_size):
    x, y = make_data(n)
    peak, warmup = 1e-2, 0.1
    steps_per_epoch = -(-n // batch_size)
    total = EPOCHS * steps_per_epoch
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=round(warmup * total), decay_steps=total, end_value=0.0)
    module = MLP(rngs=nnx.Rngs(2))
    reference = hand_fit(nnx.clone(module), optax.adamw(schedule, weight_decay=1e-4), x, y,
                         batch_size, EPOCHS)
    optimizer = ef.optimizers.adamw(
        learning_rate=ef.schedules.warmup_cosine(peak=peak, warmup=warmup), weight_decay=1e-4)
    model = _fit(module, optimizer, x, y, batch_size)
    assert_params_close(params_of(model.module), reference, atol=1e-6)
    assert int(model.trainer.state.step) == total


def test_trained_weights_land_in_the_users_module():
    x, y = make_data(100)
    module = MLP(rngs=nnx.Rngs(3))
    before = params_of(module)
    model = _fit(module, ef.optimizers.sgd(0.1), x, y, 32)
    assert model.module is module
    after = params_of(module)
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert_params_close(after, params_of(model.module), atol=0)


@pytest.mark.parametrize("k", [4, 3])
def test_steps_per_execution_matches_one_step_per_dispatch(k):
    # 200 rows at batch 24 -> 9 batches (the last has 8 rows): not a multiple of 4, and
    # with k=3 a multiple (so both the filler path and the exact path are covered).
    x, y = make_data(200)
    results = []
    for spe in (1, k):
        model = _fit(MLP(rngs=nnx.Rngs(4)), ef.optimizers.sgd(0.1, momentum=0.9), x, y, 24,
                     steps_per_execution=spe)
        results.append((params_of(model.module), model.history.history["loss"],
                        int(model.trainer.state.step)))
        assert model.trainer.steps.train.cache_size() == 1
    (p1, loss1, steps1), (pk, lossk, stepsk) = results
    assert steps1 == stepsk == EPOCHS * 9
    assert_params_close(pk, p1, atol=1e-6)
    np.testing.assert_allclose(lossk, loss1, rtol=1e-6)


def test_steps_per_execution_auto():
    x, y = make_data(200)
    model = _fit(MLP(rngs=nnx.Rngs(4)), ef.optimizers.sgd(0.1, momentum=0.9), x, y, 24,
                 steps_per_execution="auto")
    reference = _fit(MLP(rngs=nnx.Rngs(4)), ef.optimizers.sgd(0.1, momentum=0.9), x, y, 24)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-6)
