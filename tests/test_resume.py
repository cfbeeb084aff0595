"""Exact resume with BackupAndRestore: a killed / interrupted fit, rerun with the same
arguments, ends with the weights and History of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from conftest import train_programs
from easyfit.checkpoint import Checkpoints

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "resume_script.py")


# ---------------------------------------------------------------------------------------
# a real SIGKILL, in subprocesses
# ---------------------------------------------------------------------------------------

def _run_script(out, backup, kill_at, save_freq, env):
    return subprocess.Popen([sys.executable, SCRIPT, str(out), str(backup), str(kill_at),
                             str(save_freq)], env=env, cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=240):
    output, _ = proc.communicate(timeout=timeout)
    return proc.returncode, output


def _load(path):
    with np.load(path) as data:
        weights = [data[f"w{i}"] for i in range(sum(k.startswith("w") for k in data.files))]
        before = [data[f"pre{i}"] for i in range(sum(k.startswith("pre") for k in data.files))]
        return weights, before, json.loads(str(data["history"])), int(data["steps"])


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(tmp_path):
    sys.path.insert(0, HERE)
    try:
        import resume_script as script
    finally:
        sys.path.remove(HERE)
    per_epoch, k = script.STEPS_PER_EPOCH, script.STEPS_PER_EXECUTION
    total = per_epoch * script.EPOCHS
    save_freq = 5
    # kills happen at chunk ends (the callback runs once per chunk of k steps); never at an
    # epoch's last step; after step 12, so the backup of step 6 is committed (orbax finishes
    # the previous async save before it starts the next one, at step 12)
    candidates = [s for s in range(k, total, k) if s % per_epoch and s > 12]
    chooser = random.Random("easyfit:test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run")
    kill_at = chooser.choice(candidates)

    env = dict(os.environ)
    # one XLA cache shared by the processes (they compile the same programs)
    env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    backup, reference_backup = tmp_path / "backup", tmp_path / "reference_backup"

    reference = _run_script(tmp_path / "reference.npz", reference_backup, 0, save_freq, env)
    code, output = _finish(_run_script(tmp_path / "resumed.npz", backup, kill_at, save_freq,
                                       env))
    assert code == -signal.SIGKILL, output
    assert not (tmp_path / "resumed.npz").exists()
    committed = Checkpoints(backup, async_save=False).steps()
    assert committed and max(committed) < kill_at, (committed, kill_at)

    code, output = _finish(_run_script(tmp_path / "resumed.npz", backup, 0, save_freq, env))
    assert code == 0, output
    code, output = _finish(reference)
    assert code == 0, output

    weights, before, history, steps = _load(tmp_path / "resumed.npz")
    ref_weights, ref_before, ref_history, ref_steps = _load(tmp_path / "reference.npz")
    assert steps == ref_steps == total
    assert history == ref_history                       # floats compared exactly
    assert history["epoch"] == list(range(script.EPOCHS))
    assert set(history["history"]) == {"loss", "accuracy", "learning_rate", "val_loss", "val_accuracy"}
    for name, got, want in (("final", weights, ref_weights), ("pre-restore", before, ref_before)):
        assert len(got) == len(want) > 0
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} weights differ "
                                                       f"(killed at step {kill_at})")
    # a finished fit deletes its backups
    assert not backup.exists() and not reference_backup.exists()


# ---------------------------------------------------------------------------------------
# in-process interruptions (an exception stops fit), then a fresh model resumes
# ---------------------------------------------------------------------------------------

class BNNet(nnx.Module):
    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.25, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def _data(n=100):
    # 80 training rows / 16 = 5 steps per epoch; with 2 steps per execution the chunks of an
    # epoch end at its steps 2, 4, 5 (the last chunk is one real batch and a filler)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = np.argmax(x[:, :4] + 0.3 * rng.normal(size=(n, 4)), -1).astype(np.int32)
    return x, y


class Interrupted(Exception):
    pass


class InterruptAt(ef.callbacks.Callback):
    def __init__(self, step=None, epoch=None):
        super().__init__()
        self.step, self.epoch = step, epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.step is not None and self.model.trainer.step_count >= self.step:
            raise Interrupted(f"stopped at step {self.model.trainer.step_count}")

    def on_epoch_begin(self, epoch, logs=None):
        if self.epoch is not None and epoch == self.epoch:
            raise Interrupted(f"stopped at epoch {epoch}")


def _fit(backup, *extra, epochs=3, spe=2, callbacks_before=(), scheduled=True, **backup_kw):
    """A fit with BackupAndRestore. Tests share their settings (epochs fix the schedule's
    length, which is compiled in), so each XLA program is compiled once per session."""
    x, y = _data()
    model = ef.Model(BNNet())
    lr = ef.schedules.warmup_cosine(1e-2, warmup=0.25) if scheduled else 3e-3
    model.compile(ef.optimizers.adamw(lr),
                  "sparse_categorical_crossentropy", ["accuracy"], steps_per_execution=spe)
    callbacks = [*extra, *callbacks_before,
                 ef.callbacks.BackupAndRestore(backup, **backup_kw)]
    history = model.fit(x, y, batch_size=16, epochs=epochs, validation_split=0.2, verbose=0,
                        callbacks=callbacks)
    return model, history


def _assert_same_run(model, history, reference, ref_history):
    assert history.epoch == ref_history.epoch
    assert history.history == ref_history.history
    assert model.trainer.step_count == reference.trainer.step_count
    assert model.trainer.steps.train.cache_size() == train_programs(model)      # the restored state compiles nothing new
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_interrupted_fit_resumes_exactly_even_twice(tmp_path):
    reference, ref_history = _fit(tmp_path / "ref", save_freq=3)
    assert not (tmp_path / "ref").exists()

    # backups at chunk ends >= 3 steps apart: 4, 7, 10, 12, ...; stopped at 9: the last
    # backup is step 7, in the middle of epoch 1
    with pytest.raises(Interrupted):
        _fit(tmp_path / "backup", InterruptAt(step=9), save_freq=3)
    assert Checkpoints(tmp_path / "backup", async_save=False).steps() == [7]
    # resumed from 7, stopped again at 12 (backup 10 at the epoch end is the last)
    with pytest.raises(Interrupted):
        _fit(tmp_path / "backup", InterruptAt(step=12), save_freq=3)
    assert Checkpoints(tmp_path / "backup", async_save=False).steps() == [10]

    resumed, history = _fit(tmp_path / "backup", save_freq=3)
    _assert_same_run(resumed, history, reference, ref_history)
    assert not (tmp_path / "backup").exists()


def test_interrupted_fit_with_steps_per_execution_1(tmp_path):
    reference, ref_history = _fit(tmp_path / "ref", save_freq=4, spe=1)
    with pytest.raises(Interrupted):
        _fit(tmp_path / "backup", InterruptAt(step=7), save_freq=4, spe=1)
    assert Checkpoints(tmp_path / "backup", async_save=False).steps() == [4]
    resumed, history = _fit(tmp_path / "backup", save_freq=4, spe=1)
    _assert_same_run(resumed, history, reference, ref_history)


class Inject(ef.callbacks.Callback):
    def __init__(self, key, values):
        super().__init__()
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = float(self.values[epoch])


def test_resume_restores_callback_and_history_state(tmp_path):
    # uninterrupted: best at epoch 1; the LR halves after epoch 3 (patience 2); training
    # stops at epoch 4 (patience 3)
    seq = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99]

    def run(*extra):
        stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=3,
                                             restore_best_weights=True)
        plateau = ef.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=2, factor=0.5)
        model, history = _fit(tmp_path / "backup", *extra, epochs=len(seq), scheduled=False,
                              callbacks_before=[Inject("val_loss", seq), plateau, stopper])
        return model, history, stopper

    reference, ref_history, ref_stopper = run()
    assert ref_history.epoch == [0, 1, 2, 3, 4] and ref_stopper.best_epoch == 1

    with pytest.raises(Interrupted):
        run(InterruptAt(epoch=3))     # backups after epochs 0, 1, 2: wait=1, best=0.9
    resumed, history, stopper = run()
    assert history.epoch == [0, 1, 2, 3, 4]             # the wait counter came back
    assert history.history["val_loss"] == seq[:5]        # so did the History of epochs 0-2
    assert stopper.best == 0.9 and stopper.best_epoch == 1 and stopper.stopped_epoch == 4
    # ReduceLROnPlateau's wait counter came back: the reduction still happens after epoch 3
    assert history.history["learning_rate"][2] == pytest.approx(3e-3)
    assert history.history["learning_rate"][4] == pytest.approx(1.5e-3)
    assert resumed.optimizer.learning_rate == pytest.approx(1.5e-3)
    _assert_same_run(resumed, history, reference, ref_history)   # best weights came back too


def test_backup_kept_with_delete_checkpoint_false_and_a_finished_run_is_not_redone(tmp_path):
    model, history = _fit(tmp_path / "backup", epochs=2, scheduled=False,
                          delete_checkpoint=False)
    assert (tmp_path / "backup").exists()
    assert Checkpoints(tmp_path / "backup", async_save=False).steps() == [10]
    # rerunning restores the finished state: no epoch left to run, History as before
    again, history2 = _fit(tmp_path / "backup", epochs=2, scheduled=False,
                           delete_checkpoint=False)
    assert again.trainer.step_count == 10
    assert history2.history == history.history
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_backup_and_restore_rejects_a_bad_save_freq(tmp_path):
    with pytest.raises(ValueError, match="save_freq"):
        ef.callbacks.BackupAndRestore(tmp_path, save_freq=0)
