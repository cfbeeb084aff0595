"""Linen modules go through the same path as NNX ones (via flax.nnx.bridge)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from conftest import BNMLP, LinenNet

EPOCHS = 10
ACCURACY_BAR = 0.93


def _train(module, digits, **model_kw):
    x_train, y_train, x_test, y_test = digits
    model = ef.Model(module, **model_kw)
    model.compile(ef.optimizers.adamw(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], seed=0)
    history = model.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, verbose=0)
    result = model.evaluate(x_test, y_test, batch_size=64, verbose=0, return_dict=True)
    return model, history, result


@pytest.mark.parametrize("with_sample_input", [False, True])
def test_linen_trains_like_its_nnx_twin(digits, with_sample_input):
    kw = {"sample_input": digits[0][:1]} if with_sample_input else {}
    linen_model, linen_history, linen_result = _train(LinenNet(hidden=32, dout=10), digits,
                                                      **kw)
    assert linen_result["accuracy"] >= ACCURACY_BAR, linen_result
    assert linen_history.history["loss"][-1] < linen_history.history["loss"][0] / 3
    # predict gives logits for every row, in eval mode (deterministic)
    x_test = digits[2]
    logits = linen_model.predict(x_test, batch_size=64, verbose=0)
    assert logits.shape == (len(x_test), 10)
    np.testing.assert_array_equal(logits, linen_model.predict(x_test, batch_size=64,
                                                              verbose=0))
    np.testing.assert_allclose(np.mean(np.argmax(logits, -1) == digits[3]),
                               linen_result["accuracy"], atol=1e-6)


def test_nnx_twin_reaches_the_same_bar(digits):
    _, _, result = _train(BNMLP(din=64, hidden=32, dout=10, rate=0.1, rngs=nnx.Rngs(0)), digits)
    assert result["accuracy"] >= ACCURACY_BAR, result


def _batch_stats(model):
    stats = nnx.state(model.module, nnx.BatchStat, graph=True)
    return [np.array(leaf) for leaf in jax.tree.leaves(stats)]


def test_linen_dropout_and_batchnorm_follow_the_mode(digits):
    x, y = digits[0][:256], digits[1][:256]
    model = ef.Model(LinenNet(hidden=32, dout=10, rate=0.5), sample_input=x[:1])
    model.compile(ef.optimizers.sgd(0.0, momentum=0.0), "sparse_categorical_crossentropy")
    stats_before = _batch_stats(model)
    assert stats_before, "the Linen BatchNorm statistics should be NNX BatchStat variables"
    train_loss = model.fit(x, y, batch_size=64, epochs=1, shuffle=False,
                           verbose=0).history["loss"][0]
    stats_after_fit = _batch_stats(model)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(stats_before, stats_after_fit))
    # weights are frozen (lr 0): the eval-mode loss differs from the train-mode one
    # (dropout 0.5 and batch statistics in train mode; no dropout, running stats in eval)
    eval_loss = model.evaluate(x, y, batch_size=64, verbose=0)
    assert abs(train_loss - eval_loss) > 1e-3
    model.predict(x, batch_size=64, verbose=0)
    for a, b in zip(stats_after_fit, _batch_stats(model)):
        np.testing.assert_array_equal(a, b)


def test_linen_module_needs_input_before_it_exists(digits):
    model = ef.Model(LinenNet())
    with pytest.raises(RuntimeError, match="sample_input"):
        model.module  # noqa: B018
    # predict initialises it from the first batch
    out = model.predict(digits[0][:5], batch_size=5, verbose=0)
    assert out.shape == (5, 10)
    assert sum(p.size for p in jax.tree.leaves(nnx.state(model.module, nnx.Param, graph=True))) \
        == 64 * 32 + 32 + 32 * 2 + 32 * 10 + 10


def test_linen_dropout_follows_the_compile_seed(digits):
    x, y = digits[0][:128], digits[1][:128]
    losses = []
    for seed in (1, 1, 2):
        model = ef.Model(LinenNet(hidden=32, dout=10, rate=0.5), sample_input=x[:1])
        model.compile(ef.optimizers.sgd(0.0, momentum=0.0), "sparse_categorical_crossentropy",
                      seed=seed)
        losses.append(model.fit(x, y, batch_size=64, shuffle=False,
                                verbose=0).history["loss"][0])
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]
