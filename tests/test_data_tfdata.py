"""tf.data and ``tfds.load`` input: a real local TFDS dataset, mocked MNIST, partial batches,
unbatched pipelines, dict elements, infinite datasets, errors inside the pipeline, and
TensorFlow staying out of ``import easyfit``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from conftest import train_programs
from data_fixtures import (DIGITS_BAR, DIGITS_EPOCHS, MLP, BatchCounter, assert_params_close,
                           deadline, digits_data_dir, digits_model, make_data, mlp_model,
                           params_of, per_example_loss)

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return digits_data_dir(tmp_path_factory)


def _digits_numpy(data_dir, split):
    x, y = tfds.as_numpy(tfds.load("digits", split=split, data_dir=data_dir,
                                   as_supervised=True, batch_size=-1))
    return x, y


# ---------------------------------------------------------------------------------------
# a real TFDS dataset, built locally
# ---------------------------------------------------------------------------------------


def test_tfds_load_trains_like_numpy(digits_dir):
    x_train, y_train = _digits_numpy(digits_dir, "train")
    x_test, y_test = _digits_numpy(digits_dir, "test")
    assert x_train.dtype == np.uint8 and x_train.shape == (1437, 8, 8, 1)

    reference = digits_model()
    reference.fit(x_train, y_train, batch_size=32, epochs=DIGITS_EPOCHS, shuffle=False,
                  verbose=0)
    numpy_acc = reference.evaluate(x_test, y_test, batch_size=128, return_dict=True,
                                   verbose=0)["accuracy"]

    train = tfds.load("digits", split="train", data_dir=digits_dir, as_supervised=True)
    test = tfds.load("digits", split="test", data_dir=digits_dir, as_supervised=True)
    model = digits_model()
    history = model.fit(train.batch(32), epochs=DIGITS_EPOCHS, verbose=0)
    tf_acc = model.evaluate(test.batch(128), return_dict=True, verbose=0)["accuracy"]

    assert numpy_acc >= DIGITS_BAR
    assert tf_acc >= DIGITS_BAR
    assert len(history.history["loss"]) == DIGITS_EPOCHS
    # The same rows in the same order, the same batches: the same training, step for step.
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-4)
    np.testing.assert_allclose(model.predict(test.batch(128), verbose=0),
                               reference.predict(x_test, verbose=0), atol=1e-3)


def test_tfds_mock_mnist_fit_evaluate_predict():
    with tfds.testing.mock_data(num_examples=80):
        train = tfds.load("mnist", split="train", as_supervised=True)
        assert train.element_spec[0].dtype == tf.uint8
        model = ef.Model(MLP(din=28 * 28, hidden=8, dout=10, scale=1 / 255,
                             rngs=nnx.Rngs(0)))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(train.batch(32), epochs=2, verbose=0)
        logs = model.evaluate(train.batch(32), return_dict=True, verbose=0)
        predictions = model.predict(train.batch(32), verbose=0)
    assert len(history.history["loss"]) == 2
    assert np.isfinite(history.history["loss"]).all()
    assert set(logs) == {"loss", "accuracy"} and np.isfinite(logs["loss"])
    assert predictions.shape == (80, 10)


# ---------------------------------------------------------------------------------------
# partial batches: compile once, exact epoch loss, exact predict rows
# ---------------------------------------------------------------------------------------


def test_partial_batches_compile_once_and_exact_loss():
    x, y = make_data(1000)  # 15 batches of 64 and one of 40
    x_val, y_val = make_data(300, seed=1)  # 4 of 64 and one of 44
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(64)
    model = mlp_model(lr=0.0)  # weights stay fixed: the epoch loss is a plain mean
    module = MLP(rngs=nnx.Rngs(0))
    expected = float(np.mean(per_example_loss(module, x, y)))
    expected_val = float(np.mean(per_example_loss(module, x_val, y_val)))

    history = model.fit(train, epochs=2, validation_data=val, verbose=0)
    np.testing.assert_allclose(history.history["loss"], [expected] * 2, rtol=1e-5)
    np.testing.assert_allclose(history.history["val_loss"], [expected_val] * 2, rtol=1e-5)
    np.testing.assert_allclose(model.evaluate(train, verbose=0), [
        expected, np.mean(np.argmax(model.predict(x, batch_size=64, verbose=0), -1) == y)],
        rtol=1e-5)
    predictions = model.predict(train, verbose=0)  # (x, y) elements: y is ignored
    assert predictions.shape == (1000, 4)

    assert model.trainer.steps.train.cache_size() == train_programs(model)
    # eval runs chunks of the train step's size (while "auto" measures single steps, one step,
    # then its choice), so validation in the first epoch may make a second eval program
    assert model.trainer.steps.eval._cache_size() <= train_programs(model)
    assert model.trainer.steps.predict._cache_size() == 1


def test_predict_returns_every_row_in_order():
    x, _ = make_data(1001)
    model = mlp_model()
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(64)  # last batch: 41 rows
    from_dataset = model.predict(dataset, verbose=0)
    from_numpy = model.predict(x, batch_size=64, verbose=0)
    assert from_dataset.shape == (1001, 4)
    np.testing.assert_allclose(from_dataset, from_numpy, atol=1e-6)
    assert model.trainer.steps.predict._cache_size() == 1


# ---------------------------------------------------------------------------------------
# unbatched datasets, dict elements
# ---------------------------------------------------------------------------------------


def test_unbatched_dataset_takes_batch_size_from_fit():
    x, y = make_data(300)
    counter = BatchCounter()
    model = mlp_model(lr=0.1)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)), batch_size=50, epochs=2,
              callbacks=[counter], verbose=0)
    assert counter.per_epoch == [6, 6]
    reference = mlp_model(lr=0.1)
    reference.fit(x, y, batch_size=50, epochs=2, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)


def test_unbatched_dataset_defaults_to_32_rows():
    x, y = make_data(100)
    counter = BatchCounter()
    mlp_model().fit(tf.data.Dataset.from_tensor_slices((x, y)), callbacks=[counter], verbose=0)
    assert counter.per_epoch == [4]  # 32 + 32 + 32 + 4


def test_tfds_dicts_need_keys(digits_dir):
    train = tfds.load("digits", split="train", data_dir=digits_dir)  # dict elements
    model = digits_model()
    with pytest.raises(ValueError, match="as_supervised") as error:
        model.fit(train.batch(64), epochs=1, verbose=0)
    assert "x_key" in str(error.value)
    with pytest.raises(ValueError, match="x_key"):
        model.evaluate(train.batch(64), verbose=0)


def test_tfds_dicts_train_with_keys(digits_dir):
    train = tfds.load("digits", split="train", data_dir=digits_dir)
    supervised = tfds.load("digits", split="train", data_dir=digits_dir, as_supervised=True)
    model, reference = digits_model(), digits_model()
    model.fit(train.batch(64), epochs=1, x_key="image", y_key="label", verbose=0)
    reference.fit(supervised.batch(64), epochs=1, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)
    logs = model.evaluate(train.batch(128), x_key="image", y_key="label", return_dict=True,
                          verbose=0)
    assert logs == pytest.approx(reference.evaluate(supervised.batch(128), return_dict=True,
                                                    verbose=0), rel=1e-5)
    predictions = model.predict(train.batch(128), x_key="image", verbose=0)
    assert predictions.shape == (1437, 10)


def test_unknown_key_is_named():
    x, y = make_data(64)
    dataset = tf.data.Dataset.from_tensor_slices({"features": x, "target": y}).batch(32)
    with pytest.raises(KeyError, match="image"):
        mlp_model().fit(dataset, x_key="image", y_key="target", verbose=0)


# ---------------------------------------------------------------------------------------
# batched pipelines are read as they are (no second batch dimension)
# ---------------------------------------------------------------------------------------


def _pairs(n=100):
    return tf.data.Dataset.from_tensor_slices(make_data(n))


_BATCHED_PIPELINES = {
    "padded_batch": (lambda: _pairs().padded_batch(10), 10),
    "batch_map_prefetch": (lambda: _pairs().batch(10).map(lambda a, b: (a * 1.0, b)).prefetch(2),
                           10),
    "concatenate": (lambda: _pairs().batch(10).concatenate(_pairs().batch(10)), 20),
    "rebatch": (lambda: _pairs().batch(10).rebatch(5), 20),
}

_NESTED_BATCH_PIPELINES = {
    "zip": (lambda: tf.data.Dataset.zip((
        tf.data.Dataset.from_tensor_slices(make_data(100)[0]).batch(10),
        tf.data.Dataset.from_tensor_slices(make_data(100)[1]).batch(10))), 10),
    "sample_from_datasets": (lambda: tf.data.Dataset.sample_from_datasets(
        [_pairs().batch(10), _pairs().batch(10)], seed=0), 20),
    "bucket_by_sequence_length": (lambda: _pairs().bucket_by_sequence_length(
        lambda a, b: 1, bucket_boundaries=[5], bucket_batch_sizes=[10, 10]), 10),
}


@pytest.mark.parametrize("name", [*_BATCHED_PIPELINES, *_NESTED_BATCH_PIPELINES])
def test_batched_pipelines_keep_their_batches(name):
    make, batches = {**_BATCHED_PIPELINES, **_NESTED_BATCH_PIPELINES}[name]
    counter = BatchCounter()
    model = mlp_model()
    model.fit(make(), epochs=1, callbacks=[counter], verbose=0)
    assert counter.per_epoch == [batches]


# ---------------------------------------------------------------------------------------
# infinite datasets
# ---------------------------------------------------------------------------------------


def test_infinite_dataset_without_steps_raises():
    x, y = make_data(64)
    forever = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    model = mlp_model()
    with deadline(60, "fit on an infinite dataset"):
        with pytest.raises(ValueError, match="steps_per_epoch"):
            model.fit(forever, epochs=1, verbose=0)
        with pytest.raises(ValueError, match="steps"):
            model.evaluate(forever, verbose=0)
        with pytest.raises(ValueError, match="steps"):
            model.predict(forever.map(lambda a, b: a), verbose=0)


def test_infinite_dataset_with_steps_per_epoch():
    x, y = make_data(64)
    forever = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    counter = BatchCounter()
    model = mlp_model(lr=0.1)
    with deadline(60, "fit on an infinite dataset"):
        history = model.fit(forever, steps_per_epoch=3, epochs=3, callbacks=[counter],
                            verbose=0)
        assert counter.per_epoch == [3, 3, 3]
        assert len(history.history["loss"]) == 3
        logs = model.evaluate(forever, steps=4, return_dict=True, verbose=0)
    # 4 steps of 16 rows are the 64 rows exactly once.
    module = MLP(rngs=nnx.Rngs(0))
    nnx.update(module, nnx.state(model.module))
    assert logs["loss"] == pytest.approx(float(np.mean(per_example_loss(module, x, y))),
                                         rel=1e-5)


# ---------------------------------------------------------------------------------------
# errors inside the pipeline reach the user
# ---------------------------------------------------------------------------------------


def _boom(value):
    raise ValueError("boom: bad record")


def test_py_function_error_reaches_user():
    x, y = make_data(128)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).map(
        lambda a, b: (tf.py_function(_boom, [a], tf.float32), b))
    with deadline(60, "fit on a failing dataset"):
        with pytest.raises(Exception, match="boom"):
            mlp_model().fit(dataset, epochs=1, verbose=0)


def test_error_after_some_batches_reaches_user():
    x, y = make_data(128)

    def check(a, b):
        tf.debugging.assert_less(tf.reduce_max(b), 100, message="boom: label out of range")
        return a, b

    labels = y.copy()
    labels[100] = 1000
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(32).map(check)
    with deadline(60, "fit on a failing dataset"):
        with pytest.raises(Exception, match="boom"):
            mlp_model().fit(dataset, epochs=1, verbose=0)


def test_dataset_yielding_sample_weights_matches_numpy_sample_weight():
    x, y = make_data(200)
    w = np.random.default_rng(3).uniform(0.0, 2.0, size=200).astype(np.float32)
    model, reference = mlp_model(lr=0.2), mlp_model(lr=0.2)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y, w)).batch(48), epochs=2,
                        verbose=0)
    expected = reference.fit(x, y, sample_weight=w, batch_size=48, epochs=2, shuffle=False,
                             verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)


# ---------------------------------------------------------------------------------------
# import easyfit does not import TensorFlow
# ---------------------------------------------------------------------------------------


def test_import_and_numpy_fit_do_not_import_tensorflow():
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import easyfit as ef
        from flax import nnx
        assert "tensorflow" not in sys.modules, "import easyfit imported tensorflow"
        model = ef.Model(nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
        model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
        x = np.random.rand(40, 4).astype("float32")
        y = np.random.randint(0, 3, 40)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, validation_split=0.25)
        model.evaluate(x, y, verbose=0)
        model.predict(x, verbose=0)
        model.fit([(x[:24], y[:24]), (x[24:], y[24:])], verbose=0)
        leaked = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
        assert not leaked, leaked
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


# ---------------------------------------------------------------------------------------
# multi-host readiness of the tf.data adapter
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_tf_dataset_adapter_gives_each_process_its_rows(batched):
    from easyfit.data.tf_dataset import tf_dataset_adapter

    n = 17   # batches of 8: 8, 8 and 1
    x = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32)
    y = np.arange(n) % 3
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if batched:
        dataset = dataset.batch(8)
    adapters = [tf_dataset_adapter(dataset, batch_size=8, steps=None, with_y=True, keys=None,
                                   epochs=1, process_index=i, process_count=2)
                for i in range(2)]
    assert [a.batch_size for a in adapters] == [8, 8]   # global
    local = [[b for b, _ in a.batches(0)] for a in adapters]
    assert len(local[0]) == len(local[1]) == 3
    for j, expected in enumerate([range(0, 8), range(8, 16), range(16, 17)]):
        parts = [local[i][j] for i in range(2)]
        assert all(p.mask.shape == (4,) for p in parts)
        together = np.concatenate([p.x[p.mask == 1, 0] for p in parts]).astype(int)
        assert sorted(together.tolist()) == list(expected)
