"""grain input and ``tfds.data_source`` (ArrayRecord, random access): training parity with
numpy, partial batches, keys for dict records, and errors inside the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import train_programs
from data_fixtures import (DIGITS_BAR, DIGITS_EPOCHS, BatchCounter, assert_params_close,
                           deadline, digits_data_dir, digits_model, make_data, mlp_model,
                           params_differ, params_of, per_example_loss, MLP)

grain = pytest.importorskip("grain")
tfds = pytest.importorskip("tensorflow_datasets")

from flax import nnx  # noqa: E402
from easyfit.datasets import digits  # noqa: E402


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The ArrayRecord copy of digits, read by tfds.data_source: (train, test)."""
    source_dir = digits.data_dir_for(digits_data_dir(tmp_path_factory), "array_record")
    return (tfds.data_source("digits", split="train", data_dir=source_dir),
            tfds.data_source("digits", split="test", data_dir=source_dir))


def _numpy(source):
    rows = [source[i] for i in range(len(source))]
    return (np.stack([r["image"] for r in rows]),
            np.asarray([r["label"] for r in rows], np.int64))


# ---------------------------------------------------------------------------------------
# a real TFDS dataset through tfds.data_source and grain
# ---------------------------------------------------------------------------------------


def test_data_source_and_grain_train_like_numpy(sources):
    train_src, test_src = sources
    x_train, y_train = _numpy(train_src)
    x_test, y_test = _numpy(test_src)
    assert x_train.dtype == np.uint8 and len(x_train) == 1437

    reference = digits_model()
    reference.fit(x_train, y_train, batch_size=32, epochs=DIGITS_EPOCHS, shuffle=False,
                  verbose=0)
    numpy_acc = reference.evaluate(x_test, y_test, return_dict=True, verbose=0)["accuracy"]
    assert numpy_acc >= DIGITS_BAR

    # 1. the random-access source itself, batched by fit; no shuffle: the numpy run exactly.
    model = digits_model()
    model.fit(train_src, batch_size=32, epochs=DIGITS_EPOCHS, shuffle=False, x_key="image",
              y_key="label", verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-4)
    logs = model.evaluate(test_src, batch_size=128, x_key="image", y_key="label",
                          return_dict=True, verbose=0)
    assert logs["accuracy"] >= DIGITS_BAR

    # 2. a grain pipeline over the source, batched by the user.
    model = digits_model()
    model.fit(grain.MapDataset.source(train_src).batch(32), epochs=DIGITS_EPOCHS,
              x_key="image", y_key="label", verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-4)
    logs = model.evaluate(grain.MapDataset.source(test_src).batch(128), x_key="image",
                          y_key="label", return_dict=True, verbose=0)
    assert logs["accuracy"] >= DIGITS_BAR
    predictions = model.predict(grain.MapDataset.source(test_src).batch(128), x_key="image",
                                verbose=0)
    np.testing.assert_allclose(predictions, reference.predict(x_test, verbose=0), atol=1e-3)


def test_data_source_shuffles_per_epoch_from_the_seed(sources):
    train_src, test_src = sources
    fits = []
    for seed in (0, 0, 1):
        model = digits_model(compile_seed=seed)
        model.fit(train_src, batch_size=32, epochs=1, x_key="image", y_key="label", verbose=0)
        fits.append(params_of(model.module))
    assert_params_close(fits[0], fits[1], atol=0)       # same seed: same order
    assert params_differ(fits[0], fits[2])              # another seed: another order
    unshuffled = digits_model()
    unshuffled.fit(train_src, batch_size=32, epochs=1, shuffle=False, x_key="image",
                   y_key="label", verbose=0)
    assert params_differ(fits[0], params_of(unshuffled.module))


def test_data_source_dicts_need_keys(sources):
    train_src, _ = sources
    model = digits_model()
    with pytest.raises(ValueError, match="x_key"):
        model.fit(train_src, batch_size=32, verbose=0)
    with pytest.raises(ValueError, match="x_key"):
        model.fit(grain.MapDataset.source(train_src).batch(32), verbose=0)


# ---------------------------------------------------------------------------------------
# partial batches
# ---------------------------------------------------------------------------------------


def _pairs(x, y):
    return grain.MapDataset.source(range(len(x))).map(lambda i: (x[i], y[i]))


def test_partial_batches_compile_once_and_exact_loss():
    x, y = make_data(1000)             # 15 batches of 64 and one of 40
    x_val, y_val = make_data(300, seed=1)
    model = mlp_model(lr=0.0)
    module = MLP(rngs=nnx.Rngs(0))
    expected = float(np.mean(per_example_loss(module, x, y)))
    expected_val = float(np.mean(per_example_loss(module, x_val, y_val)))

    history = model.fit(_pairs(x, y).batch(64), epochs=2,
                        validation_data=_pairs(x_val, y_val).batch(64), verbose=0)
    np.testing.assert_allclose(history.history["loss"], [expected] * 2, rtol=1e-5)
    np.testing.assert_allclose(history.history["val_loss"], [expected_val] * 2, rtol=1e-5)
    loss = model.evaluate(_pairs(x, y).batch(64), return_dict=True, verbose=0)["loss"]
    assert loss == pytest.approx(expected, rel=1e-5)
    predictions = model.predict(grain.MapDataset.source(x).batch(64), verbose=0)
    np.testing.assert_allclose(predictions, model.predict(x, batch_size=64, verbose=0),
                               atol=1e-6)
    assert predictions.shape == (1000, 4)

    assert model.trainer.steps.train.cache_size() == train_programs(model)
    assert model.trainer.steps.eval._cache_size() <= train_programs(model)  # see the tf.data twin
    assert model.trainer.steps.predict._cache_size() == 1


def test_predict_1001_rows_in_order():
    x, _ = make_data(1001)
    model = mlp_model()
    predictions = model.predict(grain.MapDataset.source(x).batch(64), verbose=0)
    assert predictions.shape == (1001, 4)
    np.testing.assert_allclose(predictions, model.predict(x, batch_size=64, verbose=0),
                               atol=1e-6)


def test_unbatched_grain_dataset_takes_batch_size_from_fit():
    x, y = make_data(300)
    counter = BatchCounter()
    model = mlp_model(lr=0.1)
    model.fit(_pairs(x, y), batch_size=50, epochs=2, callbacks=[counter], verbose=0)
    assert counter.per_epoch == [6, 6]
    reference = mlp_model(lr=0.1)
    reference.fit(x, y, batch_size=50, epochs=2, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)


def test_grain_iter_dataset_is_reread_each_epoch():
    x, y = make_data(200)
    counter = BatchCounter()
    model = mlp_model(lr=0.1)
    model.fit(_pairs(x, y).to_iter_dataset().batch(64), epochs=3, callbacks=[counter],
              verbose=0)
    assert counter.per_epoch == [4, 4, 4]
    reference = mlp_model(lr=0.1)
    reference.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)


# ---------------------------------------------------------------------------------------
# errors inside the pipeline
# ---------------------------------------------------------------------------------------


def test_error_in_grain_map_reaches_user():
    x, y = make_data(200)

    def read(i):
        if i == 150:  # the first batches are fine; the fifth fails
            raise ValueError(f"boom: bad record {i}")
        return x[i], y[i]

    dataset = grain.MapDataset.source(range(200)).map(read).batch(32)
    with deadline(60, "fit on a failing grain dataset"):
        with pytest.raises(ValueError, match="boom"):
            mlp_model().fit(dataset, epochs=1, verbose=0)


# ---------------------------------------------------------------------------------------
# multi-host readiness of the grain adapter
# ---------------------------------------------------------------------------------------


def test_grain_adapter_gives_each_process_its_rows(sources):
    from easyfit.data.grain_dataset import grain_adapter

    train_src, _ = sources
    whole = grain_adapter(train_src, batch_size=32, steps=None, with_y=True,
                          keys=("image", "label"), epochs=1)
    parts = [grain_adapter(train_src, batch_size=32, steps=None, with_y=True,
                           keys=("image", "label"), epochs=1, process_index=i,
                           process_count=2) for i in range(2)]
    assert whole.batch_size == 32
    assert [p.batch_size for p in parts] == [32, 32]   # global
    reference = [b for b, _ in whole.batches(0)]
    local = [[b for b, _ in p.batches(0)] for p in parts]
    assert len(local[0]) == len(local[1]) == len(reference) == 45
    for j, batch in enumerate(reference):
        chunks = [local[i][j] for i in range(2)]
        assert all(c.mask.shape == (16,) for c in chunks)
        assert sum(int(c.mask.sum()) for c in chunks) == int(batch.mask.sum())
        real = np.concatenate([c.x[c.mask == 1] for c in chunks])
        expected = batch.x[batch.mask == 1]
        # the same images, each once (compare as sorted byte strings)
        assert sorted(r.tobytes() for r in real) == sorted(r.tobytes() for r in expected)
