"""Keras-compatible surface: evaluate / predict return forms, History, inputs, metrics,
losses, sample weights, summary."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef
from conftest import (BNMLP, MLP, DictMLP, Identity, assert_params_close, forward, grad_of,
                      make_data, mean_loss, params_of, train_programs)


def _model(module=None, optimizer=None, loss="sparse_categorical_crossentropy", **kw):
    model = ef.Model(module if module is not None else MLP(rngs=nnx.Rngs(0)))
    model.compile(optimizer or ef.optimizers.sgd(0.05), loss, **kw)
    return model


# -- evaluate / predict return forms -------------------------------------------------------

def test_evaluate_return_forms():
    x, y = make_data(50)
    module = MLP(rngs=nnx.Rngs(0))
    loss = mean_loss(module, x, y)
    accuracy = float(np.mean(np.argmax(forward(module, x), -1) == y))

    plain = _model()
    value = plain.evaluate(x, y, batch_size=16, verbose=0)
    assert isinstance(value, float)
    assert value == pytest.approx(loss, rel=1e-5)
    assert plain.evaluate(x, y, batch_size=16, verbose=0, return_dict=True) == \
        {"loss": pytest.approx(loss, rel=1e-5)}

    with_metrics = _model(metrics=["accuracy", ef.metrics.TopKAccuracy(k=2, name="top2")],
                          weighted_metrics=[ef.metrics.SparseCategoricalAccuracy(name="w_acc")])
    values = with_metrics.evaluate(x, y, batch_size=16, verbose=0)
    assert isinstance(values, list) and len(values) == 4
    assert all(isinstance(v, float) for v in values)
    assert values[0] == pytest.approx(loss, rel=1e-5)
    assert values[1] == pytest.approx(accuracy, abs=1e-7)
    result = with_metrics.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert list(result) == ["loss", "accuracy", "top2", "w_acc"]  # Keras order
    assert result["w_acc"] == pytest.approx(accuracy, abs=1e-7)
    assert list(result.values()) == pytest.approx(values, rel=1e-6)


def test_predict_returns_numpy_rows_in_order():
    x, _ = make_data(103)
    model = _model(steps_per_execution=3)
    expected = forward(MLP(rngs=nnx.Rngs(0)), x)
    for batch_size in (16, 103, 128):  # 103 rows: a padded last batch, one batch, one padded
        out = model.predict(x, batch_size=batch_size, verbose=0)
        assert isinstance(out, np.ndarray)
        assert out.shape == (103, 4)
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_predict_works_without_compile():
    x, _ = make_data(20)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    np.testing.assert_allclose(model.predict(x, batch_size=8, verbose=0),
                               forward(MLP(rngs=nnx.Rngs(0)), x), atol=1e-5)


def test_predict_on_an_iterable_of_inputs():
    x, y = make_data(50)
    model = _model()
    batches = [x[i:i + 16] for i in range(0, 50, 16)]  # the last has 2 rows
    out = model.predict(batches, verbose=0)
    np.testing.assert_allclose(out, forward(MLP(rngs=nnx.Rngs(0)), x), atol=1e-5)
    # (x, y) tuples: predict uses x only
    out = model.predict([(x[i:i + 16], y[i:i + 16]) for i in range(0, 50, 16)], verbose=0)
    assert out.shape == (50, 4)


# -- History ---------------------------------------------------------------------------------

def test_history_keys_and_lengths():
    x, y = make_data(120)
    model = _model(metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0,
                        validation_data=(x[:40], y[:40]))
    assert history is model.history
    assert isinstance(history, ef.History)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert all(len(v) == 3 for v in history.history.values())
    assert all(isinstance(v, float) for vs in history.history.values() for v in vs)
    assert history.epoch == [0, 1, 2]
    # the last val_* values are the final model's evaluation
    final = model.evaluate(x[:40], y[:40], batch_size=32, verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-5)
    assert history.history["val_accuracy"][-1] == pytest.approx(final["accuracy"], abs=1e-7)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_validation_split_holds_out_the_last_rows():
    x, y = make_data(100)
    model = _model(optimizer=ef.optimizers.sgd(0.0, momentum=0.0))  # weights fixed
    module = MLP(rngs=nnx.Rngs(0))
    history = model.fit(x, y, batch_size=16, epochs=1, validation_split=0.2, verbose=0)
    assert history.history["loss"][0] == pytest.approx(mean_loss(module, x[:80], y[:80]),
                                                        rel=1e-5)
    assert history.history["val_loss"][0] == pytest.approx(mean_loss(module, x[80:], y[80:]),
                                                            rel=1e-5)


def test_validation_freq():
    x, y = make_data(40)
    model = _model()
    history = model.fit(x, y, batch_size=20, epochs=4, verbose=0, validation_freq=2,
                        validation_data=(x, y))
    assert len(history.history["loss"]) == 4
    assert len(history.history["val_loss"]) == 2


def test_steps_per_epoch_with_arrays():
    x, y = make_data(100)
    model = _model()
    model.fit(x, y, batch_size=10, steps_per_epoch=2, epochs=3, verbose=0)
    assert int(model.trainer.state.step) == 6


def test_steps_per_epoch_with_validation_split():
    x, y = make_data(100)
    model = _model()
    model.fit(x, y, batch_size=10, steps_per_epoch=2, epochs=1, validation_split=0.2,
              verbose=0)
    assert int(model.trainer.state.step) == 2


def test_evaluate_with_steps():
    x, y = make_data(100)
    value = _model().evaluate(x, y, batch_size=10, steps=2, verbose=0)
    assert value == pytest.approx(mean_loss(MLP(rngs=nnx.Rngs(0)), x[:20], y[:20]), rel=1e-5)


def test_validation_data_as_a_list_of_batches():
    x, y = make_data(60)
    model = _model(optimizer=ef.optimizers.sgd(0.0, momentum=0.0))
    history = model.fit(x[:40], y[:40], batch_size=16, verbose=0,
                        validation_data=[(x[40:56], y[40:56]), (x[56:], y[56:])])
    assert history.history["val_loss"][0] == pytest.approx(
        mean_loss(MLP(rngs=nnx.Rngs(0)), x[40:], y[40:]), rel=1e-5)


def test_initial_epoch_runs_the_remaining_epochs():
    x, y = make_data(40)
    model = _model()
    history = model.fit(x, y, batch_size=20, epochs=5, initial_epoch=3, verbose=0)
    assert history.epoch == [3, 4]
    assert int(model.trainer.state.step) == 4


def test_verbose_2_prints_one_line_per_epoch(capsys):
    x, y = make_data(40)
    model = _model(metrics=["accuracy"])
    model.fit(x, y, batch_size=20, epochs=2, verbose=2)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("Epoch")]
    assert len(lines) == 2
    assert lines[0].startswith("Epoch 1/2") and "loss:" in lines[0] and "accuracy:" in lines[0]


def test_verbose_1_ends_each_epoch_with_a_line_of_every_value(capsys):
    x, y = make_data(40)
    model = _model(metrics=["accuracy"])
    model.fit(x, y, batch_size=10, epochs=2, verbose=1, validation_split=0.5)
    shown = [part.strip() for line in capsys.readouterr().out.splitlines()
             for part in line.split("\r")]
    ends = [line for line in shown if line.startswith("Epoch") and " - " in line]
    assert [line.split(" - ")[:2] for line in ends] == [["Epoch 1/2", "2/2 steps"],
                                                        ["Epoch 2/2", "2/2 steps"]]
    assert all("val_loss:" in line and "val_accuracy:" in line for line in ends)


@pytest.mark.parametrize("verbose", [0, 2])
def test_evaluate_and_predict_show_a_line_as_keras(capsys, verbose):
    x, y = make_data(40)
    model = _model(metrics=["accuracy"])
    model.fit(x, y, batch_size=20, epochs=1, verbose=0)
    model.evaluate(x, y, batch_size=20, verbose=verbose)
    model.predict(x, batch_size=20, verbose=verbose)
    lines = capsys.readouterr().out.splitlines()
    if verbose == 0:
        assert lines == []
    else:
        assert [line.split(" - ")[0] for line in lines] == ["Evaluate", "Predict"]
        assert "loss:" in lines[0] and "accuracy:" in lines[0]


def test_stop_training_from_a_callback():
    x, y = make_data(40)

    class StopAfterTwo(ef.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    history = _model().fit(x, y, batch_size=20, epochs=10, verbose=0,
                           callbacks=[StopAfterTwo()])
    assert history.epoch == [0, 1]


def test_callback_hooks_see_keras_logs():
    x, y = make_data(50)
    seen = {"batch_end": [], "epoch_end": []}

    class Recorder(ef.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen["batch_end"].append((batch, dict(logs)))

        def on_epoch_end(self, epoch, logs=None):
            seen["epoch_end"].append((epoch, dict(logs)))

    model = _model(metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[Recorder()])
    assert [b for b, _ in seen["batch_end"]] == [0, 1, 2, 3] * 2
    assert set(seen["batch_end"][0][1]) == {"loss", "accuracy", "learning_rate"}
    assert [e for e, _ in seen["epoch_end"]] == [0, 1]
    # the last batch's running logs are the epoch's logs
    assert seen["batch_end"][-1][1]["loss"] == pytest.approx(seen["epoch_end"][-1][1]["loss"])


def test_arrays_read_from_the_module_survive_the_next_fit():
    # the step donates its state: the module's own buffers must not be the donated ones
    x, y = make_data(40)
    module = MLP(rngs=nnx.Rngs(0))
    model = _model(module=module)
    model.fit(x, y, batch_size=16, verbose=0)
    kernel = module.l1.kernel[...]
    snapshot = np.array(kernel)
    model.fit(x, y, batch_size=16, verbose=0)
    np.testing.assert_array_equal(np.asarray(kernel), snapshot)
    assert not np.allclose(np.asarray(module.l1.kernel[...]), snapshot)


def test_edits_to_the_module_between_calls_are_seen():
    x, y = make_data(40)
    module = MLP(rngs=nnx.Rngs(0))
    model = _model(module=module)
    model.fit(x, y, batch_size=16, verbose=0)
    module.l2.kernel[...] = np.zeros((16, 4), np.float32)
    module.l2.bias[...] = np.zeros(4, np.float32)
    np.testing.assert_array_equal(model.predict(x, batch_size=16, verbose=0),
                                  np.zeros((40, 4), np.float32))
    assert model.evaluate(x, y, batch_size=16, verbose=0) == pytest.approx(np.log(4), rel=1e-6)
    # training continues from the edited weights: one SGD step from zeros in the last layer
    model.compile(ef.optimizers.sgd(0.1, momentum=0.0), "sparse_categorical_crossentropy")
    expected = [p - 0.1 * g for p, g in zip(params_of(module), grad_of(module, x, y))]
    model.fit(x, y, batch_size=40, verbose=0)
    assert_params_close(params_of(module), expected, atol=1e-6)


def test_predict_with_structured_outputs():
    class TwoHeads(nnx.Module):
        def __init__(self):
            self.body = nnx.Linear(8, 4, rngs=nnx.Rngs(0))

        def __call__(self, x):
            out = self.body(x)
            return {"logits": out, "score": out.sum(-1)}

    x, _ = make_data(13)
    module = TwoHeads()
    out = ef.Model(module).predict(x, batch_size=4, verbose=0)
    assert set(out) == {"logits", "score"}
    assert out["logits"].shape == (13, 4) and out["score"].shape == (13,)
    np.testing.assert_allclose(out["score"], forward(module.body, x).sum(-1), atol=1e-5)


class _HookLog(ef.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def on_test_begin(self, logs=None):
        self.calls.append(("test_begin",))

    def on_test_batch_end(self, batch, logs=None):
        self.calls.append(("test_batch_end", batch))

    def on_test_end(self, logs=None):
        self.calls.append(("test_end", dict(logs or {})))

    def on_predict_batch_end(self, batch, logs=None):
        self.calls.append(("predict_batch_end", batch))

    def on_predict_end(self, logs=None):
        self.calls.append(("predict_end",))


def test_evaluate_and_predict_call_their_hooks():
    x, y = make_data(50)
    model = _model(metrics=["accuracy"])
    log = _HookLog()
    result = model.evaluate(x, y, batch_size=16, verbose=0, callbacks=[log], return_dict=True)
    assert [c[0] for c in log.calls] == ["test_begin"] + ["test_batch_end"] * 4 + ["test_end"]
    assert [c[1] for c in log.calls if c[0] == "test_batch_end"] == [0, 1, 2, 3]
    assert log.calls[-1][1] == pytest.approx(result)
    log.calls.clear()
    model.predict(x, batch_size=16, verbose=0, callbacks=[log])
    assert log.calls == [("predict_batch_end", i) for i in range(4)] + [("predict_end",)]


def test_fit_validation_calls_the_test_hooks():
    x, y = make_data(50)
    log = _HookLog()
    _model().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[log],
                 validation_data=(x[:32], y[:32]))
    assert [c[0] for c in log.calls].count("test_begin") == 2
    assert [c[0] for c in log.calls].count("test_end") == 2


# -- inputs ------------------------------------------------------------------------------------

def _dict_data(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 3)).astype(np.float32)
    b = rng.normal(size=(n, 5)).astype(np.float32)
    y = (np.argmax(np.concatenate([a, b[:, :1]], -1), -1)).astype(np.int32)
    return {"a": a, "b": b}, y


def test_dict_inputs():
    x, y = _dict_data(150)
    model = _model(module=DictMLP(rngs=nnx.Rngs(0)), optimizer=ef.optimizers.sgd(0.1),
                   metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]
    out = model.predict(x, batch_size=32, verbose=0)
    assert out.shape == (150, 4)
    np.testing.assert_allclose(out, forward(model.module, x), atol=1e-5)
    loss = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(mean_loss(model.module, x, y), rel=1e-5)


def test_list_of_batches_with_a_smaller_last_batch():
    x, y = make_data(70)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 70, 32)]  # 32, 32, 6
    from_list = _model()
    from_arrays = _model()
    history = from_list.fit(batches, epochs=2, verbose=0)
    from_arrays.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(from_list.trainer.state.step) == 6
    assert_params_close(params_of(from_list.module), params_of(from_arrays.module), atol=1e-6)
    assert from_list.evaluate(batches, verbose=0) == pytest.approx(
        from_arrays.evaluate(x, y, batch_size=32, verbose=0), rel=1e-6)
    assert from_list.trainer.steps.train.cache_size() == train_programs(from_list)


def test_list_of_batches_with_sample_weights():
    x, y = make_data(64)
    w = np.r_[np.ones(32), np.zeros(32)].astype(np.float32)
    model = _model()
    value = model.evaluate([(x[:32], y[:32], w[:32]), (x[32:], y[32:], w[32:])], verbose=0)
    assert value == pytest.approx(mean_loss(MLP(rngs=nnx.Rngs(0)), x[:32], y[:32]), rel=1e-5)


def _generator_fit(make_iterator):
    x, y = make_data(64)
    model = _model()
    history = model.fit(make_iterator(x, y), epochs=3, steps_per_epoch=4, verbose=0)
    assert len(history.history["loss"]) == 3
    assert int(model.trainer.state.step) == 12
    # the iterator continues across epochs: it equals 3 in-order epochs over the arrays
    reference = _model()
    reference.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-6)


def test_endless_iterator_with_steps_per_epoch():
    _generator_fit(lambda x, y: itertools.cycle(
        [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]))


def test_generator_with_steps_per_epoch():
    def batches(x, y):
        i = 0
        while True:
            start = (i % 4) * 16
            yield x[start:start + 16], y[start:start + 16]
            i += 1

    _generator_fit(batches)


def test_jax_array_inputs():
    x, y = make_data(40)
    model = _model()
    model.fit(jax.numpy.asarray(x), jax.numpy.asarray(y), batch_size=16, verbose=0)
    assert model.predict(jax.numpy.asarray(x), batch_size=16, verbose=0).shape == (40, 4)


# -- sample / class weights -------------------------------------------------------------------

def test_zero_sample_weights_mean_not_in_the_data():
    x, y = make_data(90)
    w = np.tile([1.0, 0.0], 45).astype(np.float32)
    model = _model(weighted_metrics=["accuracy"])
    weighted = model.evaluate(x, y, batch_size=16, sample_weight=w, verbose=0,
                              return_dict=True)
    half = model.evaluate(x[::2], y[::2], batch_size=16, verbose=0, return_dict=True)
    assert weighted["loss"] == pytest.approx(half["loss"], rel=1e-5)
    assert weighted["accuracy"] == pytest.approx(half["accuracy"], abs=1e-6)


def test_training_with_zero_weights_equals_training_on_the_rest():
    x, y = make_data(64)
    w = np.r_[np.ones(24), np.zeros(40)].astype(np.float32)
    weighted = _model()
    weighted.fit(x, y, sample_weight=w, batch_size=64, epochs=2, shuffle=False, verbose=0)
    subset = _model()
    subset.fit(x[:24], y[:24], batch_size=64, epochs=2, shuffle=False, verbose=0)
    assert_params_close(params_of(weighted.module), params_of(subset.module), atol=1e-6)


def test_sample_weights_weight_the_loss():
    x, y = make_data(30)
    w = np.random.default_rng(0).uniform(0.1, 2.0, 30).astype(np.float32)
    module = MLP(rngs=nnx.Rngs(0))
    per_example = np.asarray(optax.softmax_cross_entropy_with_integer_labels(
        forward(module, x), y))
    expected = float(np.sum(w * per_example) / np.sum(w))
    assert _model().evaluate(x, y, sample_weight=w, batch_size=8, verbose=0) == \
        pytest.approx(expected, rel=1e-5)


def test_class_weight_equals_sample_weight():
    x, y = make_data(64)
    class_weight = {0: 2.0, 1: 0.5, 2: 1.0, 3: 0.0}
    by_class = _model()
    by_class.fit(x, y, class_weight=class_weight, batch_size=32, shuffle=False, verbose=0)
    by_sample = _model()
    by_sample.fit(x, y, sample_weight=np.array([class_weight[c] for c in y], np.float32),
                  batch_size=32, shuffle=False, verbose=0)
    assert_params_close(params_of(by_class.module), params_of(by_sample.module), atol=1e-6)


def test_metrics_ignore_sample_weights_weighted_metrics_use_them():
    x, y = make_data(90)
    w = np.tile([1.0, 0.0], 45).astype(np.float32)
    model = _model(metrics=["accuracy"],
                   weighted_metrics=[ef.metrics.SparseCategoricalAccuracy(name="w_acc")])
    result = model.evaluate(x, y, batch_size=16, sample_weight=w, verbose=0, return_dict=True)
    predicted = forward(MLP(rngs=nnx.Rngs(0)), x).argmax(-1)
    assert result["accuracy"] == pytest.approx(np.mean(predicted == y), abs=1e-6)
    assert result["w_acc"] == pytest.approx(np.mean(predicted[::2] == y[::2]), abs=1e-6)
    assert result["accuracy"] != pytest.approx(result["w_acc"])


def test_class_weight_does_not_weight_the_validation_split():
    x, y = make_data(100)
    model = _model(optimizer=ef.optimizers.sgd(0.0, momentum=0.0))
    history = model.fit(x, y, batch_size=10, validation_split=0.2, verbose=0,
                        class_weight={0: 0.0, 1: 3.0, 2: 1.0, 3: 1.0})
    assert history.history["val_loss"][0] == pytest.approx(
        mean_loss(MLP(rngs=nnx.Rngs(0)), x[80:], y[80:]), rel=1e-5)


# -- metrics and losses on known predictions ----------------------------------------------------

def _evaluate_on(predictions, labels, loss, metrics, batch_size=7):
    """Evaluates with the Identity module: the predictions are the input."""
    model = ef.Model(Identity())
    model.compile("sgd", loss, metrics=metrics)
    return model.evaluate(predictions, labels, batch_size=batch_size, verbose=0,
                          return_dict=True)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_sparse_metrics_and_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 6)).astype(np.float32)
    labels = rng.integers(0, 6, 30).astype(np.int32)
    result = _evaluate_on(logits, labels, "sparse_categorical_crossentropy",
                          ["accuracy", "top_k_accuracy",
                           ef.metrics.TopKAccuracy(k=2, name="top2")])
    expected_loss = -np.mean(_log_softmax(logits)[np.arange(30), labels])
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))
    top = np.argsort(-logits, -1)
    assert result["top_k_accuracy"] == pytest.approx(
        np.mean([labels[i] in top[i, :5] for i in range(30)]))
    assert result["top2"] == pytest.approx(np.mean([labels[i] in top[i, :2] for i in range(30)]))
    assert result["top2"] < result["top_k_accuracy"]  # the data distinguishes k


def test_top_k_with_k_not_below_the_classes_is_one_with_a_warning_as_keras():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"k=5 is not below the 4 classes.*k < 4"):
        result = _evaluate_on(logits, rng.integers(0, 4, 12).astype(np.int32),
                              "sparse_categorical_crossentropy", ["top_k_accuracy"])
    assert result["top_k_accuracy"] == 1.0


def test_sparse_crossentropy_matches_optax_and_flags_labels_out_of_range():
    """The label's logit is picked by comparison, not gathered: values and gradients are
    optax's, masked (-inf) logits included; a label outside [0, classes) gives NaN."""
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(40, 7)) * 4, jnp.float32).at[:, 2].set(-jnp.inf)
    labels = jnp.asarray(rng.choice([0, 1, 3, 4, 5, 6], 40), jnp.int32)
    loss = ef.losses.SparseCategoricalCrossentropy()
    reference = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels)
    np.testing.assert_allclose(loss(labels, logits), reference(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda z: loss(labels, z).sum())(logits),
                               jax.grad(lambda z: reference(z).sum())(logits), atol=1e-7)
    out = loss(jnp.array([7, -1, 3]), jnp.zeros((3, 7)))
    assert np.isnan(out[:2]).all() and out[2] == pytest.approx(np.log(7))


def test_categorical_metrics_and_loss_with_one_hot_labels():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 30)
    one_hot = np.eye(5, dtype=np.float32)[labels]
    result = _evaluate_on(logits, one_hot, "categorical_crossentropy",
                          ["accuracy", "categorical_accuracy"])
    assert result["loss"] == pytest.approx(-np.mean(np.sum(one_hot * _log_softmax(logits), -1)),
                                           rel=1e-5)
    acc = np.mean(logits.argmax(-1) == labels)
    assert 0 < acc < 1
    assert result["accuracy"] == pytest.approx(acc)
    assert result["categorical_accuracy"] == pytest.approx(acc)


def test_binary_metrics_and_loss():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(40, 1)).astype(np.float32)
    labels = rng.integers(0, 2, 40).astype(np.float32)
    result = _evaluate_on(logits, labels, "binary_crossentropy",
                          ["accuracy", "precision", "recall"])
    z = logits[:, 0]
    p = 1 / (1 + np.exp(-z))
    bce = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert result["loss"] == pytest.approx(bce, rel=1e-5)
    predicted = z > 0
    assert result["accuracy"] == pytest.approx(np.mean(predicted == (labels > 0.5)))
    tp = np.sum(predicted & (labels > 0.5))
    fp = np.sum(predicted & (labels < 0.5))
    fn = np.sum(~predicted & (labels > 0.5))
    assert result["precision"] == pytest.approx(tp / (tp + fp))
    assert result["recall"] == pytest.approx(tp / (tp + fn))
    assert result["precision"] != pytest.approx(result["recall"])


def test_binary_metrics_on_probabilities():
    probs = np.array([[0.9], [0.8], [0.3], [0.6], [0.1], [0.4]], np.float32)
    labels = np.array([1, 0, 1, 1, 0, 0], np.float32)
    result = _evaluate_on(probs, labels, ef.losses.BinaryCrossentropy(from_logits=False),
                          ["accuracy", "precision", "recall"], batch_size=4)
    # predicted positive: rows 0, 1, 3 -> tp 2 (0, 3), fp 1 (1), fn 1 (2)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    p = probs[:, 0]
    bce = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert result["loss"] == pytest.approx(bce, rel=1e-5)


def test_regression_metrics_and_losses():
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(25, 3)).astype(np.float32)
    target = rng.normal(size=(25, 3)).astype(np.float32)
    result = _evaluate_on(pred, target, "mse", ["mae", "mse"])
    assert result["loss"] == pytest.approx(np.mean((pred - target) ** 2), rel=1e-5)
    assert result["mse"] == pytest.approx(np.mean((pred - target) ** 2), rel=1e-5)
    assert result["mae"] == pytest.approx(np.mean(np.abs(pred - target)), rel=1e-5)
    result = _evaluate_on(pred, target, "mae", [])
    assert result["loss"] == pytest.approx(np.mean(np.abs(pred - target)), rel=1e-5)


def test_callable_loss_and_metric():
    rng = np.random.default_rng(4)
    pred = rng.normal(size=(20, 2)).astype(np.float32)
    target = rng.normal(size=(20, 2)).astype(np.float32)

    def cube(y_true, y_pred):
        return ((y_pred - y_true) ** 3).sum(-1)

    def max_error(y_true, y_pred):
        return abs(y_pred - y_true).max(-1)

    result = _evaluate_on(pred, target, cube, [max_error])
    assert result["loss"] == pytest.approx(np.mean(((pred - target) ** 3).sum(-1)), rel=1e-4)
    assert result["max_error"] == pytest.approx(np.mean(np.abs(pred - target).max(-1)),
                                                rel=1e-5)


def test_optax_transformation_as_optimizer():
    x, y = make_data(64)
    module = MLP(rngs=nnx.Rngs(0))
    from conftest import hand_fit
    reference = hand_fit(nnx.clone(module), optax.adam(1e-2), x, y, 32, 2)
    model = _model(module=module, optimizer=optax.adam(1e-2))
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), reference, atol=1e-6)


def test_get_and_set_weights_round_trip():
    x, y = make_data(64)
    trained = _model(module=BNMLP(rngs=nnx.Rngs(0)))
    trained.fit(x, y, batch_size=16, epochs=2, verbose=0)
    weights = trained.get_weights()
    assert all(isinstance(w, np.ndarray) for w in weights)
    # parameters and batch statistics (2 x Linear, BatchNorm scale/bias/mean/var), no RNG state
    assert sorted(w.shape for w in weights) == sorted(
        [(8, 32), (32,), (32,), (32,), (32,), (32,), (32, 4), (4,)])
    fresh = _model(module=BNMLP(rngs=nnx.Rngs(1)))
    assert not np.allclose(fresh.predict(x, batch_size=16, verbose=0),
                           trained.predict(x, batch_size=16, verbose=0), atol=1e-3)
    fresh.set_weights(weights)
    np.testing.assert_allclose(fresh.predict(x, batch_size=16, verbose=0),
                               trained.predict(x, batch_size=16, verbose=0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(fresh.module.bn.mean[...]),
                               np.asarray(trained.module.bn.mean[...]))
    with pytest.raises(ValueError, match=r"set_weights.*\(3, 3\)"):
        fresh.set_weights([np.zeros((3, 3))] + weights[1:])
    with pytest.raises(ValueError, match=r"set_weights got 1 arrays"):
        fresh.set_weights(weights[:1])


def test_set_weights_between_fits_restarts_from_them():
    x, y = make_data(32)
    model = _model(optimizer=ef.optimizers.sgd(0.1, momentum=0.0))
    initial = model.get_weights()
    start = MLP(rngs=nnx.Rngs(0))
    expected = [p - 0.1 * g for p, g in zip(params_of(start), grad_of(start, x, y))]
    model.fit(x, y, batch_size=32, verbose=0)
    model.set_weights(initial)  # no recompile: the live training state takes them
    model.fit(x, y, batch_size=32, verbose=0)
    assert_params_close(params_of(model.module), expected, atol=1e-6)


# -- summary ----------------------------------------------------------------------------------

def test_summary_lists_layers_and_parameter_count():
    model = ef.Model(MLP(din=8, hidden=16, dout=4, rngs=nnx.Rngs(0)))
    printed = []
    text = model.summary(print_fn=printed.append)
    assert printed == [text]
    total = 8 * 16 + 16 + 16 * 4 + 4
    assert f"{total:,}" in text
    for line in ("l1", "l2"):
        assert any(row.split()[:2] == [line, "Linear"] for row in text.splitlines())
    assert "kernel(8, 16)" in text and "kernel(16, 4)" in text
    assert "MLP" in text


def test_summary_after_training_and_of_a_linen_module(digits):
    from conftest import LinenNet
    model = ef.Model(LinenNet(hidden=32, dout=10), sample_input=digits[0][:1])
    text = model.summary(print_fn=None)
    total = 64 * 32 + 32 + 32 * 2 + 32 * 10 + 10
    assert f"{total:,}" in text
    assert "Dense_0" in text and "BatchNorm_0" in text and "Dense_1" in text
