"""Sample and class weights: a zero weight means "not in the batch", and losses reduce as the
weighted mean ``sum(w * l) / sum(w)`` over real rows."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from data_fixtures import (MLP, assert_params_close, make_data, mlp_model, model_for,
                           params_of, per_example_loss)


def _half_weights(n):
    return np.concatenate([np.ones(n // 2), np.zeros(n - n // 2)]).astype(np.float32)


# ---------------------------------------------------------------------------------------
# zero weights
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [32, 100])
def test_evaluate_with_zero_weights_equals_evaluate_on_the_rest(batch_size):
    x, y = make_data(200)
    w = _half_weights(200)
    model = model_for(MLP(rngs=nnx.Rngs(0)), metrics=["accuracy"],
                      weighted_metrics=[ef.metrics.SparseCategoricalAccuracy(name="w_acc")])
    weighted = model.evaluate(x, y, sample_weight=w, batch_size=batch_size, return_dict=True,
                              verbose=0)
    half = model.evaluate(x[:100], y[:100], batch_size=batch_size, return_dict=True, verbose=0)
    full = model.evaluate(x, y, batch_size=batch_size, return_dict=True, verbose=0)
    assert weighted["loss"] == pytest.approx(half["loss"], rel=1e-5)
    assert weighted["w_acc"] == pytest.approx(half["accuracy"], rel=1e-6)
    assert weighted["accuracy"] == pytest.approx(full["accuracy"], rel=1e-6)   # unweighted
    assert weighted["loss"] != pytest.approx(full["loss"], rel=1e-3)


def test_fit_with_zero_weighted_second_half_equals_fit_on_first_half():
    x, y = make_data(128)
    weighted = mlp_model(lr=0.1)
    history = weighted.fit(x, y, sample_weight=_half_weights(128), batch_size=64, epochs=3,
                           shuffle=False, verbose=0)
    half = mlp_model(lr=0.1)
    expected = half.fit(x[:64], y[:64], batch_size=64, epochs=3, shuffle=False, verbose=0)
    after = params_of(weighted.module)
    assert all(np.isfinite(p).all() for p in after)   # an all-zero-weight batch is no NaN
    assert_params_close(after, params_of(half.module), atol=1e-6)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-6)


def test_zero_weight_rows_inside_each_batch_are_left_out():
    # Each batch of 40 holds 20 real rows and 20 zero-weight rows: the same steps as
    # training on the real rows alone in batches of 20.
    x_real, y_real = make_data(100)
    x_junk, y_junk = make_data(100, seed=7)
    x = np.concatenate([np.concatenate([x_real[i:i + 20], x_junk[i:i + 20]])
                        for i in range(0, 100, 20)])
    y = np.concatenate([np.concatenate([y_real[i:i + 20], y_junk[i:i + 20]])
                        for i in range(0, 100, 20)])
    w = np.tile(np.repeat(np.array([1.0, 0.0], np.float32), 20), 5)
    weighted = mlp_model(lr=0.2)
    history = weighted.fit(x, y, sample_weight=w, batch_size=40, epochs=2, shuffle=False,
                           verbose=0)
    alone = mlp_model(lr=0.2)
    expected = alone.fit(x_real, y_real, batch_size=20, epochs=2, shuffle=False, verbose=0)
    assert_params_close(params_of(weighted.module), params_of(alone.module), atol=1e-6)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)


# ---------------------------------------------------------------------------------------
# weighted means, by hand
# ---------------------------------------------------------------------------------------


def test_sample_weight_loss_is_weighted_mean_over_real_rows():
    x, y = make_data(100)   # batches of 32: the last one (4 rows) padded
    w = np.random.default_rng(1).uniform(0.0, 3.0, 100).astype(np.float32)
    model = mlp_model(lr=0.0)
    history = model.fit(x, y, sample_weight=w, batch_size=32, epochs=1, shuffle=False,
                        verbose=0)
    losses = per_example_loss(MLP(rngs=nnx.Rngs(0)), x, y)
    expected = float(np.sum(w * losses) / np.sum(w))
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    logs = model.evaluate(x, y, sample_weight=w, batch_size=32, return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)


def test_class_weight_changes_the_loss_exactly():
    x, y = make_data(100, classes=2)
    class_weight = {0: 1.0, 1: 5.0}
    losses = per_example_loss(MLP(dout=2, rngs=nnx.Rngs(0)), x, y)
    w = np.where(y == 1, 5.0, 1.0)
    expected = float(np.sum(w * losses) / np.sum(w))
    assert expected != pytest.approx(float(np.mean(losses)), rel=1e-3)

    model = mlp_model(lr=0.0, dout=2)
    history = model.fit(x, y, class_weight=class_weight, batch_size=32, epochs=1,
                        shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)

    # class_weight multiplies sample_weight.
    s = np.random.default_rng(2).uniform(0.5, 2.0, 100).astype(np.float32)
    model = mlp_model(lr=0.0, dout=2)
    history = model.fit(x, y, sample_weight=s, class_weight=class_weight, batch_size=32,
                        epochs=1, shuffle=True, verbose=0)
    expected = float(np.sum(s * w * losses) / np.sum(s * w))
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_class_weight_trains_like_the_equivalent_sample_weight():
    x, y = make_data(96, classes=3)
    class_weight = {0: 0.5, 1: 1.0, 2: 3.0}
    by_class = mlp_model(lr=0.1, dout=3)
    by_class.fit(x, y, class_weight=class_weight, batch_size=32, epochs=2, verbose=0)
    by_sample = mlp_model(lr=0.1, dout=3)
    by_sample.fit(x, y, sample_weight=np.vectorize(class_weight.get)(y).astype(np.float32),
                  batch_size=32, epochs=2, verbose=0)
    assert_params_close(params_of(by_class.module), params_of(by_sample.module), atol=1e-6)


def test_validation_data_with_sample_weights():
    x, y = make_data(64)
    x_val, y_val = make_data(50, seed=1)
    w_val = np.random.default_rng(4).uniform(0.0, 2.0, 50).astype(np.float32)
    model = mlp_model(lr=0.0)
    history = model.fit(x, y, batch_size=16, epochs=1, validation_data=(x_val, y_val, w_val),
                        verbose=0)
    losses = per_example_loss(MLP(rngs=nnx.Rngs(0)), x_val, y_val)
    assert history.history["val_loss"][0] == pytest.approx(
        float(np.sum(w_val * losses) / np.sum(w_val)), rel=1e-5)


def test_weights_for_datasets_must_come_from_the_dataset():
    x, y = make_data(64)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    with pytest.raises(ValueError, match="sample_weight"):
        mlp_model().fit(batches, sample_weight=np.ones(64), verbose=0)
    with pytest.raises(ValueError, match="class_weight"):
        mlp_model().fit(batches, class_weight={0: 2.0}, verbose=0)


def test_sample_weight_length_must_match():
    x, y = make_data(64)
    with pytest.raises(ValueError, match="sample_weight"):
        mlp_model().fit(x, y, sample_weight=np.ones(63), verbose=0)
