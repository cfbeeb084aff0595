"""The rows of the "Deliberate differences" table (docs/guides/coming-from-keras.md) that no
translated Keras test covers: each asserts easyfit's behaviour."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import easyfit as ef
from keras_like import Ones


def test_losses_take_logits_by_default():
    y, logits = np.array([0, 1]), np.array([[2.0, 0.0], [0.0, 3.0]], np.float32)
    per_example = np.asarray(ef.losses.get("sparse_categorical_crossentropy")(y, logits))
    expected = -np.log(np.exp(logits[[0, 1], [0, 1]]) / np.exp(logits).sum(-1))
    np.testing.assert_allclose(per_example, expected, rtol=1e-5)


def test_weighted_loss_is_the_weighted_mean_over_rows():
    model = ef.Model(Ones(1, 1))
    model.compile("sgd", "mse")
    x, y = np.array([[1.0], [2.0]], np.float32), np.zeros((2, 1), np.float32)
    weights = np.array([3.0, 1.0], np.float32)
    # (3 * 1 + 1 * 4) / (3 + 1); Keras: (3 * 1 + 1 * 4) / 2
    assert model.evaluate(x, y, sample_weight=weights, verbose=0) == pytest.approx(7 / 4)


def test_optimizer_defaults_are_optax_s():
    def default(fn, name):
        return inspect.signature(fn).parameters[name].default
    assert default(ef.optimizers.adam, "eps") == 1e-8
    assert default(ef.optimizers.adamw, "eps") == 1e-8
    assert default(ef.optimizers.adamw, "weight_decay") == 1e-4
    assert default(ef.optimizers.sgd, "momentum") == 0.9
