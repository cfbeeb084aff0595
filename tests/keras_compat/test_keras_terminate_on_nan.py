"""keras/src/callbacks/terminate_on_nan_test.py, translated."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import easyfit as ef


def _dense_model() -> ef.Model:
    """``Sequential([Dense(1, input_shape=(1,))])`` with Keras's SGD."""
    model = ef.Model(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(0.01, momentum=0.0), "mse")
    return model


INF_X, INF_Y = np.array([[1.0], [2.0]], np.float32), np.array([[np.inf], [np.inf]], np.float32)


def test_TerminateOnNaN():
    model = ef.Model(nnx.Linear(4, 2, rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(1e30, momentum=0.0), "mse")
    rng = np.random.default_rng(0)
    history = model.fit(rng.random((20, 4), np.float32), rng.random((20, 2), np.float32),
                        batch_size=5, epochs=20, verbose=0,
                        callbacks=[ef.callbacks.TerminateOnNaN()])
    loss = history.history["loss"]
    assert len(loss) == 1
    assert not np.isfinite(loss[0])


def test_terminate_on_nan_graceful_stop():
    history = _dense_model().fit(INF_X, INF_Y, epochs=2, batch_size=1, verbose=0,
                                 callbacks=[ef.callbacks.TerminateOnNaN(raise_error=False)])
    assert len(history.history["loss"]) < 4


def test_terminate_on_nan_raise_error_raises_error():
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered"):
        _dense_model().fit(INF_X, INF_Y, epochs=1, batch_size=1, verbose=0,
                           callbacks=[ef.callbacks.TerminateOnNaN(raise_error=True)])


def test_raise_error_terminate_does_not_trigger_on_train_end():
    ended = []
    tracking = ef.callbacks.LambdaCallback(on_train_end=lambda logs: ended.append(True))
    with pytest.raises(RuntimeError):
        _dense_model().fit(INF_X[:1], INF_Y[:1], epochs=1, verbose=0,
                           callbacks=[tracking, ef.callbacks.TerminateOnNaN(raise_error=True)])
    assert ended == []


def test_raise_error_terminate_preserves_backup(tmp_path):
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    (backup_dir / "checkpoint.txt").write_text("dummy checkpoint")
    with pytest.raises((RuntimeError, ValueError)):
        _dense_model().fit(INF_X[:1], INF_Y[:1], epochs=1, verbose=0, callbacks=[
            ef.callbacks.BackupAndRestore(str(backup_dir)),
            ef.callbacks.TerminateOnNaN(raise_error=True)])
    assert (backup_dir / "checkpoint.txt").read_text() == "dummy checkpoint"


@pytest.mark.parametrize("raise_error", [False, True])
def test_normal_training_does_not_raise(raise_error):
    x = np.array([[1.0], [2.0]], np.float32)
    history = _dense_model().fit(x, x, epochs=2, verbose=0,
                                 callbacks=[ef.callbacks.TerminateOnNaN(raise_error)])
    assert len(history.history["loss"]) == 2


def test_raise_error_terminate_stops_on_later_batch():
    x, y = np.array([[1.0], [2.0]], np.float32), np.array([[1.0], [np.inf]], np.float32)
    with pytest.raises(RuntimeError) as error:
        _dense_model().fit(x, y, epochs=1, batch_size=1, verbose=0,
                           callbacks=[ef.callbacks.TerminateOnNaN(raise_error=True)])
    assert any(f"batch {i}" in str(error.value) for i in (0, 1))
