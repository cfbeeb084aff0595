"""Models with several outputs: a loss, a loss weight and metrics per output, Keras 3's log
names, the total as the weighted sum, sample weights, predict's structure, and errors."""

from __future__ import annotations

import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef

# ---------------------------------------------------------------------------------------
# two heads on one body: "a" regresses a number, "b" classifies into 3 classes
# ---------------------------------------------------------------------------------------


class TwoHeads(nnx.Module):
    """8 -> 16 body; head ``a``: one number per row, head ``b``: 3 logits. Returns a dict
    (``tuple_out=True``: the tuple ``(a, b)``)."""

    def __init__(self, seed: int = 0, tuple_out: bool = False):
        rngs = nnx.Rngs(seed)
        self.body = nnx.Linear(8, 16, rngs=rngs)
        self.head_a = nnx.Linear(16, 1, rngs=rngs)
        self.head_b = nnx.Linear(16, 3, rngs=rngs)
        self.tuple_out = tuple_out

    def __call__(self, x):
        h = nnx.relu(self.body(x))
        a, b = self.head_a(h)[:, 0], self.head_b(h)
        return (a, b) if self.tuple_out else {"a": a, "b": b}


class OneHead(nnx.Module):
    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.body = nnx.Linear(8, 16, rngs=rngs)
        self.head_b = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.head_b(nnx.relu(self.body(x)))


def data(n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    ya = (x[:, :4].sum(1) * 0.5).astype(np.float32)
    yb = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)).astype(np.int32)
    return x, ya, yb


def dict_model(**compile_kw) -> ef.Model:
    model = ef.Model(TwoHeads())
    kw = dict(loss={"a": "mse", "b": "sparse_categorical_crossentropy"},
              loss_weights={"a": 1.0, "b": 0.5}, metrics={"b": ["accuracy"]})
    kw.update(compile_kw)
    model.compile(ef.optimizers.sgd(0.05, momentum=0.0), **kw)
    return model


def hand_losses(outputs: dict, ya, yb, weight=None) -> tuple[float, float]:
    """Weighted means of each output's loss, in numpy: MSE for ``a``, cross-entropy of the
    logits for ``b``."""
    weight = np.ones(len(ya)) if weight is None else np.asarray(weight, np.float64)
    se = (outputs["a"].astype(np.float64) - ya) ** 2
    logits = outputs["b"].astype(np.float64)
    ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(len(yb)), yb]
    return float((weight * se).sum() / weight.sum()), float((weight * ce).sum() / weight.sum())


# ---------------------------------------------------------------------------------------
# dict outputs
# ---------------------------------------------------------------------------------------


def test_dict_outputs_names_total_and_training():
    x, ya, yb = data()
    model = dict_model()
    before = model.evaluate(x, {"a": ya, "b": yb}, batch_size=32, verbose=0, return_dict=True)
    assert list(before) == ["loss", "a_loss", "b_loss", "b_accuracy"]
    # the total is the weighted sum of the per-output losses, each as numpy computes it
    # (50 rows in batches of 32: the padding rows count nowhere)
    a_loss, b_loss = hand_losses(model.predict(x, verbose=0), ya, yb)
    assert before["a_loss"] == pytest.approx(a_loss, rel=1e-5)
    assert before["b_loss"] == pytest.approx(b_loss, rel=1e-5)
    assert before["loss"] == pytest.approx(a_loss + 0.5 * b_loss, rel=1e-5)

    history = model.fit(x, {"a": ya, "b": yb}, batch_size=10, epochs=8, verbose=0,
                        shuffle=False).history
    assert list(history) == ["loss", "a_loss", "b_loss", "b_accuracy", "learning_rate"]
    for loss, a, b in zip(history["loss"], history["a_loss"], history["b_loss"]):
        assert loss == pytest.approx(a + 0.5 * b, rel=1e-5)
    after = model.evaluate(x, {"a": ya, "b": yb}, verbose=0, return_dict=True)
    assert after["a_loss"] < before["a_loss"] and after["b_loss"] < before["b_loss"]
    # evaluate's list follows the same order: loss, per-output losses, metrics
    assert model.evaluate(x, {"a": ya, "b": yb}, verbose=0) == pytest.approx(list(after.values()))


def test_one_sgd_step_follows_the_weighted_total():
    """The gradient is the weighted total's: one SGD step on the whole data equals a hand
    step on ``a_loss + 0.5 * b_loss`` in JAX."""
    import jax
    import jax.numpy as jnp

    x, ya, yb = data(n=20)
    model = dict_model()
    graphdef, params, rest = nnx.split(TwoHeads(), nnx.Param, ...)

    def total(p):
        out = nnx.merge(graphdef, p, rest)(jnp.asarray(x))
        ce = optax.softmax_cross_entropy_with_integer_labels(out["b"], jnp.asarray(yb))
        return jnp.mean((out["a"] - ya) ** 2) + 0.5 * jnp.mean(ce)

    grads = jax.grad(total)(params)
    expected = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    model.fit(x, {"a": ya, "b": yb}, batch_size=20, epochs=1, verbose=0)
    got = nnx.state(model.module, nnx.Param)
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-6)


def test_sample_weight_weights_every_output_and_validation_names():
    x, ya, yb = data()
    weight = np.random.default_rng(1).uniform(0.0, 2.0, len(x)).astype(np.float32)
    model = dict_model(weighted_metrics={"a": ["mae"]})
    logs = model.evaluate(x, {"a": ya, "b": yb}, sample_weight=weight, verbose=0,
                          return_dict=True)
    assert list(logs) == ["loss", "a_loss", "b_loss", "b_accuracy", "a_mae"]
    outputs = model.predict(x, verbose=0)
    a_loss, b_loss = hand_losses(outputs, ya, yb, weight)
    assert logs["a_loss"] == pytest.approx(a_loss, rel=1e-5)
    assert logs["b_loss"] == pytest.approx(b_loss, rel=1e-5)
    assert logs["loss"] == pytest.approx(a_loss + 0.5 * b_loss, rel=1e-5)
    mae = (weight * np.abs(outputs["a"] - ya)).sum() / weight.sum()
    assert logs["a_mae"] == pytest.approx(mae, rel=1e-5)

    history = model.fit(x, {"a": ya, "b": yb}, sample_weight=weight, epochs=2, verbose=0,
                        validation_split=0.2).history
    assert [k for k in history if k.startswith("val_")] == [
        "val_loss", "val_a_loss", "val_b_loss", "val_b_accuracy", "val_a_mae"]


def test_one_loss_for_every_output_and_a_flat_metric_list():
    x, ya, yb = data()
    model = ef.Model(TwoHeads())
    model.compile("adam", loss="mse", metrics=["mae"])
    yb_onehot = np.eye(3, dtype=np.float32)[yb]
    # evaluate before any fit: the outputs are named at the first trace
    logs = model.evaluate(x, {"a": ya, "b": yb_onehot}, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "a_loss", "b_loss", "a_mae", "b_mae"]
    assert logs["loss"] == pytest.approx(logs["a_loss"] + logs["b_loss"], rel=1e-5)


def test_validation_data_and_iterables_with_dict_targets():
    x, ya, yb = data()
    model = dict_model()
    history = model.fit(x[:40], {"a": ya[:40], "b": yb[:40]}, epochs=1, verbose=0,
                        validation_data=(x[40:], {"a": ya[40:], "b": yb[40:]})).history
    assert "val_a_loss" in history and "val_b_accuracy" in history
    batches = [(x[i:i + 16], {"a": ya[i:i + 16], "b": yb[i:i + 16]}) for i in range(0, 50, 16)]
    logs = model.evaluate(batches, verbose=0, return_dict=True)
    assert logs == pytest.approx(model.evaluate(x, {"a": ya, "b": yb}, verbose=0,
                                                return_dict=True), rel=1e-5)
    model.fit(batches, epochs=1, verbose=0)


def test_predict_returns_the_outputs_structure():
    x, _, _ = data()
    out = ef.Model(TwoHeads()).predict(x, batch_size=16, verbose=0)
    assert isinstance(out, dict) and sorted(out) == ["a", "b"]
    assert isinstance(out["a"], np.ndarray) and out["a"].shape == (50,)
    assert out["b"].shape == (50, 3)
    out = ef.Model(TwoHeads(tuple_out=True)).predict(x, batch_size=16, verbose=0)
    assert isinstance(out, tuple) and [o.shape for o in out] == [(50,), (50, 3)]


# ---------------------------------------------------------------------------------------
# tuple outputs
# ---------------------------------------------------------------------------------------


def test_tuple_outputs_with_list_losses():
    x, ya, yb = data()
    model = ef.Model(TwoHeads(tuple_out=True))
    model.compile(ef.optimizers.sgd(0.05, momentum=0.0),
                  loss=["mse", "sparse_categorical_crossentropy"], loss_weights=[2.0, 1.0],
                  metrics=[None, ["accuracy"]])
    history = model.fit(x, (ya, yb), epochs=3, verbose=0).history
    assert list(history) == ["loss", "output_1_loss", "output_2_loss", "output_2_accuracy",
                             "learning_rate"]
    logs = model.evaluate(x, (ya, yb), verbose=0, return_dict=True)
    a_loss, b_loss = hand_losses(dict(zip("ab", model.predict(x, verbose=0))), ya, yb)
    assert logs["loss"] == pytest.approx(2.0 * a_loss + b_loss, rel=1e-5)
    # targets of tuple outputs may also be a dict keyed by output name
    assert model.evaluate(x, {"output_1": ya, "output_2": yb}, verbose=0,
                          return_dict=True) == pytest.approx(logs)


def test_a_loss_for_one_output_only():
    """As Keras: an output without a loss is not trained; with one loss there is no
    per-output loss in the logs, and y needs no target for that output."""
    x, ya, yb = data()
    model = dict_model(loss={"b": "sparse_categorical_crossentropy"}, loss_weights=None)
    logs = model.evaluate(x, {"b": yb}, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "b_accuracy"]
    assert logs["loss"] == pytest.approx(hand_losses(model.predict(x, verbose=0), ya, yb)[1],
                                         rel=1e-5)


# ---------------------------------------------------------------------------------------
# single output: unchanged; loss_weights as a float
# ---------------------------------------------------------------------------------------


def test_single_output_logs_are_unchanged_and_a_float_weight_scales_the_loss():
    x, _, yb = data()
    model = ef.Model(OneHead())
    model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, yb, epochs=1, verbose=0, validation_split=0.2).history
    assert list(history) == ["loss", "accuracy", "learning_rate", "val_loss", "val_accuracy"]
    plain = model.evaluate(x, yb, verbose=0, return_dict=True)
    model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"], loss_weights=0.2)
    weighted = model.evaluate(x, yb, verbose=0, return_dict=True)
    assert list(weighted) == ["loss", "accuracy"]
    assert weighted["loss"] == pytest.approx(0.2 * plain["loss"], rel=1e-5)


# ---------------------------------------------------------------------------------------
# errors, in user terms
# ---------------------------------------------------------------------------------------


def test_loss_dict_keys_that_match_no_output():
    x, ya, yb = data()
    model = dict_model(loss={"a": "mse", "c": "mae"}, loss_weights=None)
    with pytest.raises(ValueError, match=r"loss has keys \['a', 'c'\].*outputs are \['a', "
                                         r"'b'\].*\['c'\]"):
        model.fit(x, {"a": ya, "b": yb}, epochs=1, verbose=0)


def test_loss_list_of_the_wrong_length():
    x, ya, yb = data()
    model = ef.Model(TwoHeads(tuple_out=True))
    model.compile("sgd", loss=["mse", "mse", "mse"])
    with pytest.raises(ValueError, match="loss has 3 entries, but the module returns 2 outputs "
                                         r"\(output_1, output_2\)"):
        model.fit(x, (ya, yb), epochs=1, verbose=0)
    model = dict_model(loss=["mse", "sparse_categorical_crossentropy"], loss_weights=None,
                       metrics=None)
    with pytest.raises(ValueError, match="dict of outputs .* give loss as a dict"):
        model.fit(x, {"a": ya, "b": yb}, epochs=1, verbose=0)


def test_targets_that_do_not_match_the_outputs():
    x, ya, yb = data()
    model = dict_model()
    with pytest.raises(ValueError, match=r"y has keys \['a', 'c'\], but the module's outputs "
                                         r"are \['a', 'b'\]"):
        model.fit(x, {"a": ya, "c": yb}, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"returns 2 outputs \(a, b\), but y is a single "
                                         "array: pass y as a dict keyed by output name"):
        model.evaluate(x, yb, verbose=0)
    with pytest.raises(ValueError, match="y is a tuple: pass y as a dict keyed by output name"):
        model.evaluate(x, (ya, yb), verbose=0)
    tuple_model = ef.Model(TwoHeads(tuple_out=True))
    tuple_model.compile("sgd", loss="mse")
    with pytest.raises(ValueError, match="y has 3 parts, but the module returns 2 outputs"):
        tuple_model.evaluate(x, (ya, ya, ya), verbose=0)


def test_per_output_losses_for_a_single_output_module():
    x, _, yb = data()
    model = ef.Model(OneHead())
    model.compile("sgd", loss={"b": "sparse_categorical_crossentropy"})
    with pytest.raises(ValueError, match="losses per output .* the module returns one array"):
        model.evaluate(x, yb, verbose=0)


def test_compile_refuses_unknown_names_and_bad_weights_at_once():
    model = ef.Model(TwoHeads())
    with pytest.raises(ValueError, match="Unknown loss 'msee'"):
        model.compile("sgd", loss={"a": "msee"})
    with pytest.raises(ValueError, match="Unknown metric 'acc2'"):
        model.compile("sgd", loss="mse", metrics={"b": ["acc2"]})
    with pytest.raises(TypeError, match="loss_weights must hold floats"):
        model.compile("sgd", loss="mse", loss_weights={"a": "x"})
    with pytest.raises(ValueError, match="a loss for at least one output"):
        model.compile("sgd", loss={"a": None})


def test_sample_weights_per_output_are_refused():
    x, ya, yb = data()
    with pytest.raises(ValueError, match="sample weights per output are not supported"):
        dict_model().fit(x, {"a": ya, "b": yb}, sample_weight={"a": ya, "b": ya}, verbose=0)


def test_early_stopping_watches_an_output_metric_in_auto_mode():
    """``mode="auto"`` knows an output's metric by its log name: accuracy goes up."""
    x, ya, yb = data()
    stop = ef.callbacks.EarlyStopping(monitor="val_b_accuracy", patience=5)
    history = dict_model().fit(
        x, {"a": ya, "b": yb}, epochs=4, batch_size=4, verbose=0, validation_split=0.4,
        callbacks=[stop]).history
    assert stop.best == max(history["val_b_accuracy"])
