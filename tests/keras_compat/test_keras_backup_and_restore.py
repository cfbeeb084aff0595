"""keras/src/callbacks/backup_and_restore_test.py, translated.

Deliberate differences: a resumed run continues exactly where the backup was taken, so the
canary's count is that of an uninterrupted run (Keras's step case counts some batches
twice); and BackupAndRestore runs after the other callbacks (it saves their final state), so
an exception raised in another callback's ``on_epoch_end`` comes before that epoch's backup
and the epoch is run again on resume. The History is restored too: it lists every epoch, as
an uninterrupted run's would."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import easyfit as ef


class Counter(nnx.Variable):
    """A non-trainable variable, as Keras's ``add_weight(trainable=False)``."""


class CanaryModel(nnx.Module):
    """``Sequential([Input((3,)), CanaryLayer(), Dense(1)])``: counts training calls."""

    def __init__(self):
        self.counter = Counter(jnp.zeros((), jnp.float32))
        self.dense = nnx.Linear(3, 1, rngs=nnx.Rngs(0))

    def __call__(self, x):
        self.counter.value = self.counter.value + 1
        return self.dense(x)


class InterruptingCallback(ef.callbacks.Callback):
    def __init__(self, steps_int=None, epoch_int=None):
        super().__init__()
        self.batch_count = self.epoch_count = 0
        self.steps_int, self.epoch_int = steps_int, epoch_int

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_count += 1
        if self.epoch_int is not None and self.epoch_count == self.epoch_int:
            raise RuntimeError("EpochInterruption")

    def on_batch_end(self, batch, logs=None):
        self.batch_count += 1
        if self.steps_int is not None and self.batch_count == self.steps_int:
            raise RuntimeError("StepsInterruption")


def _make_model():
    model = ef.Model(CanaryModel())
    model.compile(ef.optimizers.sgd(0.01, momentum=0.0), "mse", ["mse"])
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.random((10, 3), np.float32), rng.random((10, 1), np.float32)


def _counter(model) -> int:
    return int(model.module.counter.value)


def test_save_freq_unknown_error():
    with pytest.raises(ValueError, match="Invalid value"):
        ef.callbacks.BackupAndRestore(backup_dir="backup_dir", save_freq="batch")
    with pytest.raises(ValueError, match="Invalid value"):
        ef.callbacks.BackupAndRestore(backup_dir="backup_dir", save_freq=0.15)


def test_best_case_step(tmp_path):
    backup_dir = str(tmp_path / "subdir")
    model, (x, y) = _make_model(), _data()
    backup = ef.callbacks.BackupAndRestore(backup_dir, save_freq=1)
    with pytest.raises(RuntimeError, match="StepsInterruption"):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0,
                  callbacks=[backup, InterruptingCallback(steps_int=2)])
    assert os.path.exists(backup_dir)
    assert _counter(model) == 2
    model = _make_model()  # a new process would start from a new model
    history = model.fit(x, y, batch_size=4, callbacks=[backup], epochs=5, verbose=0)
    assert history.epoch[-1] == 4
    assert _counter(model) == 5 * 3


def test_best_case_epoch(tmp_path):
    backup_dir = str(tmp_path / "subdir")
    model, (x, y) = _make_model(), _data()
    assert _counter(model) == 0
    backup = ef.callbacks.BackupAndRestore(backup_dir=backup_dir, save_freq="epoch")
    with pytest.raises(RuntimeError, match="EpochInterruption"):
        model.fit(x, y, batch_size=4, epochs=6, verbose=0,
                  callbacks=[backup, InterruptingCallback(epoch_int=2)])
    assert os.path.exists(backup_dir)
    assert _counter(model) == 6
    model, begun = _make_model(), []
    history = model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[
        backup, ef.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: begun.append(e))])
    assert begun == [1, 2, 3, 4]  # the epoch whose end raised runs again
    assert history.epoch == [0, 1, 2, 3, 4]
    assert _counter(model) == 5 * 3


def test_backup_corrupted(tmp_path):
    """Keras's double_checkpoint: the newest backup damaged, the one before is used."""
    backup_dir = tmp_path / "subdir"
    model, (x, y) = _make_model(), _data()
    backup = ef.callbacks.BackupAndRestore(str(backup_dir), save_freq="epoch",
                                           double_checkpoint=True)
    with pytest.raises(RuntimeError):
        model.fit(x, y, batch_size=4, epochs=6, verbose=0,
                  callbacks=[backup, InterruptingCallback(epoch_int=3)])
    steps = sorted((p for p in backup_dir.iterdir() if p.name.isdigit()),
                   key=lambda p: int(p.name))
    assert len(steps) == 2
    for file in steps[-1].rglob("*"):  # damage the newest backup
        if file.is_file():
            file.write_bytes(b"garbage")
    model, begun = _make_model(), []
    with pytest.warns(UserWarning, match="damaged"):
        model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[
            backup, ef.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: begun.append(e))])
    assert begun == [1, 2, 3, 4]  # from the backup before the damaged one
    assert _counter(model) == 5 * 3


def test_model_deleted_case_epoch(tmp_path):
    backup_dir = str(tmp_path / "subdir")
    x, y = _data()
    _make_model().fit(x, y, batch_size=4, epochs=2, verbose=0,
                      callbacks=[ef.callbacks.BackupAndRestore(backup_dir, save_freq="epoch")])
    assert not os.path.exists(backup_dir)


@pytest.mark.parametrize("backup_dir", ["", None])
def test_backup_dir_empty_error(backup_dir):
    with pytest.raises(ValueError, match="Empty `backup_dir` argument passed"):
        ef.callbacks.BackupAndRestore(backup_dir=backup_dir, save_freq="epoch")
