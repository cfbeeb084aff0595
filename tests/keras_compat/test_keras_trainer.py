"""keras/src/trainers/trainer_test.py, translated: return values, *_on_batch, stop loops,
steps_per_epoch, initial_epoch, validation_freq, sample and class weights."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import easyfit as ef
from keras_like import Ones


def _example_model(units: int = 3, din: int = 4, optimizer="sgd", **compile_kw) -> ef.Model:
    """Keras's ``ExampleModel``: ones kernel; Keras's SGD is lr 0.01 without momentum."""
    model = ef.Model(Ones(din, units))
    if optimizer == "sgd":
        optimizer = ef.optimizers.sgd(0.01, momentum=0.0)
    model.compile(optimizer, "mse", ["mse"], **compile_kw)
    return model


class StepObserver(ef.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.begin_count = self.end_count = self.epoch_begin_count = self.epoch_end_count = 0
        self.batch_loss_history = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_begin_count += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end_count += 1

    def on_batch_begin(self, batch, logs=None):  # Keras's legacy names are called too
        self.begin_count += 1

    def on_batch_end(self, batch, logs=None):
        self.end_count += 1
        self.batch_loss_history.append(logs["mse"])


def test_fit_flow():
    x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
    history = _example_model().fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert history.epoch == [0, 1, 2]
    assert history.history["loss"][0] > history.history["loss"][-1]
    assert sorted(history.history) == ["learning_rate", "loss", "mse"]  # easyfit adds the rate


def test_evaluate_flow():
    model = _example_model()
    x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
    assert model.evaluate(x, y, batch_size=16, verbose=0) == [16.0, 16.0]
    assert model.evaluate(x, y, return_dict=True, verbose=0) == {"loss": 16.0, "mse": 16.0}
    loss_only = ef.Model(Ones(4, 3))
    loss_only.compile("sgd", "mse")
    assert loss_only.evaluate(x, y, verbose=0) == 16.0


def test_predict_flow():
    outputs = _example_model().predict(np.ones((100, 4), np.float32), batch_size=16, verbose=0)
    assert isinstance(outputs, np.ndarray) and outputs.shape == (100, 3)
    np.testing.assert_array_equal(outputs, 4.0)


def test_on_batch_methods():
    model = _example_model()
    x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
    sw = np.arange(100, dtype=np.float32) / 50.0
    logs = model.train_on_batch(x, y)
    assert isinstance(logs, list) and len(logs) == 2
    assert logs[0] == pytest.approx(16.0)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert isinstance(logs, dict) and len(logs) == 2
    assert logs["loss"] == pytest.approx(15.158, abs=1e-3)
    logs = model.test_on_batch(x, y)
    assert isinstance(logs, list) and len(logs) == 2
    assert logs[0] == pytest.approx(14.360, abs=1e-3)
    logs = model.test_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(14.360, abs=1e-3)
    output = model.predict_on_batch(x)
    assert isinstance(output, np.ndarray)
    np.testing.assert_allclose(output[0], [3.789511] * 3, rtol=1e-5)
    # With sample weights. Deliberate difference: easyfit's loss is the weighted mean over
    # rows (Keras: the mean of weighted values, 0.99 x here), so the loss is the unweighted
    # one when every row has the same loss.
    assert model.train_on_batch(x, y, sw)[0] == pytest.approx(14.360, abs=1e-3)
    assert model.test_on_batch(x, y, sw)[0] == pytest.approx(13.605, abs=1e-3)
    # With class weights (all rows of class 0): the same convention
    assert model.train_on_batch(x, y, class_weight={1: 0.3, 0: 0.2})[0] == pytest.approx(
        13.605, abs=1e-3)
    with pytest.raises(ValueError, match="sample_weight` and `class_weight"):
        model.train_on_batch(x, y, sw, class_weight={0: 1.0})


def test_on_batch_methods_without_training():
    model = _example_model()
    x, y = np.ones((100, 4), np.float32), np.zeros((100, 3), np.float32)
    np.testing.assert_allclose(model.predict_on_batch(x)[0], [4.0, 4.0, 4.0])
    assert model.test_on_batch(x, y) == [16.0, 16.0]
    assert model.test_on_batch(x, y, return_dict=True) == {"loss": 16.0, "mse": 16.0}


def test_on_batch_reuses_the_compiled_step():
    model = _example_model()
    x, y = np.ones((32, 4), np.float32), np.zeros((32, 3), np.float32)
    for _ in range(3):
        model.train_on_batch(x, y)
    assert model.trainer.steps.train.cache_size() == 1


@pytest.mark.parametrize("method, gerund, hook", [
    ("fit", "training", "train"), ("evaluate", "evaluating", "test"),
    ("predict", "predicting", "predict")])
def test_stop_loop(method, gerund, hook):
    model = _example_model(din=2)

    class Stopper(ef.callbacks.Callback):
        def __init__(self, stop_count):
            super().__init__()
            self.stop_count, self.counter = stop_count, 0
            setattr(self, f"on_{hook}_batch_end", self.batch_end)

        def batch_end(self, *args, **kwargs):
            self.counter += 1
            if self.counter == self.stop_count:
                setattr(self.model, f"stop_{gerund}", True)

    def infinite_gen():
        while True:
            x, y = np.ones((2, 2), np.float32), np.ones((2, 3), np.float32)
            yield (x,) if method == "predict" else (x, y)

    stopper = Stopper(5)
    getattr(model, method)(infinite_gen(), callbacks=[stopper], verbose=0)
    assert stopper.counter == 5


@pytest.mark.parametrize("case", ["match_one_epoch", "match_multi_epoch", "not_match_too_low",
                                  "not_match_but_high_enough"])
def test_steps_per_epoch(case):
    batch_size, epochs, num_batches = 8, 4, 10
    steps_per_epoch = {"match_one_epoch": num_batches,
                       "match_multi_epoch": num_batches // (epochs // 2),
                       "not_match_too_low": num_batches - 1,
                       "not_match_but_high_enough": num_batches + 1}[case]
    rng = np.random.default_rng(0)
    x = rng.random((num_batches * batch_size, 4), np.float32)
    y = np.ones((num_batches * batch_size, 1), np.float32)
    model, observer = _example_model(units=1), StepObserver()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
              callbacks=[observer], verbose=0, shuffle=False)
    if case != "not_match_too_low":
        count = epochs * min(steps_per_epoch, num_batches)
    else:
        cycles = [num_batches // steps_per_epoch * steps_per_epoch,
                  num_batches % steps_per_epoch] * epochs
        count = sum(cycles[:epochs])
    assert observer.begin_count == observer.end_count == count
    assert observer.epoch_begin_count == observer.epoch_end_count == epochs
    if case == "not_match_too_low":
        return
    other_epochs = epochs // (num_batches // steps_per_epoch) if case == "match_multi_epoch" \
        else epochs
    model_2, observer_2 = _example_model(units=1), StepObserver()
    model_2.fit(x, y, batch_size=batch_size, epochs=other_epochs, callbacks=[observer_2],
                verbose=0, shuffle=False)
    if case == "match_multi_epoch":  # the epoch's running mean restarts at each epoch
        assert observer.batch_loss_history[0] == observer_2.batch_loss_history[0]
    else:
        np.testing.assert_allclose(observer.batch_loss_history, observer_2.batch_loss_history)
    np.testing.assert_allclose(model.get_weights(), model_2.get_weights(), rtol=1e-6)
    np.testing.assert_allclose(model.predict(x, verbose=0), model_2.predict(x, verbose=0),
                               rtol=1e-6)


def test_evaluate_return_list_respect_metrics_order():
    model = ef.Model(Ones(4, 3))
    model.compile("sgd", "mse", metrics=["mse", "mae"])
    x, y = np.ones((8, 4), np.float32), np.zeros((8, 3), np.float32)
    assert model.evaluate(x, y, verbose=0) == [16.0, 16.0, 4.0]
    assert list(model.evaluate(x, y, return_dict=True, verbose=0)) == ["loss", "mse", "mae"]


def test_initial_epoch_and_validation_freq():
    model = _example_model()
    x, y = np.ones((32, 4), np.float32), np.zeros((32, 3), np.float32)
    history = model.fit(x, y, epochs=5, initial_epoch=2, validation_data=(x, y),
                        validation_freq=2, verbose=0)
    assert history.epoch == [2, 3, 4]
    assert len(history.history["loss"]) == 3
    assert len(history.history["val_loss"]) == 1  # validated after epoch 4 only (1-based)


def test_metric_returning_one_value_per_batch_gets_a_clear_error():
    """Deliberate difference: Keras averages such values over batches; easyfit asks for one
    value per example, so padding rows and sample weights count exactly."""
    model = ef.Model(Ones(4, 3))
    model.compile("sgd", "mse", metrics=[lambda y, p: jnp.mean(jnp.abs(y - p))])
    x, y = np.ones((8, 4), np.float32), np.zeros((8, 3), np.float32)
    with pytest.raises(ValueError, match="one value for the whole batch"):
        model.evaluate(x, y, verbose=0)
