"""keras/src/trainers/trainer_test.py::test_loss_weights, translated: the same models (dense
layers with a ones kernel, no bias), data and SGD give Keras's losses, for one output with
``loss_weights=0.2``, dict outputs with a dict of weights and list outputs with a list."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from keras_like import Ones

EPOCHS, BATCH_SIZE, ROWS = 3, 20, 40


def sgd() -> ef.optimizers.Optimizer:
    return ef.optimizers.sgd(0.01, momentum=0.0)  # Keras's SGD()


class StructModel(nnx.Module):
    """``{"y_one": dense_1(x["x_one"]), "y_two": dense_2(x["x_two"])}``."""

    def __init__(self, units: int):
        self.dense_1, self.dense_2 = Ones(4, units), Ones(4, units)

    def __call__(self, x):
        return {"y_one": self.dense_1(x["x_one"]), "y_two": self.dense_2(x["x_two"])}


class ListOutputModel(nnx.Module):
    """``[dense_1(x), dense_2(x)]``."""

    def __init__(self, units: int):
        self.dense_1, self.dense_2 = Ones(4, units), Ones(4, units)

    def __call__(self, x):
        return [self.dense_1(x), self.dense_2(x)]


def test_loss_weights_single_output():
    model = ef.Model(Ones(4, 3))
    model.compile(sgd(), loss="mse", metrics=["mse"], loss_weights=0.2)
    history = model.fit(np.ones((ROWS, 4)), np.zeros((ROWS, 3)), batch_size=BATCH_SIZE,
                        epochs=EPOCHS, verbose=0).history
    np.testing.assert_allclose(history["loss"], [3.182979, 3.115617, 3.049681], atol=1e-3)


def test_loss_weights_dict_outputs():
    model = ef.Model(StructModel(units=3))
    model.compile(sgd(), loss={"y_one": "mse", "y_two": "mse"},
                  metrics={"y_one": ["mse"], "y_two": ["mse"]},
                  loss_weights={"y_one": 0.1, "y_two": 0.2})
    x = {"x_one": np.ones((ROWS, 4)), "x_two": np.ones((ROWS, 4))}
    y = {"y_one": np.zeros((ROWS, 3)), "y_two": np.zeros((ROWS, 3))}
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=0).history
    np.testing.assert_allclose(history["loss"], [4.778718, 4.694403, 4.611693], atol=1e-3)
    # Keras 3's names (its MeanSquaredError metric is named mean_squared_error; ours mse)
    assert set(history) == {"loss", "y_one_loss", "y_two_loss", "y_one_mse", "y_two_mse",
                            "learning_rate"}
    for total, one, two in zip(history["loss"], history["y_one_loss"], history["y_two_loss"]):
        assert total == pytest.approx(0.1 * one + 0.2 * two, rel=1e-6)


def test_loss_weights_list_outputs():
    model = ef.Model(ListOutputModel(units=3))
    model.compile(sgd(), loss=["mse", "mse"], metrics=[["mse"], ["mse"]],
                  loss_weights=[0.1, 0.2])
    history = model.fit(np.ones((ROWS, 4)), [np.zeros((ROWS, 3)), np.zeros((ROWS, 3))],
                        batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=0).history
    np.testing.assert_allclose(history["loss"], [4.778718, 4.694403, 4.611693], atol=1e-3)
    assert "output_1_loss" in history and "output_2_mse" in history


# -- the rows of the "Deliberate differences" table on several outputs -----------------------


def test_loss_weights_is_a_keyword_metrics_stays_third():
    model = ef.Model(Ones(4, 3))
    model.compile(sgd(), "mse", ["mae"])  # Keras 3 would read ["mae"] as loss_weights
    history = model.fit(np.ones((ROWS, 4)), np.zeros((ROWS, 3)), epochs=1, verbose=0).history
    assert list(history) == ["loss", "mae", "learning_rate"]


def test_a_flat_metric_list_applies_to_every_output():
    model = ef.Model(ListOutputModel(units=3))
    model.compile(sgd(), loss="mse", metrics=["mae"])
    logs = model.evaluate(np.ones((ROWS, 4)), (np.zeros((ROWS, 3)), np.zeros((ROWS, 3))),
                          verbose=0, return_dict=True)
    assert list(logs) == ["loss", "output_1_loss", "output_2_loss", "output_1_mae",
                          "output_2_mae"]


def test_dict_outputs_are_never_matched_by_position():
    x = {"x_one": np.ones((ROWS, 4)), "x_two": np.ones((ROWS, 4))}
    y = {"y_one": np.zeros((ROWS, 3)), "y_two": np.zeros((ROWS, 3))}
    model = ef.Model(StructModel(units=3))
    model.compile(sgd(), loss=["mse", "mae"])
    with pytest.raises(ValueError, match="give loss as a dict keyed by output name"):
        model.evaluate(x, y, verbose=0)
    model.compile(sgd(), loss="mse")
    with pytest.raises(ValueError, match="y is a tuple: pass y as a dict keyed by output name"):
        model.evaluate(x, (y["y_one"], y["y_two"]), verbose=0)
