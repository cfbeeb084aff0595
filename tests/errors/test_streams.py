"""Inputs that change mid-stream (issue 22 part 2): a generator, tf.data or grain input whose
batches change shape, dtype or structure after the first gets an error naming the batch, the
part (x, y, sample_weight and the key) and both shapes; a smaller last batch stays fine."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from clear_errors import clear_error
from conftest import MLP


def _model():
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", steps_per_execution=1)
    return model


def _x(rows=8, features=8, dtype=np.float32):
    return np.ones((rows, features), dtype)


def _y(rows=8, dtype=np.int32):
    return np.zeros(rows, dtype)


class TwoInputs(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.a = nnx.Linear(8, 4, rngs=rngs)
        self.b = nnx.Linear(3, 4, rngs=rngs)

    def __call__(self, x):
        return self.a(x["a"]) + self.b(x["b"])


# Each: the batches (the first ones fine, a later one changed) and what the message names.
CHANGES = {
    "x features": ([(_x(), _y()), (_x(), _y()), (_x(features=7), _y())],
                   [r"Batch 2\b", "changed shape", "`x`", r"\(8, 7\) float32", r"\(8, 8\) float32",
                    "Pad or crop"]),
    "x dtype": ([(_x(), _y()), (_x(dtype=np.int32), _y())],
                [r"Batch 1\b", "changed dtype", "`x`", "int32", "float32", "Cast"]),
    "y dtype": ([(_x(), _y()), (_x(), _y(dtype=np.float32))],
                [r"Batch 1\b", "`y`", r"\(8,\) float32", r"\(8,\) int32"]),
    "y rank": ([(_x(), _y()), (_x(), np.zeros((8, 1), np.int32))],
               [r"Batch 1\b", "`y`", r"\(8, 1\)", r"\(8,\)"]),
    "sample_weight appears": ([(_x(), _y()), (_x(), _y(), np.ones(8, np.float32))],
                              [r"Batch 1\b", "has a `sample_weight`", "had none"]),
    "sample_weight disappears": ([(_x(), _y(), np.ones(8, np.float32)), (_x(), _y())],
                                 [r"Batch 1\b", "has no `sample_weight`", "had one"]),
    "sample_weight rank": ([(_x(), _y(), np.ones(8, np.float32)),
                            (_x(), _y(), np.ones((8, 2), np.float32))],
                           [r"Batch 1\b", "`sample_weight`", r"\(8, 2\)", r"\(8,\)"]),
    "rows of x and y": ([(_x(), _y()), (_x(), _y(rows=7))],
                        [r"Batch 1\b", "8 rows in x but 7 in `y`", "one row per example"]),
    "more rows": ([(_x(rows=4), _y(rows=4)), (_x(), _y())],
                  [r"Batch 1 \(counting from 0\) of epoch 1 has 8 rows", "first batch's 4",
                   "only the last"]),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_list_of_batches_that_changes(change, tmp_path):
    batches, names = CHANGES[change]
    with clear_error(ValueError, *names, untouched=tmp_path):
        _model().fit(batches, verbose=0)


def test_a_generator_that_changes_in_the_second_epoch(tmp_path):
    def forever():
        step = 0
        while True:
            yield _x(features=8 if step < 3 else 9), _y()
            step += 1

    with clear_error(ValueError, r"Batch 0 \(counting from 0\) of epoch 2", "`x`",
                     r"\(8, 9\) float32", r"\(8, 8\) float32", untouched=tmp_path):
        _model().fit(forever(), steps_per_epoch=3, epochs=2, verbose=0)


def _dict_batches(second):
    first = {"a": _x(), "b": _x(features=3)}
    return [(first, _y()), (second, _y())]


@pytest.mark.parametrize("second, names", [
    ({"a": _x(), "b": _x(features=4)}, [r"`x\['b'\]`", r"\(8, 4\)", r"\(8, 3\)"]),
    ({"a": _x()}, ["changed structure", r"keys \['a'\]", r"keys \['a', 'b'\]"]),
], ids=["a key's shape", "a key missing"])
def test_dict_inputs_name_the_key(second, names, tmp_path):
    model = ef.Model(TwoInputs(rngs=nnx.Rngs(0)))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", steps_per_execution=1)
    with clear_error(ValueError, r"Batch 1\b", *names, untouched=tmp_path):
        model.fit(_dict_batches(second), verbose=0)


@pytest.mark.parametrize("call", ["evaluate", "predict"])
def test_evaluate_and_predict_streams(call, tmp_path):
    batches = [(_x(), _y()), (_x(), _y()), (_x(features=6), _y())]
    model = _model()
    with clear_error(ValueError, r"Batch 2\b", "`x`", r"\(8, 6\)", untouched=tmp_path):
        if call == "evaluate":
            model.evaluate(batches, verbose=0)
        else:
            model.predict([x for x, _ in batches], verbose=0)


def test_validation_stream_that_changes(tmp_path):
    validation = [(_x(), _y()), (_x(features=5), _y())]
    with clear_error(ValueError, r"Batch 1 \(counting from 0\) of `validation_data`", "`x`",
                     r"\(8, 5\)", untouched=tmp_path):
        _model().fit([(_x(), _y())], validation_data=validation, verbose=0)


def test_tf_data_whose_shapes_change(tmp_path):
    tf = pytest.importorskip("tensorflow")

    def rows():  # sequences of 8 values, then longer ones: padded_batch pads per batch
        for i in range(24):
            yield np.ones(8 if i < 16 else 10, np.float32), np.int32(0)

    dataset = tf.data.Dataset.from_generator(rows, output_signature=(
        tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.int32))).padded_batch(8)
    with clear_error(ValueError, r"Batch 2\b", "`x`", r"\(8, 10\) float32",
                     r"\(8, 8\) float32", "padded_shapes", untouched=tmp_path):
        _model().fit(dataset, verbose=0)


def test_grain_whose_shapes_change(tmp_path):
    grain = pytest.importorskip("grain")
    rows = [(np.ones(8 if i < 16 else 6, np.float32), np.int32(0)) for i in range(24)]
    dataset = grain.MapDataset.source(rows).batch(8)
    with clear_error(ValueError, r"Batch 2\b", "`x`", r"\(8, 6\)", r"\(8, 8\)",
                     untouched=tmp_path):
        _model().fit(dataset, verbose=0)


def test_a_smaller_last_batch_is_still_padded():
    batches = [(_x(), _y()), (_x(), _y()), (_x(rows=3), _y(rows=3))]
    model = _model()
    history = model.fit(batches, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.predict([x for x, _ in batches], verbose=0).shape == (19, 4)


def test_a_one_shot_generator_as_validation_data(tmp_path):
    batches = ((_x(), _y()) for _ in range(2))  # read whole by the first validation
    with clear_error(ValueError, r"model\.fit \(validation_data\)", "yielded no batch",
                     "read only once", "validation_steps", untouched=tmp_path):
        _model().fit(_x(32), _y(32), batch_size=8, epochs=3, verbose=0,
                     validation_data=batches)
