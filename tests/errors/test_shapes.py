"""Shape problems explained where they start (issue 22 part 1): the module, a loss or a metric
that cannot take the first batch raises one error that names the call, the shapes and dtypes
as the module received them and the likely cause, with JAX's text as a last "Details" line."""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from clear_errors import clear_error
from conftest import MLP, make_data
from easyfit.errors import LossInputError, ModuleInputError, ModuleOutputError


@pytest.fixture(scope="module")
def data():
    return make_data(40)


def _model(module=None, **compile_kw):
    model = ef.Model(module if module is not None else MLP(rngs=nnx.Rngs(0)))
    kw = dict(optimizer="sgd", loss="sparse_categorical_crossentropy", steps_per_execution=1)
    kw.update(compile_kw)
    model.compile(**kw)
    return model


class CNN(nnx.Module):
    def __init__(self, channels: int = 1, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(channels, 4, (3, 3), rngs=rngs)
        self.out = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.conv(x).mean(axis=(1, 2)))


class Images(nnx.Module):  # a Linear first layer built for flattened 4x4 images
    def __init__(self, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.dense(x)


class Miswired(nnx.Module):  # l1 gives 16 features, l2 was built for 12
    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.l2 = nnx.Linear(12, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.l1(x))


class Returns(nnx.Module):
    def __init__(self, value, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(8, 4, rngs=rngs)
        self.value = value

    def __call__(self, x):
        y = self.l1(x)
        return self.value(y)


class TwoInputs(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.a = nnx.Linear(8, 4, rngs=rngs)
        self.b = nnx.Linear(3, 4, rngs=rngs)

    def __call__(self, x):
        return self.a(x["a"]) + self.b(x["b"])


class OwnCheck(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        if x.shape[-1] != 8:
            raise ValueError("OwnCheck wants 8 features, please")
        return self.l1(x)


# -- the module cannot take x: every call says so, naming itself ------------------------------
CALLS = {
    "fit": lambda m, x, y: m.fit(x, y, batch_size=8, verbose=0),
    "evaluate": lambda m, x, y: m.evaluate(x, y, batch_size=8, verbose=0),
    "predict": lambda m, x, y: m.predict(x, batch_size=8, verbose=0),
    "train_on_batch": lambda m, x, y: m.train_on_batch(x[:8], y[:8]),
    "test_on_batch": lambda m, x, y: m.test_on_batch(x[:8], y[:8]),
    "predict_on_batch": lambda m, x, y: m.predict_on_batch(x[:8]),
    "find_lr": lambda m, x, y: m.find_lr(x, y, steps=5, batch_size=8),
    "estimate_memory": lambda m, x, y: m.estimate_memory(64, x[:2], y[:2]),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_features_that_do_not_match_the_first_layer(call, data, tmp_path):
    _, y = data
    x = np.zeros((40, 5), np.float32)  # the MLP's first layer takes 8 features
    model = _model()
    with clear_error(ModuleInputError, rf"model\.{call}\b", "x has 5 features",
                     r"first layer \(`l1`, Linear\) expects 8", r"float32 \(\d+, 5\)",
                     r"Details: TypeError: .*\(5,\).*\(8,\)", untouched=tmp_path) as info:
        CALLS[call](model, x, y)
    assert isinstance(info.value.__cause__, TypeError)  # JAX's error, chained


def test_one_example_without_its_batch_axis(data, tmp_path):
    x, _ = data
    model = _model()
    with clear_error(ValueError, r"model\.predict\b", "one axis only", "batch",
                     r"x\[None\]", r"expects 8 features", r"one example \(8 values\)",
                     untouched=tmp_path):
        model.predict(x[0], verbose=0)


def test_images_without_a_channel_axis(tmp_path):
    x, y = np.zeros((16, 8, 8), np.float32), np.zeros(16, np.int32)
    model = _model(CNN(rngs=nnx.Rngs(0)))
    with clear_error(ModuleInputError, r"model\.fit\b", "no channel axis", r"\(16, 8, 8\)",
                     r"\(batch, 8, 8, 1\)", r"x\[\.\.\., None\]", r"`conv`, Conv",
                     untouched=tmp_path):
        model.fit(x, y, batch_size=16, verbose=0)


def test_channels_first_images(tmp_path):
    x, y = np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int32)
    model = _model(CNN(3, rngs=nnx.Rngs(0)))
    with clear_error(ModuleInputError, r"model\.evaluate\b", "channels-first",
                     r"x\.transpose\(0, 2, 3, 1\)", untouched=tmp_path):
        model.evaluate(x, y, batch_size=4, verbose=0)


def test_images_not_flattened_for_a_linear_layer(tmp_path):
    x, y = np.zeros((8, 4, 4), np.float32), np.zeros(8, np.int32)
    model = _model(Images(rngs=nnx.Rngs(0)))
    with clear_error(ModuleInputError, r"model\.fit\b", r"\(8, 4, 4\)", "expects 16 features",
                     "flatten", r"reshape\(len\(x\), -1\)", untouched=tmp_path):
        model.fit(x, y, batch_size=8, verbose=0)


def test_layers_that_do_not_fit_each_other(data, tmp_path):
    x, y = data
    model = _model(Miswired(rngs=nnx.Rngs(0)))
    with clear_error(ModuleInputError, r"model\.fit\b", r"layer `l2` \(Linear, built for 12",
                     r"\(8, 16\)", r"x float32 \(8, 8\)", "__init__", untouched=tmp_path):
        model.fit(x, y, batch_size=8, verbose=0)


def test_validation_data_of_other_features(data, tmp_path):
    x, y = data
    model = _model()
    with clear_error(ModuleInputError, r"model\.fit \(validation_data\)", "x has 3 features",
                     "expects 8", untouched=tmp_path):
        model.fit(x, y, batch_size=8, verbose=0,
                  validation_data=(np.zeros((8, 3), np.float32), y[:8]))


def test_a_dict_input_names_its_key(data, tmp_path):
    x, y = data
    model = _model(TwoInputs(rngs=nnx.Rngs(0)))
    bad = {"a": x, "b": np.zeros((40, 5), np.float32)}
    with clear_error(ModuleInputError, r"model\.fit\b", r"x\['b'\] has 5 features",
                     r"first layer \(`b`, Linear\) expects 3", r"x\['b'\] float32 \(8, 5\)",
                     untouched=tmp_path):
        model.fit(bad, y, batch_size=8, verbose=0)


def test_a_dict_input_without_the_key_the_module_reads(data, tmp_path):
    x, y = data
    model = _model(TwoInputs(rngs=nnx.Rngs(0)))
    with pytest.raises(KeyError) as info:  # the user's own exception, with a note
        model.fit({"a": x, "extra": np.zeros((40, 3), np.float32)}, y, batch_size=8,
                  verbose=0)
    assert "the module read x['b'], but x has the keys ['a', 'extra']" in info.value.__notes__[0]
    assert list(tmp_path.iterdir()) == []


def test_the_users_own_error_passes_through_unchanged(tmp_path):
    model = _model(OwnCheck(rngs=nnx.Rngs(0)))
    with clear_error(ValueError, "^OwnCheck wants 8 features, please$", untouched=tmp_path) as info:
        model.predict(np.zeros((4, 3), np.float32), verbose=0)
    assert not isinstance(info.value, ModuleInputError)


# -- modules returning what a loss cannot take ------------------------------------------------
@pytest.mark.parametrize("call", ["fit", "predict"])
def test_module_that_returns_none(call, data, tmp_path):
    x, y = data
    model = _model(Returns(lambda out: None, rngs=nnx.Rngs(0)))
    with clear_error(ModuleOutputError, rf"model\.{call}\b", "returned None", "return",
                     untouched=tmp_path):
        CALLS[call](model, x, y)


def test_module_that_returns_a_string(data, tmp_path):
    x, y = data
    model = _model(Returns(lambda out: "logits", rngs=nnx.Rngs(0)))
    with clear_error(TypeError, r"model\.fit\b", r"is a str \('logits'\)", "return an array",
                     untouched=tmp_path):
        model.fit(x, y, batch_size=8, verbose=0)


def test_module_that_returns_a_nested_structure(data, tmp_path):
    x, y = data  # easyfit's own message for several outputs passes through unchanged
    model = _model(Returns(lambda out: {"a": {"b": out}}, rngs=nnx.Rngs(0)))
    with clear_error(ValueError, r"output 'a' is a dict", "not nested",
                     untouched=tmp_path) as info:
        model.fit(x, y, batch_size=8, verbose=0)
    assert not isinstance(info.value, LossInputError)


# -- losses and metrics that cannot compare labels and outputs ---------------------------------
def _squared(y_true, y_pred):
    return jnp.mean((y_true - y_pred) ** 2, axis=-1)


def test_own_loss_of_labels_with_other_columns(data, tmp_path):
    x, _ = data
    model = _model(loss=lambda y_true, y_pred: _squared(y_true, y_pred))
    y = np.zeros((40, 3), np.float32)  # the module outputs 4 columns
    with clear_error(LossInputError, r"model\.fit\b", r"loss \(your function\)",
                     r"y float32 \(8, 3\)", r"outputs float32 \(8, 4\)",
                     "last layer output 3", "Details: ", untouched=tmp_path):
        model.fit(x, y, batch_size=8, verbose=0)


def test_own_loss_of_class_ids(data, tmp_path):
    x, y = data
    model = _model(loss=_squared)
    with clear_error(LossInputError, r"model\.evaluate\b", r"loss `_squared`",
                     "class ids", "sparse_categorical_crossentropy", untouched=tmp_path):
        model.evaluate(x, y, batch_size=8, verbose=0)


def test_metric_of_labels_with_other_columns(data, tmp_path):
    x, y = data
    model = _model(loss="sparse_categorical_crossentropy", metrics=[_squared])
    with clear_error(LossInputError, r"model\.test_on_batch\b", r"metric `_squared`",
                     r"outputs float32 \(8, 4\)", untouched=tmp_path):
        model.test_on_batch(x[:8], y[:8])


@pytest.mark.parametrize("call", ["fit", "test_on_batch"])
def test_labels_as_a_dict_for_one_output(call, data, tmp_path):
    x, y = data
    with clear_error(LossInputError, rf"model\.{call}\b", r"y is a dict with keys \['out'\]",
                     "one output", "Pass y as one array", untouched=tmp_path):
        if call == "fit":
            _model().fit(x, {"out": y}, batch_size=8, verbose=0)
        else:
            _model().test_on_batch(x[:8], {"out": y[:8]})


def test_batches_without_labels(data, tmp_path):
    x, _ = data
    stream = ((x[i:i + 8],) for i in range(0, 40, 8))
    with clear_error(LossInputError, r"model\.fit\b", "no labels", r"\(x, y\) pairs",
                     "model.predict", untouched=tmp_path):
        _model().fit(stream, verbose=0)


def test_labels_as_a_single_value(data, tmp_path):
    x, _ = data
    with clear_error(ValueError, r"y is a single value \(a 0-d array\)", "first axis",
                     untouched=tmp_path):
        _model().fit(x, np.array(1), verbose=0)


def test_easyfits_own_loss_error_passes_through(data, tmp_path):
    x, y = data
    model = _model(loss="categorical_crossentropy")
    with clear_error(ValueError, "categorical_crossentropy", r"\(\d+, 3\).*\(\d+, 4\)",
                     untouched=tmp_path) as info:
        model.fit(x, np.eye(3, dtype=np.float32)[y % 3], batch_size=8, verbose=0)
    assert not isinstance(info.value, LossInputError)


class Branches(nnx.Module):  # Python control flow on a traced value: JAX's own error stays
    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        return self.l1(x) if x.sum() > 0 else self.l1(-x)


def test_tracing_errors_pass_through_as_jax_explains_them(data, tmp_path):
    x, _ = data
    model = _model(Branches(rngs=nnx.Rngs(0)))
    with pytest.raises(jax.errors.TracerBoolConversionError) as info:
        model.predict(x, verbose=0)
    assert not isinstance(info.value, ModuleInputError)


def test_a_linen_module_given_other_features(data, tmp_path):
    class Dense(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(4)(x)

    x, _ = data
    model = ef.Model(Dense(), sample_input=x[:2])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with clear_error(ModuleInputError, r"model\.predict\b", r"x float32 \(8, 5\)",
                     r"batch on the first axis", r"Details: ScopeParamShapeError: .*\(5, 4\)",
                     untouched=tmp_path):
        model.predict(np.zeros((8, 5), np.float32), batch_size=8, verbose=0)


class NoRngs(nnx.Module):  # Flax's own deliberate error (Dropout without rngs) stays as it is
    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(8, 4, rngs=rngs)
        self.drop = nnx.Dropout(0.5)

    def __call__(self, x):
        return self.drop(self.l1(x))


def test_flax_own_errors_pass_through(data, tmp_path):
    x, y = data
    with clear_error(ValueError, "no `rngs` argument was provided to Dropout",
                     untouched=tmp_path) as info:
        _model(NoRngs(rngs=nnx.Rngs(0))).fit(x, y, batch_size=8, verbose=0)
    assert not isinstance(info.value, ModuleInputError)
