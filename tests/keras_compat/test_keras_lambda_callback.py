"""keras/src/callbacks/lambda_callback_test.py, translated (prints for logging.warning)."""

from __future__ import annotations

import numpy as np
import pytest

import easyfit as ef
from keras_like import Dense2


def _model_and_data():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 2)).astype(np.float32), rng.normal(size=(16, 1)).astype(np.float32)
    model = ef.Model(Dense2(2, 1, 1, relu=False))
    model.compile(ef.optimizers.sgd(0.01, momentum=0.0), "mse")
    return model, x, y


def test_lambda_callback():
    model, x, y = _model_and_data()
    seen = []
    callback = ef.callbacks.LambdaCallback(
        on_train_begin=lambda logs: seen.append("on_train_begin"),
        on_epoch_begin=lambda epoch, logs: seen.append("on_epoch_begin"),
        on_epoch_end=lambda epoch, logs: seen.append("on_epoch_end"),
        on_train_end=lambda logs: seen.append("on_train_end"))
    model.fit(x, y, batch_size=4, validation_split=0.2, callbacks=[callback], epochs=5,
              verbose=0)
    assert set(seen) == {"on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end"}
    assert seen.count("on_epoch_end") == 5


def test_lambda_callback_with_batches():
    model, x, y = _model_and_data()
    seen = []
    callback = ef.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: seen.append(("begin", batch)),
        on_train_batch_end=lambda batch, logs: seen.append(("end", batch)))
    model.fit(x, y, batch_size=4, epochs=1, callbacks=[callback], verbose=0)
    assert seen == [(kind, b) for b in range(4) for kind in ("begin", "end")]


def test_lambda_callback_with_kwargs():
    model, x, y = _model_and_data()
    seen = []
    model.evaluate(x, y, batch_size=4, verbose=0, callbacks=[ef.callbacks.LambdaCallback(
        on_test_begin=lambda logs: seen.append("custom_on_test_begin_executed"))])
    assert seen == ["custom_on_test_begin_executed"]


def test_lambda_callback_no_args():
    assert isinstance(ef.callbacks.LambdaCallback(), ef.callbacks.LambdaCallback)


def test_lambda_callback_with_additional_kwargs():
    callback = ef.callbacks.LambdaCallback(custom_method=lambda logs: None)
    assert hasattr(callback, "custom_method")
    with pytest.warns(UserWarning, match="on_epoch_ends"):  # easyfit also warns of typos
        ef.callbacks.LambdaCallback(on_epoch_ends=lambda epoch, logs: None)


def test_lambda_callback_during_prediction():
    model, x, _ = _model_and_data()
    seen = []
    model.predict(x, batch_size=4, verbose=0, callbacks=[ef.callbacks.LambdaCallback(
        on_predict_begin=lambda logs: seen.append("on_predict_begin_executed"))])
    assert seen == ["on_predict_begin_executed"]
