"""Orbax checkpoints: ModelCheckpoint retention (best N + latest), load_weights, damaged and
foreign checkpoints, unwritable directories, save_weights / load_weights round trips."""

from __future__ import annotations

import gc
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from easyfit.checkpoint import CheckpointError, Checkpoints

# Refused / damaged restores warn (tests that check the warning use pytest.warns), and orbax
# leaves coroutines of failed reads behind that are collected during later tests.
pytestmark = [pytest.mark.filterwarnings("ignore:Checkpoint step .* is damaged:UserWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]



@pytest.fixture(autouse=True)
def _collect_orbax_leftovers():
    yield
    gc.collect()   # here, under this module's filters, not in a later test


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


class Net(nnx.Module):
    def __init__(self, hidden: int = 16, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(8, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


class Deeper(nnx.Module):
    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)
        self.l3 = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return self.l3(self.l2(nnx.relu(self.l1(x))))


class BNNet(nnx.Module):
    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def data(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = np.argmax(x[:, :4] + 0.5 * rng.normal(size=(n, 4)), -1).astype(np.int32)
    return x, y


def model_of(module=None, metrics=("accuracy",)) -> ef.Model:
    model = ef.Model(module if module is not None else Net())
    model.compile(ef.optimizers.sgd(0.1, momentum=0.9), "sparse_categorical_crossentropy",
                  list(metrics))
    return model


class Inject(ef.callbacks.Callback):
    def __init__(self, key, values):
        super().__init__()
        self.key, self.values = key, list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = float(self.values[epoch])


class Record(ef.callbacks.Callback):
    """Weights and an evaluate result on held-out data at each epoch end."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y
        self.weights, self.results = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        self.results.append(self.model.evaluate(self.x, self.y, batch_size=10, verbose=0,
                                                return_dict=True))


def same_weights(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def steps_in(directory) -> list[int]:
    return Checkpoints(directory, async_save=False).steps()


def step_dirs(directory) -> list[int]:
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def run_with_checkpoint(tmp_path, values, key="val_loss", epochs=None, **ckpt_kw):
    """6 epochs x 2 steps: checkpoint steps are 2, 4, ..., 12 (epoch e -> step 2e + 2)."""
    x, y = data(40)
    xv, yv = data(20, seed=1)
    record = Record(xv, yv)
    model = model_of()
    ckpt = ef.callbacks.ModelCheckpoint(tmp_path / "ckpt", **ckpt_kw)
    history = model.fit(x, y, batch_size=20, epochs=epochs or len(values), verbose=0,
                        callbacks=[Inject(key, values), record, ckpt])
    return model, history, record, (xv, yv)


# ---------------------------------------------------------------------------------------
# ModelCheckpoint retention and load_weights
# ---------------------------------------------------------------------------------------



def test_model_checkpoint_keeps_the_best_two_and_the_latest(tmp_path):
    seq = [0.5, 0.3, 0.4, 0.2, 0.6, 0.7]          # best: epoch 3 (step 8), epoch 1 (step 4)
    model, history, record, (xv, yv) = run_with_checkpoint(
        tmp_path, seq, monitor="val_loss", keep_best=2, keep_latest=1)
    assert history.history["val_loss"] == seq
    assert steps_in(tmp_path / "ckpt") == [4, 8, 12]
    assert step_dirs(tmp_path / "ckpt") == [4, 8, 12]
    assert glob.glob(str(tmp_path / "ckpt" / "*tmp*")) == []

    # step= picks one: the evaluate result of that epoch, exactly
    fresh = model_of(Net(seed=7))
    fresh.load_weights(tmp_path / "ckpt", step=8)
    assert same_weights(fresh.get_weights(), record.weights[3])
    assert fresh.evaluate(xv, yv, batch_size=10, verbose=0, return_dict=True) == record.results[3]
    fresh.load_weights(tmp_path / "ckpt", step=4)
    assert same_weights(fresh.get_weights(), record.weights[1])
    assert fresh.evaluate(xv, yv, batch_size=10, verbose=0, return_dict=True) == record.results[1]
    fresh.load_weights(tmp_path / "ckpt", step=12)
    assert same_weights(fresh.get_weights(), model.get_weights())
    with pytest.raises(CheckpointError, match="step 6"):
        fresh.load_weights(tmp_path / "ckpt", step=6)       # deleted by the retention


def test_model_checkpoint_mode_max_and_auto_keep_the_largest(tmp_path):
    seq = [0.1, 0.5, 0.3, 0.7, 0.2, 0.4]          # best: epoch 3 (step 8), epoch 1 (step 4)
    run_with_checkpoint(tmp_path / "max", seq, key="val_score", monitor="val_score",
                        mode="max", keep_best=2, keep_latest=1)
    assert steps_in(tmp_path / "max" / "ckpt") == [4, 8, 12]
    # "auto" maximises accuracy-like names
    run_with_checkpoint(tmp_path / "auto", seq, key="val_accuracy", monitor="val_accuracy",
                        keep_best=1, keep_latest=1)
    assert steps_in(tmp_path / "auto" / "ckpt") == [8, 12]


@pytest.mark.parametrize("mode, seq", [("min", [0.5, 0.3, 0.4, 0.2, 0.6, 0.7]),
                                       ("max", [0.1, 0.5, 0.3, 0.7, 0.2, 0.4])])
def test_load_weights_of_a_checkpoint_directory_loads_the_best(tmp_path, mode, seq):
    # best: epoch 3 (step 8); the latest, step 12, is worse
    _, _, record, (xv, yv) = run_with_checkpoint(tmp_path, seq, key="val_score",
                                                 monitor="val_score", mode=mode, keep_best=2,
                                                 keep_latest=1)
    assert Checkpoints(tmp_path / "ckpt", async_save=False).best_step() == 8
    fresh = model_of(Net(seed=7))
    fresh.load_weights(tmp_path / "ckpt")
    assert fresh.evaluate(xv, yv, batch_size=10, verbose=0, return_dict=True) == record.results[3]
    assert same_weights(fresh.get_weights(), record.weights[3])


def test_a_second_fit_into_the_same_directory_keeps_the_earlier_best(tmp_path):
    x, y = data(40)
    model = model_of()
    model.fit(x, y, batch_size=20, epochs=3, verbose=0, callbacks=[
        Inject("val_loss", [0.1, 0.5, 0.6]),
        ef.callbacks.ModelCheckpoint(tmp_path / "ckpt", keep_best=1, keep_latest=1)])
    assert steps_in(tmp_path / "ckpt") == [2, 6]
    model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[
        Inject("val_loss", [0.7, 0.8]),
        ef.callbacks.ModelCheckpoint(tmp_path / "ckpt", keep_best=1, keep_latest=1)])
    assert steps_in(tmp_path / "ckpt") == [2, 10]    # the best (0.1) and the latest


def test_model_checkpoint_on_real_val_loss_loads_the_best_epoch_exactly(tmp_path):
    x, y = data(100)
    model = model_of()
    history = model.fit(x, y, batch_size=20, epochs=5, verbose=0, validation_split=0.2,
                        callbacks=[ef.callbacks.ModelCheckpoint(tmp_path / "ckpt",
                                                                keep_best=1, keep_latest=1)])
    val_loss = history.history["val_loss"]
    best = int(np.argmin(val_loss))
    assert best != len(val_loss) - 1                  # (here the last epoch is worse)
    assert Checkpoints(tmp_path / "ckpt", async_save=False).best_step() == 4 * (best + 1)
    fresh = model_of(Net(seed=7))
    fresh.load_weights(tmp_path / "ckpt")
    # the validation split is the last 20 rows; same batches, same programs: same numbers
    result = fresh.evaluate(x[80:], y[80:], batch_size=20, verbose=0, return_dict=True)
    assert result["loss"] == val_loss[best]
    assert result["accuracy"] == history.history["val_accuracy"][best]


def test_model_checkpoint_save_best_only(tmp_path):
    seq = [0.5, 0.3, 0.4, 0.2, 0.6, 0.7]          # improvements at epochs 0, 1, 3
    _, _, record, _ = run_with_checkpoint(tmp_path, seq, monitor="val_loss",
                                          save_best_only=True, keep_best=5, keep_latest=1)
    assert steps_in(tmp_path / "ckpt") == [2, 4, 8]
    fresh = model_of(Net(seed=7))
    fresh.load_weights(tmp_path / "ckpt")
    assert same_weights(fresh.get_weights(), record.weights[3])


def test_model_checkpoint_save_best_only_keeps_only_the_newest_best_by_default(tmp_path):
    seq = [0.5, 0.3, 0.4, 0.2, 0.6, 0.7]
    run_with_checkpoint(tmp_path, seq, monitor="val_loss", save_best_only=True)
    assert steps_in(tmp_path / "ckpt") == [8]


def test_model_checkpoint_save_freq_in_steps(tmp_path):
    x, y = data(100)                               # 5 steps per epoch
    ckpt = ef.callbacks.ModelCheckpoint(tmp_path / "ckpt", monitor="loss", save_freq=3,
                                        keep_best=None, keep_latest=10)
    model = model_of()
    model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[ckpt])
    assert steps_in(tmp_path / "ckpt") == [3, 6, 9]


def test_model_checkpoint_weights_only_is_loadable(tmp_path):
    seq = [0.5, 0.3]
    model, _, record, _ = run_with_checkpoint(tmp_path, seq, monitor="val_loss",
                                              save_weights_only=True, keep_latest=2)
    assert not any(os.path.isdir(p) for p in glob.glob(str(tmp_path / "ckpt" / "*" / "train")))
    fresh = model_of(Net(seed=7))
    fresh.load_weights(tmp_path / "ckpt")
    assert same_weights(fresh.get_weights(), record.weights[1])


def test_load_weights_from_an_empty_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        model_of().load_weights(tmp_path / "empty")


# ---------------------------------------------------------------------------------------
# damaged checkpoints fall back to the previous one, with a warning naming the step
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    """ModelCheckpoint steps 2, 4, 6, the newest the best; and the weights of each epoch."""
    root = tmp_path_factory.mktemp("three")
    _, _, record, _ = run_with_checkpoint(root, [0.5, 0.4, 0.3], monitor="val_loss",
                                          keep_best=3, keep_latest=1)
    assert steps_in(root / "ckpt") == [2, 4, 6]
    return root / "ckpt", record.weights


def _damage(step_dir, how):
    files = [f for f in glob.glob(os.path.join(step_dir, "weights", "**"), recursive=True)
             if os.path.isfile(f)]
    assert files
    for path in files:
        if how == "truncate":
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
        elif how == "garbage":
            with open(path, "wb") as handle:
                handle.write(b"\x00not a checkpoint\xff" * 7)
        elif how == "empty":
            open(path, "wb").close()
        elif how == "data-missing" and f"{os.sep}d{os.sep}" in path:
            os.remove(path)


@pytest.mark.parametrize("how", ["truncate", "garbage", "empty", "data-missing"])
def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, three_checkpoints, how):
    source, weights = three_checkpoints
    directory = tmp_path / "ckpt"
    shutil.copytree(source, directory)
    _damage(directory / "6", how)
    fresh = model_of(Net(seed=7))
    with pytest.warns(UserWarning, match=r"step 6\b.*damaged"):
        fresh.load_weights(directory)
    assert same_weights(fresh.get_weights(), weights[1])     # step 4 = epoch 1


def test_damaged_checkpoints_fall_back_through_several_steps(tmp_path, three_checkpoints):
    source, weights = three_checkpoints
    directory = tmp_path / "ckpt"
    shutil.copytree(source, directory)
    _damage(directory / "6", "garbage")
    _damage(directory / "4", "truncate")
    fresh = model_of(Net(seed=7))
    with pytest.warns(UserWarning) as caught:
        fresh.load_weights(directory)
    messages = " ".join(str(w.message) for w in caught)
    assert "step 6" in messages and "step 4" in messages
    assert same_weights(fresh.get_weights(), weights[0])


def test_all_checkpoints_damaged_is_an_error(tmp_path, three_checkpoints):
    source, _ = three_checkpoints
    directory = tmp_path / "ckpt"
    shutil.copytree(source, directory)
    for step in (2, 4, 6):
        _damage(directory / str(step), "garbage")
    before = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="damaged") as info:
        model_of(Net(seed=7)).load_weights(directory)
    message = str(info.value)
    assert r"steps [2, 4, 6]" in message and "move that directory aside" in message
    assert "keep_latest=2" in message
    assert sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) == before


def test_an_unfinished_save_is_ignored(tmp_path, three_checkpoints):
    # what a crash during an orbax save leaves behind: a temporary directory, never a step
    source, weights = three_checkpoints
    directory = tmp_path / "ckpt"
    shutil.copytree(source, directory)
    shutil.copytree(directory / "6", directory / "8.orbax-checkpoint-tmp")
    _damage(directory / "8.orbax-checkpoint-tmp", "truncate")
    assert steps_in(directory) == [2, 4, 6]
    fresh = model_of(Net(seed=7))
    fresh.load_weights(directory)
    assert same_weights(fresh.get_weights(), weights[2])


# ---------------------------------------------------------------------------------------
# a checkpoint of another model is refused, naming the parameters
# ---------------------------------------------------------------------------------------

def test_checkpoint_of_another_model_is_refused_and_nothing_is_loaded(tmp_path):
    model_of(Net(hidden=16)).save_weights(tmp_path / "w")
    big = model_of(Net(hidden=32))
    before = big.get_weights()
    with pytest.raises(CheckpointError):
        big.load_weights(tmp_path / "w")
    assert same_weights(big.get_weights(), before)
    model_of(Deeper()).save_weights(tmp_path / "deeper")
    with pytest.raises(CheckpointError):
        model_of(Net()).load_weights(tmp_path / "deeper")


def test_checkpoint_of_a_model_with_other_sizes_names_the_parameters(tmp_path):
    model_of(Net(hidden=16)).save_weights(tmp_path / "w")
    big = model_of(Net(hidden=32))
    with pytest.raises(CheckpointError) as info:
        big.load_weights(tmp_path / "w")
    message = str(info.value)
    for path in ("l1/kernel", "l1/bias", "l2/kernel"):
        assert path in message, message
    assert "(8, 16)" in message and "(8, 32)" in message
    assert "l2/bias" not in message                 # that one fits: (4,) in both
    assert "damaged" not in message


def test_checkpoint_of_a_model_with_other_layers_names_the_parameters(tmp_path):
    model_of(Deeper()).save_weights(tmp_path / "deeper")
    with pytest.raises(CheckpointError, match="l3/kernel"):
        model_of(Net()).load_weights(tmp_path / "deeper")
    model_of(Net()).save_weights(tmp_path / "net")
    with pytest.raises(CheckpointError, match="l3/kernel"):
        model_of(Deeper()).load_weights(tmp_path / "net")


def _backup_then_other_model(tmp_path):
    x, y = data(40)
    backup = tmp_path / "backup"
    model_of(Net(hidden=16)).fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[
        ef.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])
    assert steps_in(backup) == [2]
    other = model_of(Net(hidden=32))
    with pytest.raises(CheckpointError) as info:
        other.fit(x, y, batch_size=20, epochs=2, verbose=0,
                  callbacks=[ef.callbacks.BackupAndRestore(backup)])
    assert other.trainer.step_count == 0
    assert steps_in(backup) == [2]                  # the backup is kept
    return str(info.value)


def test_backup_of_another_model_is_refused_and_kept(tmp_path):
    _backup_then_other_model(tmp_path)


def test_backup_of_another_model_is_refused_naming_the_parameters(tmp_path):
    assert "l1/kernel" in _backup_then_other_model(tmp_path)


# ---------------------------------------------------------------------------------------
# unwritable directories
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda d: ef.callbacks.ModelCheckpoint(d),
    lambda d: ef.callbacks.BackupAndRestore(d),
], ids=["ModelCheckpoint", "BackupAndRestore"])
def test_checkpoint_directory_under_a_file_fails_before_training(tmp_path, make):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    x, y = data(40)
    model = model_of()
    with pytest.raises(CheckpointError) as info:
        model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[make(blocker / "ckpt")])
    assert str(blocker / "ckpt") in str(info.value)
    assert model.trainer.step_count == 0
    assert blocker.read_text() == "not a directory"


def test_save_weights_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="Cannot write checkpoints"):
        model_of().save_weights(blocker / "w")
    with pytest.raises(CheckpointError, match="It is a file: checkpoints are directories"):
        model_of().save_weights(blocker)
    assert blocker.read_text() == "x"


_WRITE_FAILURE_SCRIPT = textwrap.dedent('''
    import json, os, resource, signal, sys
    import numpy as np
    from flax import nnx
    import easyfit as ef

    class Net(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.l1 = nnx.Linear(8, 16, rngs=rngs)
            self.l2 = nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    root = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    y = rng.integers(0, 4, 40).astype(np.int32)
    results = {}
    for name, async_save in (("sync", False), ("async", True)):
        directory = os.path.join(root, name)
        model = ef.Model(Net())
        model.compile(ef.optimizers.sgd(0.1), "sparse_categorical_crossentropy")
        ckpt = lambda: ef.callbacks.ModelCheckpoint(directory, monitor="loss", keep_best=None,
                                                    keep_latest=5, async_save=async_save)
        model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[ckpt()])
        np.savez(os.path.join(root, name + ".npz"), *model.get_weights())
        # from now on no file may grow past 64 bytes: every checkpoint write fails
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
        try:
            model.fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[ckpt()])
            results[name] = {"raised": None}
        except BaseException as error:
            results[name] = {"raised": type(error).__name__, "message": str(error),
                             "notes": getattr(error, "__notes__", [])}
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    with open(os.path.join(root, "results.json"), "w") as handle:
        json.dump(results, handle)
''')


@pytest.fixture(scope="module")
def write_failure(tmp_path_factory):
    """Checkpoints at steps 2 and 4, then a fit whose checkpoint write fails (no file may
    grow past 64 bytes: RLIMIT_FSIZE, in a subprocess), with sync and async saves."""
    root = tmp_path_factory.mktemp("write_failure")
    script = root / "script.py"
    script.write_text(_WRITE_FAILURE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(root)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, json.loads((root / "results.json").read_text())


def _check_earlier_checkpoints_intact(root, name):
    directory = root / name
    assert steps_in(directory) == [2, 4]
    with np.load(root / f"{name}.npz") as saved:
        expected = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    fresh = model_of(Net(seed=3))
    fresh.load_weights(directory, step=4)
    assert same_weights(fresh.get_weights(), expected)


def test_failed_checkpoint_write_is_a_clear_error_and_keeps_earlier_ones(write_failure):
    root, results = write_failure
    result = results["sync"]
    assert result["raised"] == "CheckpointError", result
    assert "step 6" in result["message"] and str(root / "sync") in result["message"]
    assert any("ModelCheckpoint" in note for note in result["notes"])
    _check_earlier_checkpoints_intact(root, "sync")


def test_failed_async_checkpoint_write_keeps_earlier_ones(write_failure):
    root, _ = write_failure
    _check_earlier_checkpoints_intact(root, "async")


def test_failed_async_checkpoint_write_is_a_clear_error(write_failure):
    root, results = write_failure
    result = results["async"]
    assert result["raised"] == "CheckpointError", result
    assert str(root / "async") in result["message"]


# ---------------------------------------------------------------------------------------
# save_weights / load_weights
# ---------------------------------------------------------------------------------------

def test_save_and_load_weights_into_a_fresh_model_is_bit_identical(tmp_path):
    x, y = data(60)
    model = model_of(BNNet(seed=0))
    model.fit(x, y, batch_size=20, epochs=2, verbose=0)
    model.save_weights(tmp_path / "w")
    expected = model.predict(x, batch_size=20, verbose=0)

    fresh = ef.Model(BNNet(seed=1))          # same code, other initial weights; not compiled
    assert not np.array_equal(fresh.predict(x, batch_size=20, verbose=0), expected)
    fresh.load_weights(tmp_path / "w")
    np.testing.assert_array_equal(fresh.predict(x, batch_size=20, verbose=0), expected)
    assert same_weights(fresh.get_weights(), model.get_weights())   # incl. batch statistics
    # the user's module holds them too (batch statistics included)
    bn_mean = np.asarray(fresh.module.bn.mean[...])
    np.testing.assert_array_equal(bn_mean, np.asarray(model.module.bn.mean[...]))
    assert np.any(bn_mean != 0)


def test_loaded_weights_are_trained_from(tmp_path):
    x, y = data(40)
    trained = model_of()
    trained.fit(x, y, batch_size=20, epochs=2, verbose=0)
    trained.save_weights(tmp_path / "w")
    fresh = model_of(Net(seed=5))
    fresh.load_weights(tmp_path / "w")
    evaluated = fresh.evaluate(x, y, batch_size=20, verbose=0, return_dict=True)
    assert evaluated == trained.evaluate(x, y, batch_size=20, verbose=0, return_dict=True)
    first = []
    fresh.fit(x, y, batch_size=40, epochs=1, verbose=0, shuffle=False, callbacks=[
        ef.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs=None:
                                    first.append(logs["loss"]))])
    assert first[0] == pytest.approx(evaluated["loss"], rel=1e-6)


def test_load_weights_into_a_model_trained_in_between(tmp_path):
    x, y = data(40)
    model = model_of()
    model.fit(x, y, batch_size=20, epochs=1, verbose=0)
    saved = model.get_weights()
    model.save_weights(tmp_path / "w")
    model.fit(x, y, batch_size=20, epochs=1, verbose=0)
    assert not same_weights(model.get_weights(), saved)
    model.load_weights(tmp_path / "w")
    assert same_weights(model.get_weights(), saved)


def test_save_weights_again_after_training_overwrites(tmp_path):
    x, y = data(40)
    model = model_of()
    model.save_weights(tmp_path / "w")
    model.fit(x, y, batch_size=20, epochs=1, verbose=0)
    model.save_weights(tmp_path / "w")
    fresh = model_of(Net(seed=4))
    fresh.load_weights(tmp_path / "w")
    assert same_weights(fresh.get_weights(), model.get_weights())


def test_save_weights_twice_at_the_same_step_overwrites(tmp_path):
    model = model_of()
    model.save_weights(tmp_path / "w")
    model.set_weights([w + 1.0 for w in model.get_weights()])
    model.save_weights(tmp_path / "w")
    fresh = model_of(Net(seed=4))
    fresh.load_weights(tmp_path / "w")
    assert same_weights(fresh.get_weights(), model.get_weights())


# ---------------------------------------------------------------------------------------
# the Checkpoints store itself
# ---------------------------------------------------------------------------------------

def _tree(value):
    return {"a": np.full((3,), value, np.float32), "b": {"c": np.full((2, 2), value, np.float32)}}


def test_checkpoints_store_retention_best_step_and_restore(tmp_path):
    store = Checkpoints(tmp_path / "s", keep_latest=1, keep_best=2, mode="max", async_save=False)
    for step, metric in [(1, 0.2), (2, 0.9), (3, 0.5), (4, 0.1), (5, 0.3)]:
        store.save(step, _tree(float(step)), {"epoch": step, "note": [1, 2]}, metric=metric)
    assert store.steps() == [2, 3, 5]
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _tree(0.0))
    step, weights, train, meta = store.restore(target)
    assert step == 5 and train is None and meta["epoch"] == 5 and meta["note"] == [1, 2]
    np.testing.assert_array_equal(weights["b"]["c"], np.full((2, 2), 5.0, np.float32))
    step, weights, _, _ = store.restore(target, step=3)
    assert step == 3 and float(weights["a"][0]) == 3.0
    with pytest.raises(CheckpointError, match="step 4"):
        store.restore(target, step=4)
    store.close()


@pytest.mark.parametrize("mode, best", [("min", 4), ("max", 2)])
def test_checkpoints_store_best_step(tmp_path, mode, best):
    store = Checkpoints(tmp_path / "s", keep_latest=5, mode=mode, async_save=False)
    for step, metric in [(1, 0.2), (2, 0.9), (3, 0.5), (4, 0.1), (5, 0.3)]:
        store.save(step, _tree(float(step)), {"epoch": step}, metric=metric)
    assert store.best_step() == best
    store.close()


def test_checkpoints_store_keeps_arrays_inside_meta(tmp_path):
    store = Checkpoints(tmp_path / "s", async_save=False)
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.int32)]
    store.save(7, _tree(1.0), {"epoch": 1, "state": {"best_weights": arrays, "best": 0.5}})
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _tree(0.0))
    _, _, _, meta = store.restore(target)
    restored = meta["state"]["best_weights"]
    assert meta["state"]["best"] == 0.5
    for got, want in zip(restored, arrays, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    store.close()


def test_checkpoints_store_restore_of_an_empty_directory_is_none(tmp_path):
    store = Checkpoints(tmp_path / "s", async_save=False)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _tree(0.0))
    assert store.restore(target) is None
    assert store.best_step() is None
    store.close()
