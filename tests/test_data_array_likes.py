"""Array-likes read as arrays, as Keras reads them: pandas DataFrames and Series, PyTorch
tensors, lists of rows; a scipy sparse matrix is refused with the fix; examples that reach
the module without their batch axis are refused instead of giving outputs of the wrong
shape."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from conftest import MLP, make_data

X, Y = make_data(40)


def _history(x, y) -> list[float]:
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile("adam", "sparse_categorical_crossentropy", steps_per_execution=1)
    return model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"]


def _predict(x):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    return model.predict(x, batch_size=16, verbose=0)


def test_pandas_frames_and_series_train_as_their_arrays():
    pd = pytest.importorskip("pandas")
    assert _history(pd.DataFrame(X), pd.Series(Y)) == _history(X, Y)
    named = pd.DataFrame(X, columns=list("abcdefgh"))  # iterating it would give the names
    np.testing.assert_array_equal(_predict(named), _predict(X))


def test_lists_of_rows_train_as_arrays():
    assert _history(X.tolist(), Y.tolist()) == _history(X, Y)
    np.testing.assert_array_equal(_predict(X.tolist()), _predict(X))


def test_torch_tensors_train_and_predict_as_arrays():
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(X).requires_grad_()  # .numpy() would refuse a tensor with grad
    assert _history(x, torch.from_numpy(Y).long()) == _history(X, Y)
    assert _predict(torch.from_numpy(X)).shape == (40, 4)


def test_a_scipy_sparse_matrix_gets_the_fix():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match=r"x is a scipy sparse csr_matrix of shape \(40, 8\).*"
                                        r"x\.toarray\(\)"):
        _history(sparse.csr_matrix(X), Y)


@pytest.mark.filterwarnings("ignore:batch_size=16 is ignored")
def test_single_examples_without_a_batch_axis_are_refused():
    with pytest.raises(ef.errors.ModuleOutputError,
                       match=r"output has shape \(4,\) for a batch of 8 rows.*np\.stack"):
        _predict([X[i] for i in range(40)])  # an iterable of 1-D examples


class TwoInputs(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, inputs):
        x, mask = inputs
        return self.dense(x * mask)


class TwoArguments(TwoInputs):
    def __call__(self, x, mask):
        return self.dense(x * mask)


def test_a_list_of_arrays_with_labels_is_several_inputs_as_keras():
    mask = np.ones_like(X)
    histories = []
    for x in ([X, mask], (X, mask)):
        model = ef.Model(TwoInputs(nnx.Rngs(0)))
        model.compile("adam", "sparse_categorical_crossentropy")
        histories.append(model.fit(x, Y, batch_size=16, verbose=0).history["loss"])
    assert histories[0] == histories[1]


def test_a_module_taking_two_arguments_is_told_to_take_one():
    model = ef.Model(TwoArguments(nnx.Rngs(0)))
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ef.errors.ModuleInputError,
                       match=r"TwoArguments\.__call__\(x, mask\) needs more than one argument.*"
                             r"def __call__\(self, inputs\): x, mask = inputs"):
        model.fit((X, np.ones_like(X)), Y, verbose=0)
