"""Issue 22 part 3: arguments checked at the door. Every wrong value of ``fit``, ``evaluate``,
``predict``, ``compile`` and ``ef.Model`` raises one error that names the argument, the value
given and what is accepted, before any work (no file written, nothing compiled); values
Keras accepts keep Keras's behaviour."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef
from easyfit import arguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clear_errors import clear_error  # noqa: E402
from conftest import MLP, make_data  # noqa: E402

X, Y = make_data(40)
W = np.ones(40, np.float32)


def _model(**compile_kw) -> ef.Model:
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(**{"optimizer": "sgd", "loss": "sparse_categorical_crossentropy",
                     **compile_kw})
    return model


@pytest.fixture(scope="module")
def model():
    """One compiled model for the calls that must fail before doing anything."""
    return _model()


class _KerasLike:  # stands for a keras.callbacks.EarlyStopping passed by habit
    pass


_KerasLike.__module__ = "keras.src.callbacks"
_KerasLike.__name__ = "EarlyStopping"

# (fit keywords, exception, what the message must name)
FIT_CASES = {
    "validation_data={'x', 'y'}": (dict(validation_data={"x": X, "y": Y}), ValueError,
                                   ["validation_data", r"dict with keys \['x', 'y'\]",
                                    r"\(x_val, y_val\)"]),
    "batch_size=0": (dict(batch_size=0), ValueError, ["batch_size", "got 0", "positive int"]),
    "batch_size=-1": (dict(batch_size=-1), ValueError, ["batch_size", "-1", "None for the "
                                                                          "default 32"]),
    "batch_size=1.5": (dict(batch_size=1.5), TypeError, ["batch_size", "1.5", "positive int"]),
    "batch_size='32'": (dict(batch_size="32"), TypeError, ["batch_size", "'32'", "int"]),
    "validation_batch_size=0": (dict(validation_split=0.2, validation_batch_size=0), ValueError,
                                ["validation_batch_size", "got 0"]),
    "epochs=-1": (dict(epochs=-1), ValueError, ["epochs", "-1", "0 or more", "0 trains "
                                                                            "nothing"]),
    "epochs=2.5": (dict(epochs=2.5), TypeError, ["epochs", "2.5", "an int"]),
    "initial_epoch=-1": (dict(initial_epoch=-1), ValueError, ["initial_epoch", "-1"]),
    "steps_per_epoch=0": (dict(steps_per_epoch=0), ValueError, ["steps_per_epoch", "got 0"]),
    "validation_split=1.5": (dict(validation_split=1.5), ValueError,
                             ["validation_split", "1.5", r"\[0, 1\)"]),
    "validation_split='0.2'": (dict(validation_split="0.2"), TypeError,
                               ["validation_split", "'0.2'", "float"]),
    "validation_data=(x,)": (dict(validation_data=(X,)), ValueError,
                             ["validation_data", "1 item", r"\(x_val, y_val\)"]),
    "validation_data=4-tuple": (dict(validation_data=(X, Y, W, W)), ValueError,
                                ["validation_data", "4 items", "sample_weight_val"]),
    "validation_data rows": (dict(validation_data=(X, Y[:5])), ValueError,
                             ["validation_data", "40", "5", "same number of rows"]),
    "validation_steps=0": (dict(validation_split=0.2, validation_steps=0), ValueError,
                           ["validation_steps", "got 0"]),
    "validation_freq=0": (dict(validation_split=0.2, validation_freq=0), ValueError,
                          ["validation_freq", "got 0", "every N epochs"]),
    "validation_freq='2'": (dict(validation_split=0.2, validation_freq="2"), TypeError,
                            ["validation_freq", "'2'", r"\[1, 5, 10\]"]),
    "validation_freq=[0]": (dict(validation_split=0.2, validation_freq=[0, 2]), ValueError,
                            ["validation_freq", r"\[0, 2\]", "1-based"]),
    "callbacks=[function]": (dict(callbacks=[lambda epoch, logs: None]), TypeError,
                             [r"callbacks\[0\]", "function", "LambdaCallback"]),
    "callbacks=[class]": (dict(callbacks=[ef.callbacks.EarlyStopping]), TypeError,
                          [r"callbacks\[0\]", "the class EarlyStopping", r"EarlyStopping\(...\)"]),
    "callbacks=[keras]": (dict(callbacks=[_KerasLike()]), TypeError,
                          [r"callbacks\[0\]", "a Keras EarlyStopping",
                           "use ef.callbacks.EarlyStopping"]),
    "class_weight unknown class": (dict(class_weight={0: 1.0, 7: 2.0}), ValueError,
                                   ["class_weight", r"\[7\]", r"\[0, 1, 2, 3\]"]),
    "class_weight negative": (dict(class_weight={0: -1.0}), ValueError,
                              ["class_weight", "-1.0", "0 or more"]),
    "class_weight not a number": (dict(class_weight={0: "high"}), ValueError,
                                  ["class_weight", "'high'", "numbers"]),
    "class_weight str key": (dict(class_weight={"cat": 2.0}), ValueError,
                             ["class_weight", "'cat'", "class indices"]),
    "class_weight list": (dict(class_weight=[1.0, 2.0]), ValueError,
                          ["class_weight", "list", r"\{0: 1.0, 1: 5.0\}"]),
    "sample_weight negative": (dict(sample_weight=np.r_[np.ones(39), -2.0]), ValueError,
                               ["sample_weight", "row 39", "-2.0", "0 or more"]),
    "sample_weight nan": (dict(sample_weight=np.r_[np.nan, np.ones(39)]), ValueError,
                          ["sample_weight", "row 0", "nan", "finite"]),
    "sample_weight zeros": (dict(sample_weight=np.zeros(40)), ValueError,
                            ["sample_weight", "every row", "above 0"]),
    "verbose=5": (dict(verbose=5), ValueError, ["verbose", "5", "'auto', 0"]),
    "verbose='yes'": (dict(verbose="yes"), ValueError, ["verbose", "'yes'"]),
    "shuffle='yes'": (dict(shuffle="yes"), TypeError, ["shuffle", "'yes'", "True or False"]),
}


@pytest.mark.parametrize("case", FIT_CASES)
def test_fit_argument(model, tmp_path, case):
    kwargs, error, names = FIT_CASES[case]
    kwargs = {"verbose": 0, **kwargs}
    # a checkpoint callback too: the failed call must not even create its directory
    callbacks = kwargs.pop("callbacks", []) + [ef.callbacks.ModelCheckpoint(tmp_path / "ckpt")]
    with clear_error(error, *names, untouched=tmp_path):
        model.fit(X, Y, callbacks=callbacks, **kwargs)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("where, labels, names", [
    ("y", Y + 0.3, ["sparse_categorical_crossentropy", r"\by holds fractional values such as "
                    r"\d\.3", r"y.astype\(int\)", "loss='categorical_crossentropy'"]),
    ("validation_data", Y + 0.5, ["validation_data's y", r"\d\.5"]),
])
def test_fractional_labels_for_a_sparse_loss(model, tmp_path, where, labels, names):
    labels = labels.astype(np.float32)
    kwargs = ({"y": labels} if where == "y" else
              {"y": Y, "validation_data": (X, labels)})
    with clear_error(ValueError, *names, untouched=tmp_path):
        model.fit(X, verbose=0, **kwargs)
    with clear_error(ValueError, "sparse_categorical_crossentropy", untouched=tmp_path):
        model.evaluate(X, labels, verbose=0)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_one_hot_labels_for_a_sparse_loss(model, tmp_path, dtype):
    one_hot = np.eye(4, dtype=dtype)[Y]
    with clear_error(ValueError, "looks one-hot", "loss='categorical_crossentropy'",
                     r"y\.argmax\(-1\)", untouched=tmp_path):
        model.fit(X, one_hot, verbose=0)


def test_integral_float_labels_train_with_a_note_once(monkeypatch):
    monkeypatch.setattr(arguments, "_noted", set())
    floats, ints = _model(), _model()
    with pytest.warns(UserWarning, match=r"class ids as float32.*astype\(int\)"):
        h_float = floats.fit(X, Y.astype(np.float32), batch_size=8, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the note is given once per process
        floats.evaluate(X, Y.astype(np.float32), verbose=0)
    h_int = ints.fit(X, Y, batch_size=8, verbose=0)
    assert h_float.history["loss"] == h_int.history["loss"]


COMPILE_CASES = {
    "steps_per_execution=0": (dict(steps_per_execution=0), ValueError,
                              ["steps_per_execution", "got 0", "'auto' or a positive int"]),
    "steps_per_execution='fast'": (dict(steps_per_execution="fast"), ValueError,
                                   ["steps_per_execution", "'fast'", "'auto'"]),
    "steps_per_execution=True": (dict(steps_per_execution=True), ValueError,
                                 ["steps_per_execution", "True"]),
    "gradient_accumulation_steps=0": (dict(gradient_accumulation_steps=0), ValueError,
                                      ["gradient_accumulation_steps", "got 0"]),
    "precision='fp16'": (dict(precision="fp16"), ValueError,
                         ["precision", "'fp16'", "bfloat16", "float16"]),
    "precision='mixed_bfloat16'": (dict(precision="mixed_bfloat16"), ValueError,
                                   ["precision", "Keras", "precision='bfloat16'"]),
    "precision=jnp.bfloat16": (dict(precision=jnp.bfloat16), ValueError,
                               ["precision", "precision='bfloat16'"]),
    "remat=3": (dict(remat=3), TypeError, ["remat", "got 3", "True, False"]),
    "remat='foo'": (dict(remat="foo"), ValueError, ["remat", "'foo'", "dots_saveable"]),
    "ema_momentum=1.5": (dict(ema_momentum=1.5), ValueError, ["ema_momentum", "1.5",
                                                              r"\[0, 1\)"]),
    "seed='0'": (dict(seed="0"), TypeError, ["seed", "'0'", "int"]),
    "metrics='accuracy'": (dict(metrics="accuracy"), ValueError,
                           ["metrics must be a list", r"metrics=\['accuracy'\]"]),
}


@pytest.mark.parametrize("loss, names", [
    (optax.softmax_cross_entropy_with_integer_labels,
     ["optax", r"\(predictions, targets\)", r"loss\(y_true, y_pred\)",
      r"optax.softmax_cross_entropy_with_integer_labels\(y_pred, y_true\)"]),
    (ef.losses.SparseCategoricalCrossentropy,
     ["is the class", r"SparseCategoricalCrossentropy\(\)",
      "'sparse_categorical_crossentropy'"]),
])
def test_compile_loss(tmp_path, loss, names):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    with clear_error(TypeError, *names, untouched=tmp_path):
        model.compile(optimizer="sgd", loss=loss)
    assert not model.compiled


def test_a_module_class_instead_of_a_module(tmp_path):
    with clear_error(TypeError, "got the class MLP", r"ef.Model\(MLP\(rngs=\.\.\.\)\)",
                     r"lambda: MLP\(rngs=\.\.\.\)", untouched=tmp_path):
        ef.Model(MLP)


@pytest.mark.parametrize("case", COMPILE_CASES)
def test_compile_argument(tmp_path, case):
    kwargs, error, names = COMPILE_CASES[case]
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    with clear_error(error, *names, untouched=tmp_path):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", **kwargs)
    assert not model.compiled


@pytest.mark.parametrize("distribution, names", [
    ("fsdp", ["distribution", "'fsdp'", r"FSDP\(\)"]),
    (ef.distribute.FSDP, ["distribution", "instance", r"ef.distribute.FSDP\(\)"]),
])
def test_model_distribution(tmp_path, distribution, names):
    with clear_error(TypeError, *names, untouched=tmp_path):
        ef.Model(MLP(rngs=nnx.Rngs(0)), distribution=distribution)


@pytest.mark.parametrize("call, kwargs, error, names", [
    ("evaluate", dict(batch_size=0), ValueError, ["batch_size", "got 0"]),
    ("evaluate", dict(steps=0), ValueError, ["steps", "got 0", "whole input"]),
    ("evaluate", dict(sample_weight=-W), ValueError, ["sample_weight", "-1.0"]),
    ("evaluate", dict(verbose=3), ValueError, ["verbose", "3"]),
    ("evaluate", dict(callbacks=[print]), TypeError, [r"callbacks\[0\]", "the function print",
                                                      "LambdaCallback"]),
    ("predict", dict(callbacks=[np.ones(1)]), TypeError, [r"callbacks\[0\]", "class ndarray",
                                                       r"subclass ef.callbacks.Callback"]),
    ("predict", dict(batch_size=-3), ValueError, ["batch_size", "-3"]),
    ("predict", dict(steps=1.5), TypeError, ["steps", "1.5"]),
    ("predict", dict(verbose="loud"), ValueError, ["verbose", "'loud'"]),
    ("predict", dict(batch_size=Y), TypeError, ["predict takes x only", r"shape \(40,\)",
                                                r"model\.evaluate\(x, y\)"]),
])
def test_evaluate_and_predict_arguments(model, tmp_path, call, kwargs, error, names):
    args = (X, Y) if call == "evaluate" else (X,)
    with clear_error(error, *names, untouched=tmp_path):
        getattr(model, call)(*args, **{"verbose": 0, **kwargs})


@pytest.mark.parametrize("call, args, kwargs, names", [
    ("train_on_batch", (X, Y), dict(class_weight=[1.0, 2.0]), ["class_weight", "dict", "list"]),
    ("train_on_batch", (X, Y), dict(class_weight={"a": 1.0}), ["class_weight", "'a'"]),
    ("train_on_batch", (X, Y), dict(class_weight={9: 1.0}), ["class_weight", r"\[9\]",
                                                              "classes found"]),
    ("train_on_batch", (X, Y), dict(sample_weight=-W), ["sample_weight", "-1.0"]),
    ("train_on_batch", (X, Y + 0.5), {}, ["integer class ids", "fractional", r"\d\.5"]),
    ("train_on_batch", (X, np.eye(4)[Y]), {}, ["one-hot", "categorical_crossentropy",
                                               r"argmax"]),
    ("test_on_batch", (X, Y), dict(sample_weight=-W), ["sample_weight", "-1.0"]),
    ("test_on_batch", (X, Y + 0.5), {}, ["integer class ids", "fractional"]),
])
def test_on_batch_arguments(tmp_path, call, args, kwargs, names):
    model = _model()
    before = [np.asarray(v).copy() for v in jax.tree.leaves(nnx.state(model.module))]
    with clear_error(ValueError, *names, untouched=tmp_path):
        getattr(model, call)(*args, **kwargs)
    after = jax.tree.leaves(nnx.state(model.module))
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, after))


# -- what Keras accepts keeps Keras's behaviour ----------------------------------------------

def test_epochs_zero_trains_nothing():
    model = _model()
    before = model.get_weights()
    history = model.fit(X, Y, epochs=0, verbose=0)
    assert history.history == {}
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_single_callback_and_nested_lists_are_accepted_as_keras_flattens_them():
    seen = []
    one = ef.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    two = ef.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(-epoch))
    model = _model()
    model.fit(X, Y, epochs=1, callbacks=one, verbose=0)
    model.fit(X, Y, epochs=1, callbacks=[[one], (two,)], verbose=0)
    assert seen == [0, 0, 0]
    assert model.evaluate(X, Y, callbacks=one, verbose=0) > 0


def test_keras_spellings_that_are_accepted(monkeypatch):
    monkeypatch.setattr(arguments, "_noted", set())  # notes are given once per process
    model = _model()
    with pytest.warns(UserWarning, match="shuffle='batch' shuffles rows"):
        model.fit(X, Y, shuffle="batch", verbose=0)
    with pytest.warns(UserWarning, match=r"trains nothing.*epochs=3 \+ the number of epochs"):
        model.fit(X, Y, epochs=2, initial_epoch=3, verbose=0)
    history = model.fit(X, Y, validation_data=[X, Y], verbose=True)  # a list, as Keras
    assert "val_loss" in history.history


def test_batch_size_ignored_by_an_input_that_batches_itself_warns():
    model = _model()
    batches = [(X[:8], Y[:8]), (X[8:16], Y[8:16])]
    with pytest.warns(UserWarning, match=r"batch_size=4 is ignored.*8 rows.*batch the dataset"):
        model.fit(batches, batch_size=4, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(batches, batch_size=8, verbose=0)  # the same size: nothing to say


def test_class_weight_keys_as_strings_are_read_as_keras_reads_them():
    by_str, by_int = _model(), _model()
    h_str = by_str.fit(X, Y, class_weight={"0": 2.0, "3": 0.5}, shuffle=False, verbose=0)
    h_int = by_int.fit(X, Y, class_weight={0: 2.0, 3: 0.5}, shuffle=False, verbose=0)
    assert h_str.history["loss"] == h_int.history["loss"]
