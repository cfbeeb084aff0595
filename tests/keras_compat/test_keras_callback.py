"""keras/src/callbacks/callback_test.py and trainer_test.py's test_callback_methods_keys,
translated: what callbacks see of the model and in ``logs``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

import easyfit as ef
from keras_like import Ones


class Iterations(nnx.Variable):
    pass


class CountingIdentity(nnx.Module):
    def __init__(self):
        self.iterations = Iterations(jnp.zeros((), jnp.float32))
        self.scale = nnx.Param(jnp.ones((), jnp.float32))

    def __call__(self, x):
        self.iterations.value = self.iterations.value + 1
        return x * self.scale


def test_model_state_is_current_on_epoch_end():
    seen = []

    class CBK(ef.callbacks.Callback):
        def on_batch_end(self, batch, logs):
            seen.append((int(self.model.module.iterations.value), batch + 1))

    model = ef.Model(CountingIdentity())
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.random((8, 1), np.float32), rng.random((8, 1), np.float32),
              callbacks=[CBK()], batch_size=2, verbose=0)
    assert seen and all(count == expected for count, expected in seen)


def test_callback_methods_keys():
    """As Keras's, but easyfit's train logs also carry ``learning_rate``."""
    seen: dict[str, list[str]] = {}

    class CustomCallback(ef.callbacks.Callback):
        pass

    for hook in ef.callbacks.base.HOOKS:
        def record(*args, hook=hook):
            seen[hook] = sorted(args[-1] or {})
        setattr(CustomCallback, hook, record)

    model = ef.Model(Ones(4, 3))
    model.compile("adam", "mse", ["mean_absolute_error"])
    x, y = np.ones((16, 4), np.float32), np.zeros((16, 3), np.float32)
    model.fit(x, y, callbacks=[CustomCallback()], batch_size=4, validation_data=(x, y),
              verbose=0)
    model.evaluate(x, y, batch_size=4, callbacks=[CustomCallback()], verbose=0)
    model.predict(x, batch_size=4, callbacks=[CustomCallback()], verbose=0)
    metrics = ["loss", "mean_absolute_error"]
    epoch = sorted(metrics + ["learning_rate"] + [f"val_{m}" for m in metrics])
    assert seen == {
        "on_train_begin": [], "on_train_end": epoch, "on_epoch_begin": [], "on_epoch_end": epoch,
        "on_test_begin": [], "on_test_end": metrics, "on_predict_begin": [],
        "on_predict_end": [], "on_train_batch_begin": [],
        "on_train_batch_end": sorted(metrics + ["learning_rate"]),
        "on_test_batch_begin": [], "on_test_batch_end": metrics,
        "on_predict_batch_begin": [], "on_predict_batch_end": ["outputs"]}


def test_predict_batch_end_outputs_are_the_batch_outputs():
    outputs = []
    model = ef.Model(Ones(4, 3))
    model.compile("sgd", "mse")
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    model.predict(x, batch_size=4, verbose=0, callbacks=[ef.callbacks.LambdaCallback(
        on_predict_batch_end=lambda batch, logs: outputs.append(np.asarray(logs["outputs"])))])
    np.testing.assert_array_equal(np.concatenate(outputs), x @ np.ones((4, 3), np.float32))
