"""The residual CNN example (``examples/resnet_digits.py``) at a tiny size: BatchNorm's running
statistics move in ``fit`` only, evaluation is deterministic, augmentation runs in training
only, and the example runs end to end."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import easyfit as ef

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
import resnet_digits  # noqa: E402

WIDTHS, SIZE, BATCH = (4, 8), 16, 32
TINY = ["--epochs", "1", "--widths", "4", "8", "--size", "16", "--limit", "160",
        "--batch-size", "32", "--verbose", "0"]


def _batch_stats(model: ef.Model) -> list[np.ndarray]:
    return [np.array(leaf) for leaf in jax.tree.leaves(nnx.state(model.module, nnx.BatchStat))]


@pytest.fixture(scope="module")
def data():
    return resnet_digits.load_data(SIZE, limit=160)


@pytest.fixture(scope="module")
def trained(data):
    """A tiny ResNet before and after two epochs of fit: ``(model, stats at init)``."""
    x_train, y_train, _, _ = data
    model = resnet_digits.build(WIDTHS)   # shifts of up to 4 pixels, as the example
    initial = _batch_stats(model)
    model.fit(x_train, y_train, batch_size=BATCH, epochs=2, verbose=0)
    return model, initial


def test_load_data_resizes_and_holds_out_the_last_rows():
    x_train, y_train, x_test, y_test = resnet_digits.load_data(32)
    assert x_train.shape == (1397, 32, 32, 1) and x_test.shape == (400, 32, 32, 1)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    border = np.ones((32, 32), bool)
    border[4:-4, 4:-4] = False                          # a 24x24 digit in a black frame
    assert not x_train[:, border].any() and x_train[:, ~border].any(axis=1).all()
    assert y_train.shape == (1397,) and set(np.unique(y_test)) == set(range(10))
    again = resnet_digits.load_data(32)
    np.testing.assert_array_equal(again[3], y_test)   # the split is seeded


def test_batch_statistics_move_in_fit_and_not_in_evaluate(trained, data):
    model, initial = trained
    after_fit = _batch_stats(model)
    assert len(after_fit) == 2 * (1 + 2 * len(WIDTHS))     # mean and var of each BatchNorm
    for before, after in zip(initial, after_fit):
        assert not np.allclose(before, after)

    _, _, x_test, y_test = data
    model.evaluate(x_test, y_test, batch_size=BATCH, verbose=0)
    model.predict(x_test, batch_size=BATCH, verbose=0)
    for fitted, now in zip(after_fit, _batch_stats(model)):
        np.testing.assert_array_equal(fitted, now)


def test_evaluate_and_predict_are_deterministic(trained, data):
    model, _ = trained
    _, _, x_test, y_test = data
    first = model.evaluate(x_test, y_test, batch_size=BATCH, verbose=0, return_dict=True)
    second = model.evaluate(x_test, y_test, batch_size=BATCH, verbose=0, return_dict=True)
    assert first == second
    np.testing.assert_array_equal(model.predict(x_test, batch_size=BATCH, verbose=0),
                                  model.predict(x_test, batch_size=BATCH, verbose=0))
    # Eval mode normalises by the running averages: a row's logits do not depend on the
    # rest of its batch.
    np.testing.assert_allclose(model.predict(x_test[:5], batch_size=BATCH, verbose=0),
                               model.predict(x_test, batch_size=BATCH, verbose=0)[:5],
                               atol=1e-5)


def test_image_augmentation_runs_in_training_only(data):
    x_train, y_train, x_test, y_test = data
    # A learning rate of 0 fixes the weights: the losses differ by their inputs only.
    plain, shifted = (resnet_digits.build(WIDTHS, shift=shift, learning_rate=0.0)
                      for shift in (0, 4))
    np.testing.assert_array_equal(plain.predict(x_test, batch_size=BATCH, verbose=0),
                                  shifted.predict(x_test, batch_size=BATCH, verbose=0))
    assert plain.evaluate(x_test, y_test, batch_size=BATCH, verbose=0) == \
        shifted.evaluate(x_test, y_test, batch_size=BATCH, verbose=0)
    losses = [model.fit(x_train, y_train, batch_size=BATCH, epochs=1, shuffle=False,
                        verbose=0).history["loss"][0] for model in (plain, shifted)]
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)


def test_the_example_runs_end_to_end(capsys):
    resnet_digits.main(TINY)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("test accuracy: ")
    assert 0.0 <= float(lines[-1].split()[-1]) <= 1.0
