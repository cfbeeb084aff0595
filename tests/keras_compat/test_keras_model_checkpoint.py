"""keras/src/callbacks/model_checkpoint_test.py, translated: easyfit writes orbax checkpoint
directories where Keras writes ``.keras`` / ``.weights.h5`` files, at the same paths."""

from __future__ import annotations

import os

import numpy as np
import pytest

import easyfit as ef
from keras_like import Dense2


def _model_and_data():
    rng = np.random.default_rng(0)
    x, y = rng.random((30, 4), np.float32), rng.integers(0, 3, 30).astype(np.int32)
    model = ef.Model(Dense2(4, 8, 3))
    model.compile(ef.optimizers.sgd(0.01, momentum=0.0), "sparse_categorical_crossentropy",
                  ["acc"])
    return model, (x, y), (x[:10], y[:10])


def _fit(callback, epochs=1, batch_size=6):
    model, train, validation = _model_and_data()
    model.fit(*train, batch_size=batch_size, validation_data=validation, callbacks=[callback],
              epochs=epochs, verbose=0)
    return model


def test_model_checkpoint_options(tmp_path):
    # Case 1-4: a checkpoint is written, best only or not, each mode
    for mode, monitor, best_only in [("auto", "val_loss", False), ("min", "val_loss", True),
                                     ("max", "val_acc", True), ("auto", "val_acc", True)]:
        path = str(tmp_path / f"{mode}-{monitor}-{best_only}")
        _fit(ef.callbacks.ModelCheckpoint(path, monitor=monitor, save_best_only=best_only,
                                          mode=mode))
        assert os.path.exists(path)
    # Case 5: metric not available: warns, saves nothing
    path = str(tmp_path / "missing")
    with pytest.warns(UserWarning, match="only with unknown available"):
        _fit(ef.callbacks.ModelCheckpoint(path, monitor="unknown", save_best_only=True,
                                          mode="min"))
    # Case 8a: an integer save_freq counts batches (5 per epoch here): epochs 3, 6, 9
    path = str(tmp_path / "checkpoint.epoch{epoch:02d}")
    _fit(ef.callbacks.ModelCheckpoint(path, save_freq=15), epochs=10)
    assert [os.path.exists(path.format(epoch=e)) for e in range(1, 10)] == \
        [False, False, True, False, False, True, False, False, True]
    # Case 9: valid and invalid save_freq
    with pytest.raises(ValueError, match="Unrecognized save_freq"):
        ef.callbacks.ModelCheckpoint(path, save_freq="invalid_save_freq")
    ef.callbacks.ModelCheckpoint(path, save_freq="epoch")
    ef.callbacks.ModelCheckpoint(path, save_freq=3)


def test_model_checkpoint_batch_and_metric_in_filename(tmp_path):
    # Case 10a, and Keras's {val_loss:.2f}
    path = str(tmp_path / "checkpoint.epoch{epoch:02d}batch{batch:02d}")
    _fit(ef.callbacks.ModelCheckpoint(path, save_freq=1), epochs=2, batch_size=15)
    for epoch in (1, 2):
        for batch in (1, 2):
            assert os.path.exists(path.format(epoch=epoch, batch=batch))
    path = str(tmp_path / "weights.{epoch:02d}-{val_loss:.2f}")
    _fit(ef.callbacks.ModelCheckpoint(path), epochs=1)
    assert len(list(tmp_path.glob("weights.01-*"))) == 1
    with pytest.raises(KeyError, match="val_nothing"):
        _fit(ef.callbacks.ModelCheckpoint(str(tmp_path / "{val_nothing}")), epochs=1)


@pytest.mark.parametrize("mode, monitor, threshold, saved", [
    ("max", "val_acc", -0.01, True),     # Case 11
    ("auto", "val_loss", None, True),    # Case 12
    ("min", "val_loss", 0, False),       # Case 13
    ("auto", "val_loss", 0, False),      # Case 14
    ("max", "val_acc", 1.01, False)])
def test_initial_value_threshold(tmp_path, mode, monitor, threshold, saved):
    path = str(tmp_path / "checkpoint")
    _fit(ef.callbacks.ModelCheckpoint(path, monitor=monitor, save_best_only=True,
                                      initial_value_threshold=threshold, mode=mode))
    assert (os.path.exists(path) and any(os.scandir(path))) == saved


def test_model_checkpoint_loading(tmp_path):
    model = _fit(ef.callbacks.ModelCheckpoint(str(tmp_path / "ckpt"), save_weights_only=True))
    fresh = _model_and_data()[0]
    fresh.load_weights(str(tmp_path / "ckpt"))
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
