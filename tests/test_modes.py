"""Train mode in fit (dropout on, batch statistics updated), eval mode in evaluate/predict."""

from __future__ import annotations

import numpy as np
from flax import nnx

import easyfit as ef
from conftest import BNMLP, DropoutMLP, forward, make_data, mean_loss


def _frozen(module, metrics=None):
    """Compiled with learning rate 0: fit runs the train-mode forward pass, weights fixed."""
    model = ef.Model(module)
    model.compile(ef.optimizers.sgd(0.0, momentum=0.0), "sparse_categorical_crossentropy",
                  metrics=metrics)
    return model


def test_dropout_is_on_in_fit_and_off_in_evaluate():
    x, y = make_data(256)
    dropped = _frozen(DropoutMLP(rate=0.5, rngs=nnx.Rngs(0)))
    plain = _frozen(DropoutMLP(rate=0.0, rngs=nnx.Rngs(0)))  # same weights, no dropout
    eval_loss = mean_loss(DropoutMLP(rate=0.0, rngs=nnx.Rngs(0)), x, y)

    train_dropped = dropped.fit(x, y, batch_size=64, epochs=1, verbose=0).history["loss"][0]
    train_plain = plain.fit(x, y, batch_size=64, epochs=1, verbose=0).history["loss"][0]
    # with rate 0 the train-mode loss is the deterministic loss; with 0.5 it is not
    np.testing.assert_allclose(train_plain, eval_loss, rtol=1e-5)
    assert abs(train_dropped - eval_loss) > 1e-3
    # evaluate runs without dropout: both models give the deterministic loss
    np.testing.assert_allclose(dropped.evaluate(x, y, batch_size=64, verbose=0), eval_loss,
                               rtol=1e-5)
    np.testing.assert_allclose(plain.evaluate(x, y, batch_size=64, verbose=0), eval_loss,
                               rtol=1e-5)


def test_predict_is_deterministic_and_in_eval_mode():
    x, y = make_data(100)
    model = ef.Model(DropoutMLP(rate=0.5, rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.adamw(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    first = model.predict(x, batch_size=32, verbose=0)
    second = model.predict(x, batch_size=32, verbose=0)
    np.testing.assert_array_equal(first, second)
    # equals the trained module's forward pass with dropout off
    reference = nnx.clone(model.module)
    reference.eval()
    np.testing.assert_allclose(first, forward(reference, x), atol=1e-5)
    # fitting again still uses dropout (train mode is restored after predict)
    frozen_lr = ef.optimizers.sgd(0.0, momentum=0.0)
    model.compile(frozen_lr, "sparse_categorical_crossentropy")
    train_loss = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history["loss"][0]
    assert abs(train_loss - model.evaluate(x, y, batch_size=32, verbose=0)) > 1e-3


def test_batchnorm_stats_change_in_fit_not_in_evaluate_or_predict():
    x, y = make_data(200)
    x = x * 3.0 + 1.0  # far from the initial running statistics (mean 0, var 1)
    model = ef.Model(BNMLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.adamw(1e-3), "sparse_categorical_crossentropy")
    initial_mean = np.array(model.module.bn.mean[...])
    initial_var = np.array(model.module.bn.var[...])
    model.fit(x, y, batch_size=50, epochs=2, verbose=0)
    mean, var = np.array(model.module.bn.mean[...]), np.array(model.module.bn.var[...])
    assert np.abs(mean - initial_mean).max() > 1e-2
    assert np.abs(var - initial_var).max() > 1e-2

    model.evaluate(x, y, batch_size=50, verbose=0)
    model.predict(x, batch_size=50, verbose=0)
    np.testing.assert_array_equal(np.array(model.module.bn.mean[...]), mean)
    np.testing.assert_array_equal(np.array(model.module.bn.var[...]), var)


def test_batchnorm_predict_uses_running_statistics():
    # In eval mode a row's output does not depend on the other rows of its batch.
    x, y = make_data(64)
    model = ef.Model(BNMLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.adamw(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    together = model.predict(x[:16], batch_size=16, verbose=0)
    alone = np.concatenate([model.predict(x[i:i + 1], batch_size=16, verbose=0)
                            for i in range(3)])
    np.testing.assert_allclose(together[:3], alone, atol=1e-5)
    reference = nnx.clone(model.module)
    reference.eval()
    np.testing.assert_allclose(together, forward(reference, x[:16]), atol=1e-5)
