"""Every bad input raises a clear error whose message names the problem."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from conftest import MLP, make_data


@pytest.fixture
def data():
    return make_data(40)


def _model(compiled=True, **compile_kw):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    if compiled:
        kw = dict(optimizer="sgd", loss="sparse_categorical_crossentropy")
        kw.update(compile_kw)
        model.compile(**kw)
    return model


def test_fit_before_compile(data):
    x, y = data
    with pytest.raises(RuntimeError, match=r"compile"):
        _model(compiled=False).fit(x, y, verbose=0)


def test_evaluate_before_compile(data):
    x, y = data
    with pytest.raises(RuntimeError, match=r"compile"):
        _model(compiled=False).evaluate(x, y, verbose=0)


def test_optimizer_before_compile():
    with pytest.raises(RuntimeError, match=r"compile"):
        _model(compiled=False).optimizer  # noqa: B018


def test_unknown_optimizer_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"(?s)Unknown optimizer 'adamx'.*adamw.*sgd"):
        _model(optimizer="adamx")


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(ValueError,
                       match=r"(?s)Unknown loss 'crossentropy'.*sparse_categorical_crossentropy"):
        _model(loss="crossentropy")


def test_unknown_metric_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"(?s)Unknown metric 'acuracy'.*accuracy"):
        _model(metrics=["acuracy"])


def test_compile_needs_a_loss():
    with pytest.raises(ValueError, match=r"loss"):
        ef.Model(MLP(rngs=nnx.Rngs(0))).compile(optimizer="sgd")


def test_bad_optimizer_and_loss_types():
    with pytest.raises(TypeError, match=r"optimizer"):
        _model(optimizer=3)
    with pytest.raises(TypeError, match=r"loss"):
        _model(loss=3)


def test_duplicate_metric_names_are_named_apart_as_keras_does_not_refused():
    x = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    model = _model(metrics=["accuracy", "accuracy"], weighted_metrics=["accuracy"])
    logs = model.evaluate(x, np.zeros(8, np.int32), return_dict=True, verbose=0)
    assert list(logs) == ["loss", "accuracy", "accuracy_1", "weighted_accuracy"]


def test_model_of_something_that_is_not_a_module():
    with pytest.raises(TypeError, match=r"nnx.Module.*linen.Module"):
        ef.Model(lambda x: x)


def test_x_and_y_of_different_lengths(data):
    x, y = data
    with pytest.raises(ValueError, match=r"same number of rows.*40.*39"):
        _model().fit(x, y[:-1], verbose=0)
    with pytest.raises(ValueError, match=r"same number of rows"):
        _model().evaluate(x, y[:-1], verbose=0)


def test_sample_weight_of_the_wrong_length(data):
    x, y = data
    with pytest.raises(ValueError, match=r"sample_weight has 10 rows.*40"):
        _model().fit(x, y, sample_weight=np.ones(10), verbose=0)


def test_sparse_labels_that_cannot_match_the_output(data):
    x, _ = data
    y = np.zeros((40, 3), np.int32)  # the module outputs (N, 4)
    with pytest.raises(ValueError, match=r"(?s)sparse_categorical_crossentropy.*\(\d+, 3\).*"
                                         r"\(\d+, 4\)"):
        _model().fit(x, y, batch_size=8, verbose=0)
    with pytest.raises(ValueError, match=r"\(\d+, 3\).*\(\d+, 4\)"):
        _model().evaluate(x, y, batch_size=8, verbose=0)


def test_one_hot_labels_of_the_wrong_width(data):
    x, _ = data
    y = np.eye(3, dtype=np.float32)[np.zeros(40, int)]  # width 3, output width 4
    with pytest.raises(ValueError, match=r"(?s)categorical_crossentropy.*\(\d+, 3\).*\(\d+, 4\)"):
        _model(loss="categorical_crossentropy").fit(x, y, batch_size=8, verbose=0)


def test_input_that_does_not_fit_the_module(data):
    _, y = data
    x = np.zeros((40, 5), np.float32)  # the module takes 8 features
    # raised at once (not a hang or a silent broadcast), in the user's terms: both feature
    # sizes and the layer; JAX's own text follows as a "Details" line (easyfit.errors)
    with pytest.raises(ValueError, match=r"(?s)x has 5 features where the first layer "
                       r"\(`l1`, Linear\) expects 8.*Details: .*\(5,\).*\(8,\)"):
        _model().fit(x, y, batch_size=8, verbose=0)


def test_loss_that_reduces_over_the_batch(data):
    x, y = data
    model = _model(loss=lambda y_true, y_pred: (y_pred ** 2).mean())
    with pytest.raises(ValueError, match=r"one value per example"):
        model.fit(x, y, batch_size=8, verbose=0)


def test_string_inputs(data):
    x, y = data
    with pytest.raises(TypeError, match=r"`x` must hold numbers.*dtype <U"):
        _model().fit(np.array(["a"] * 40), y, verbose=0)
    with pytest.raises(TypeError, match=r"`y` must hold numbers"):
        _model().fit(x, np.array(["cat"] * 40), verbose=0)


def test_object_inputs(data):
    x, y = data
    with pytest.raises(TypeError, match=r"must hold numbers.*object"):
        _model().fit(x.astype(object), y, verbose=0)
    with pytest.raises(TypeError, match=r"must hold numbers.*object"):
        _model().predict(x.astype(object), verbose=0)


def test_empty_data(data):
    x, y = data
    with pytest.raises(ValueError, match=r"empty.*0 rows"):
        _model().fit(x[:0], y[:0], verbose=0)
    with pytest.raises(ValueError, match=r"empty"):
        _model().evaluate(x[:0], y[:0], verbose=0)
    with pytest.raises(ValueError, match=r"empty"):
        _model().predict(x[:0], verbose=0)
    with pytest.raises(ValueError, match=r"empty"):
        _model().fit([], verbose=0)


def test_validation_split_with_a_list_of_batches(data):
    x, y = data
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    with pytest.raises(ValueError, match=r"validation_split.*validation_data"):
        _model().fit(batches, validation_split=0.2, verbose=0)


def test_fit_without_targets(data):
    x, _ = data
    with pytest.raises(ValueError, match=r"targets.*`y`"):
        _model().fit(x, verbose=0)
    with pytest.raises(ValueError, match=r"fit needs training data"):
        _model().fit(verbose=0)


def test_y_with_an_iterable(data):
    x, y = data
    with pytest.raises(ValueError, match=r"`y` is only for array inputs"):
        _model().fit([(x, y)], y, verbose=0)


def test_batches_without_labels(data):
    x, _ = data
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        _model().fit([x, x], verbose=0)


def test_batches_growing_past_the_first(data):
    x, y = data
    with pytest.raises(ValueError, match=r"Batch 1 \(counting from 0\) of epoch 1 has 30 rows"):
        _model().fit([(x[:10], y[:10]), (x[10:], y[10:])], verbose=0)


def test_generator_without_steps_per_epoch(data):
    x, y = data

    def gen():
        while True:
            yield x[:8], y[:8]

    with pytest.raises(ValueError, match=r"steps_per_epoch"):
        _model().fit(gen(), epochs=2, verbose=0)


def test_unsupported_input_type():
    with pytest.raises(TypeError, match=r"Unsupported input type int"):
        _model().fit(3, verbose=0)


def test_optax_optimizer_without_visible_learning_rate(data):
    import optax
    x, y = data
    model = _model(optimizer=optax.sgd(0.1))
    history = model.fit(x, y, batch_size=8, verbose=0)
    assert "learning_rate" not in history.history
    with pytest.raises(AttributeError, match=r"inject_hyperparams"):
        model.optimizer.learning_rate  # noqa: B018
