"""Callbacks: hook order and logs, EarlyStopping, LR callbacks, CSVLogger, TensorBoard,
LambdaCallback, TerminateOnNaN, stop_training, weight edits from callbacks, errors raised
inside callbacks."""

from __future__ import annotations

import re

import csv
import glob
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef
from conftest import train_programs

# ---------------------------------------------------------------------------------------
# small, self-contained helpers (same shapes everywhere, so XLA programs are reused)
# ---------------------------------------------------------------------------------------


class Net(nnx.Module):
    """8 -> 16 -> 4 MLP: deterministic in train and eval mode."""

    def __init__(self, hidden: int = 16, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(8, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(n, 4)), -1).astype(np.int32)
    return x, y


def model_of(module=None, optimizer=None, metrics=None, **compile_kw) -> ef.Model:
    model = ef.Model(module if module is not None else Net())
    model.compile(optimizer or ef.optimizers.sgd(0.05, momentum=0.0),
                  "sparse_categorical_crossentropy", metrics, **compile_kw)
    return model


class Inject(ef.callbacks.Callback):
    """Writes crafted values into the epoch logs (it runs before EarlyStopping, History and
    the checkpoint callbacks, which therefore see them)."""

    def __init__(self, key: str, values):
        super().__init__()
        self.key, self.values = key, list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = float(self.values[epoch])


class Snapshots(ef.callbacks.Callback):
    """Stores weights and predictions on ``x`` at each epoch end."""

    def __init__(self, x):
        super().__init__()
        self.x, self.weights, self.predictions = x, [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        self.predictions.append(self.model.predict(self.x, batch_size=20, verbose=0))


def assert_weights_equal(a, b):
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)


def weights_differ(a, b) -> bool:
    return any(not np.array_equal(left, right) for left, right in zip(a, b))


_LOSS_GRAD = {}


def loss_grad(module, x, y):
    """Gradient of the mean cross-entropy over all rows wrt the module's params."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ..., graph=True)
    if graphdef not in _LOSS_GRAD:
        def loss(p, r, x, y):
            logits = nnx.merge(graphdef, p, r, copy=True)(x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        _LOSS_GRAD[graphdef] = jax.jit(jax.grad(loss))
    return [np.asarray(g) for g in jax.tree.leaves(_LOSS_GRAD[graphdef](params, rest, x, y))]


# ---------------------------------------------------------------------------------------
# hook order, logs, params
# ---------------------------------------------------------------------------------------

ALL_HOOKS = [name for name in vars(ef.callbacks.Callback) if name.startswith("on_")]


class OrderRecorder(ef.callbacks.Callback):
    """Overrides every hook as methods (LambdaCallback-free), records names and arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.params_seen = None

    def on_train_begin(self, logs=None):
        self.params_seen = dict(self.params)
        self.calls.append(("on_train_begin",))

    def on_train_end(self, logs=None):
        self.calls.append(("on_train_end", dict(logs or {})))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("on_epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("on_epoch_end", epoch, dict(logs or {})))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("on_train_batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("on_train_batch_end", batch, dict(logs or {})))

    def on_test_begin(self, logs=None):
        self.calls.append(("on_test_begin",))

    def on_test_end(self, logs=None):
        self.calls.append(("on_test_end",))

    def on_test_batch_begin(self, batch, logs=None):
        self.calls.append(("on_test_batch_begin", batch))

    def on_test_batch_end(self, batch, logs=None):
        self.calls.append(("on_test_batch_end", batch))


def test_hook_order_params_and_logs_for_one_epoch():
    x, y = data(60)
    rec = OrderRecorder()
    model = model_of(metrics=["accuracy"])
    history = model.fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[rec])
    names = [(c[0], *(c[1:2] if len(c) > 1 and isinstance(c[1], int) else ())) for c in rec.calls]
    assert names == [("on_train_begin",), ("on_epoch_begin", 0),
                     ("on_train_batch_begin", 0), ("on_train_batch_end", 0),
                     ("on_train_batch_begin", 1), ("on_train_batch_end", 1),
                     ("on_train_batch_begin", 2), ("on_train_batch_end", 2),
                     ("on_epoch_end", 0), ("on_train_end",)]
    assert rec.params_seen == {"epochs": 1, "steps": 3, "verbose": 0,
                               "do_validation": False, "batch_size": 20}
    batch_logs = rec.calls[3][2]
    assert list(batch_logs) == ["loss", "accuracy", "learning_rate"]
    epoch_logs = rec.calls[-2][2]
    assert list(epoch_logs) == ["loss", "accuracy", "learning_rate"]
    assert epoch_logs["learning_rate"] == pytest.approx(0.05)
    assert epoch_logs == {k: v[0] for k, v in history.history.items()}
    # the train-end logs are the last epoch's
    assert rec.calls[-1][1] == epoch_logs


def test_train_hooks_and_val_logs_with_validation_and_steps_per_execution():
    x, y = data(100)
    rec = OrderRecorder()
    model = model_of(metrics=["accuracy"], steps_per_execution=2)
    model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[rec], validation_split=0.2)
    # validation's own on_test_* calls are not part of this contract: keep the train hooks
    train_calls = [c for c in rec.calls if not c[0].startswith("on_test")]
    names = [c[0] for c in train_calls]
    # 4 train batches per epoch, 2 per execution: a batch hook pair per chunk
    per_epoch = ["on_epoch_begin", "on_train_batch_begin", "on_train_batch_end",
                 "on_train_batch_begin", "on_train_batch_end", "on_epoch_end"]
    assert names == ["on_train_begin", *per_epoch, *per_epoch, "on_train_end"]
    assert [c[1] for c in train_calls if c[0] == "on_train_batch_end"] == [1, 3, 1, 3]
    assert [c[1] for c in train_calls if c[0] == "on_train_batch_begin"] == [0, 2, 0, 2]
    epoch_logs = [c[2] for c in train_calls if c[0] == "on_epoch_end"]
    for logs in epoch_logs:
        assert set(logs) == {"loss", "accuracy", "learning_rate", "val_loss", "val_accuracy"}
        assert all(isinstance(v, float) for v in logs.values())
    assert rec.params_seen == {"epochs": 2, "steps": 4, "verbose": 0,
                               "do_validation": True, "batch_size": 20}


def test_batch_logs_are_the_running_epoch_means():
    x, y = data(60)
    batch_logs = []
    cb = ef.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batch_logs.append(dict(logs)))
    model = model_of(optimizer=ef.optimizers.sgd(0.0, momentum=0.0))   # weights never change
    model.fit(x, y, batch_size=20, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    per_batch = [model.evaluate(x[i:i + 20], y[i:i + 20], batch_size=20, verbose=0)
                 for i in (0, 20, 40)]
    for n, logs in enumerate(batch_logs):
        assert logs["loss"] == pytest.approx(np.mean(per_batch[:n + 1]), rel=1e-5)


# ---------------------------------------------------------------------------------------
# LambdaCallback, TerminateOnNaN, stop_training
# ---------------------------------------------------------------------------------------

def _lambda_hooks(seen, keras_signatures):
    """LambdaCallback hooks; with ``keras_signatures`` every ``logs`` is a required
    positional argument, as Keras documents them (``on_train_begin=lambda logs: ...``)."""
    if keras_signatures:
        return dict(
            on_train_begin=lambda logs: seen.append("train_begin"),
            on_epoch_begin=lambda epoch, logs: seen.append(("epoch_begin", epoch)),
            on_train_batch_begin=lambda batch, logs: seen.append(("batch_begin", batch)),
            on_train_batch_end=lambda batch, logs: seen.append(("batch_end", batch, logs["loss"])),
            on_epoch_end=lambda epoch, logs: seen.append(("epoch_end", epoch, logs["loss"])),
            on_train_end=lambda logs: seen.append("train_end"))
    return dict(
        on_train_begin=lambda logs=None: seen.append("train_begin"),
        on_epoch_begin=lambda epoch, logs=None: seen.append(("epoch_begin", epoch)),
        on_train_batch_begin=lambda batch, logs=None: seen.append(("batch_begin", batch)),
        on_train_batch_end=lambda batch, logs=None: seen.append(("batch_end", batch, logs["loss"])),
        on_epoch_end=lambda epoch, logs=None: seen.append(("epoch_end", epoch, logs["loss"])),
        on_train_end=lambda logs=None: seen.append("train_end"))


def _check_lambda_hooks(keras_signatures):
    x, y = data(60)
    seen = []
    cb = ef.callbacks.LambdaCallback(**_lambda_hooks(seen, keras_signatures))
    model_of().fit(x, y, batch_size=30, epochs=2, verbose=0, callbacks=[cb])
    kinds = [s if isinstance(s, str) else s[:2] for s in seen]
    epoch = lambda e: [("epoch_begin", e), ("batch_begin", 0), ("batch_end", 0),
                       ("batch_begin", 1), ("batch_end", 1), ("epoch_end", e)]
    assert kinds == ["train_begin", *epoch(0), *epoch(1), "train_end"]
    assert all(math.isfinite(s[2]) for s in seen if isinstance(s, tuple) and len(s) == 3)


def test_lambda_callback_hooks_fire():
    _check_lambda_hooks(keras_signatures=False)


def test_lambda_callback_with_keras_signatures():
    _check_lambda_hooks(keras_signatures=True)


def test_lambda_callback_warns_of_a_misspelt_hook():
    with pytest.warns(UserWarning, match="on_epoch_finish"):
        ef.callbacks.LambdaCallback(on_epoch_finish=lambda epoch, logs: None)


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_terminate_on_nan_stops_after_the_nan_step(capsys, steps_per_execution):
    x, y = data(60)

    def nan_loss(y_true, y_pred):
        return jnp.log(y_pred[:, 0] * 0.0 - 1.0)          # log(-1): NaN from the first step

    model = ef.Model(Net())
    model.compile(ef.optimizers.sgd(0.05, momentum=0.0), nan_loss,
                  steps_per_execution=steps_per_execution)
    history = model.fit(x, y, batch_size=20, epochs=5, verbose=0,
                        callbacks=[ef.callbacks.TerminateOnNaN()])
    # it reads the loss once per dispatch: after the first one
    assert model.trainer.step_count == int(model.trainer.state.step) == steps_per_execution
    assert history.epoch == [0]
    assert math.isnan(history.history["loss"][0])
    assert "Invalid loss" in capsys.readouterr().out


def test_terminate_on_nan_with_a_huge_learning_rate():
    x, y = data(60)
    y_reg = (x[:, :1] * 3.0).astype(np.float32)

    class Reg(nnx.Module):
        def __init__(self):
            self.l = nnx.Linear(8, 1, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.l(x)

    model = ef.Model(Reg())
    model.compile(ef.optimizers.sgd(1e12, momentum=0.0), "mse")
    history = model.fit(x, y_reg, batch_size=20, epochs=50, verbose=0,
                        callbacks=[ef.callbacks.TerminateOnNaN()])
    assert len(history.epoch) < 50
    assert model.trainer.step_count < 150
    assert not math.isfinite(history.history["loss"][-1])


@pytest.mark.parametrize("k, expected_steps", [(1, 3), (2, 4)])
def test_stop_training_in_on_train_batch_end_ends_fit_after_that_step(k, expected_steps):
    x, y = data(200)

    class StopAtThird(ef.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.trainer.step_count >= 3:
                self.model.stop_training = True

    model = model_of(steps_per_execution=k)
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0, callbacks=[StopAtThird()])
    assert model.trainer.step_count == expected_steps
    assert int(model.trainer.state.step) == expected_steps
    assert history.epoch == [0]   # the stopped epoch still ends (logs, on_epoch_end), as Keras


# ---------------------------------------------------------------------------------------
# callbacks that read or write the weights
# ---------------------------------------------------------------------------------------

def test_callback_reading_model_module_sees_current_weights():
    x, y = data(60)
    snaps = []

    class Reader(ef.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            module = self.model.module
            from_module = [np.array(a) for a in jax.tree.leaves(nnx.state(module, nnx.Param))]
            live = [np.array(a) for a in jax.tree.leaves(self.model.trainer.state.params)]
            assert_weights_equal(from_module, self.model.get_weights())
            assert_weights_equal(from_module, live)
            snaps.append(from_module)

    model = model_of()
    model.fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[Reader()])
    assert len(snaps) == 6
    for before, after in zip(snaps, snaps[1:]):   # every step changed what the module shows
        assert weights_differ(before, after)
    assert_weights_equal(snaps[-1], model.get_weights())


def _first_batch_loss_of_epoch(model, x, y, callback, epochs=2, **fit_kw):
    first = {}

    class FirstLoss(ef.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            first.setdefault(self.epoch, logs["loss"])

    model.fit(x, y, batch_size=20, epochs=epochs, verbose=0,
              callbacks=[callback, FirstLoss()], **fit_kw)
    return first


def test_set_weights_in_on_epoch_end_changes_training_from_there():
    x, y = data(60)

    class Zero(ef.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.model.set_weights([np.zeros_like(w) for w in self.model.get_weights()])

    opt = lambda: ef.optimizers.sgd(0.05, momentum=0.9)
    model = model_of(optimizer=opt())
    first = _first_batch_loss_of_epoch(model, x, y, Zero())
    # zero weights -> zero logits -> the loss of the first step of epoch 2 is log(4)
    assert first[1] == pytest.approx(np.log(4.0), rel=1e-6)
    assert first[0] != pytest.approx(np.log(4.0), rel=1e-3)

    # the same as: one epoch, set zeros between fits, then the second epoch
    reference = model_of(optimizer=opt())
    reference.fit(x, y, batch_size=20, epochs=1, verbose=0)
    reference.set_weights([np.zeros_like(w) for w in reference.get_weights()])
    reference.fit(x, y, batch_size=20, epochs=2, initial_epoch=1, verbose=0)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)

    untouched = model_of(optimizer=opt())
    untouched.fit(x, y, batch_size=20, epochs=2, verbose=0)
    assert weights_differ(model.get_weights(), untouched.get_weights())


def test_editing_model_module_in_on_epoch_end_changes_training_from_there():
    x, y = data(60)

    class ZeroHead(ef.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                module = self.model.module
                module.l2.kernel[...] = jnp.zeros_like(module.l2.kernel[...])
                module.l2.bias[...] = jnp.zeros_like(module.l2.bias[...])

    model = model_of()
    first = _first_batch_loss_of_epoch(model, x, y, ZeroHead())
    assert first[1] == pytest.approx(np.log(4.0), rel=1e-6)


# ---------------------------------------------------------------------------------------
# exceptions inside callbacks
# ---------------------------------------------------------------------------------------

class Boom(ValueError):
    pass


@pytest.mark.parametrize("hook", ["on_train_begin", "on_epoch_begin", "on_train_batch_end",
                                  "on_epoch_end"])
def test_exception_in_a_callback_propagates_with_a_note(hook):
    x, y = data(60)

    class Exploder(ef.callbacks.Callback):
        pass

    def explode(*args, **kwargs):
        raise Boom("kaboom 42")

    exploder = Exploder()
    setattr(Exploder, hook, lambda self, *a, **k: explode())
    with pytest.raises(Boom, match="kaboom 42") as info:
        model_of().fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[exploder])
    notes = getattr(info.value, "__notes__", [])
    assert any("raised in callback" in n and f"Exploder.{hook}" in n for n in notes), notes


def test_exception_in_a_lambda_callback_names_lambda_callback():
    x, y = data(60)

    def explode(epoch, logs):
        raise Boom("kaboom")

    with pytest.raises(Boom) as info:
        model_of().fit(x, y, batch_size=20, epochs=1, verbose=0,
                       callbacks=[ef.callbacks.LambdaCallback(on_epoch_end=explode)])
    notes = getattr(info.value, "__notes__", [])
    assert any("LambdaCallback.on_epoch_end" in n for n in notes), notes


def test_exception_while_a_checkpoint_is_written_leaves_it_committed_or_absent(tmp_path):
    x, y = data(400)
    ckpt = tmp_path / "ckpt"

    class Bomb(ef.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.trainer.step_count == 7:
                raise Boom("mid-write")

    checkpoint = ef.callbacks.ModelCheckpoint(ckpt, monitor="loss", save_freq=1,
                                              keep_best=2, keep_latest=2)
    with pytest.raises(Boom, match="mid-write") as info:
        model_of().fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[Bomb(), checkpoint])
    assert any("Bomb.on_train_batch_end" in n for n in info.value.__notes__)
    assert glob.glob(str(ckpt / "*.orbax-checkpoint-tmp*")) == []
    assert glob.glob(str(ckpt / "*" / "*.orbax-checkpoint-tmp*")) == []
    steps = ef.checkpoint.Checkpoints(ckpt, async_save=False).steps()
    assert steps and max(steps) == 6        # step 7's save never started (Bomb runs first)
    # every remaining step is complete and loads
    fresh = model_of()
    for step in steps:
        fresh.load_weights(ckpt, step=step)


# ---------------------------------------------------------------------------------------
# EarlyStopping
# ---------------------------------------------------------------------------------------

def _fit_with_crafted(values, stopper, *, key="val_loss", epochs=None, extra=(), metrics=None):
    x, y = data(40)
    model = model_of(metrics=metrics)
    epochs = epochs or len(values)
    history = model.fit(x, y, batch_size=20, epochs=epochs, verbose=0,
                        callbacks=[Inject(key, values), *extra, stopper])
    return model, history


def test_early_stopping_stops_at_the_right_epoch():
    seq = [1.0, 0.9, 0.95, 0.96, 0.5, 0.4, 0.3]
    stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=2)
    model, history = _fit_with_crafted(seq, stopper)
    assert history.epoch == [0, 1, 2, 3]
    assert history.history["val_loss"] == seq[:4]
    assert stopper.stopped_epoch == 3 and stopper.best == 0.9 and stopper.best_epoch == 1
    assert model.stop_training


def test_early_stopping_patience_zero_stops_at_the_first_non_improvement():
    stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=0)
    _, history = _fit_with_crafted([1.0, 0.8, 0.9, 0.1], stopper)
    assert history.epoch == [0, 1, 2]


def test_early_stopping_runs_all_epochs_while_improving():
    stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=1)
    _, history = _fit_with_crafted([1.0, 0.9, 0.8, 0.7, 0.6], stopper)
    assert history.epoch == [0, 1, 2, 3, 4]
    assert stopper.stopped_epoch == 0


def test_early_stopping_restore_best_weights():
    x, y = data(40)
    seq = [1.0, 0.7, 0.9, 0.95, 0.98, 0.5]
    snaps = Snapshots(x)
    stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=3,
                                         restore_best_weights=True)
    model = model_of()
    history = model.fit(x, y, batch_size=20, epochs=6, verbose=0,
                        callbacks=[Inject("val_loss", seq), snaps, stopper])
    assert history.epoch == [0, 1, 2, 3, 4]
    assert stopper.best_epoch == 1
    assert weights_differ(snaps.weights[1], snaps.weights[4])
    assert_weights_equal(model.get_weights(), snaps.weights[1])
    np.testing.assert_array_equal(model.predict(x, batch_size=20, verbose=0),
                                  snaps.predictions[1])
    # the user's module holds them too
    assert_weights_equal([np.asarray(a) for a in jax.tree.leaves(nnx.state(model.module,
                                                                           nnx.Param))],
                         snaps.weights[1])


def test_early_stopping_without_restore_keeps_the_last_weights():
    x, y = data(40)
    snaps = Snapshots(x)
    stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=1)
    model = model_of()
    model.fit(x, y, batch_size=20, epochs=5, verbose=0,
              callbacks=[Inject("val_loss", [1.0, 0.7, 0.9, 0.1, 0.1]), snaps, stopper])
    assert len(snaps.weights) == 3
    assert_weights_equal(model.get_weights(), snaps.weights[-1])


def test_early_stopping_min_delta():
    seq = [1.0, 0.95, 0.92, 0.91, 0.905, 0.9]
    _, history = _fit_with_crafted(seq, ef.callbacks.EarlyStopping(patience=2, min_delta=0.1))
    assert history.epoch == [0, 1, 2]
    _, history = _fit_with_crafted(seq, ef.callbacks.EarlyStopping(patience=2))
    assert history.epoch == [0, 1, 2, 3, 4, 5]


def test_early_stopping_baseline():
    # never beats the baseline: stops after `patience` epochs
    stopper = ef.callbacks.EarlyStopping(patience=3, baseline=0.5)
    _, history = _fit_with_crafted([0.9, 0.95, 0.97, 0.99, 0.99, 0.99], stopper)
    assert history.epoch == [0, 1, 2]
    # beats it: the usual patience from then on
    stopper = ef.callbacks.EarlyStopping(patience=3, baseline=0.5)
    _, history = _fit_with_crafted([0.4, 0.45, 0.46, 0.47, 0.48, 0.49], stopper)
    assert history.epoch == [0, 1, 2, 3]
    # mode max: the baseline is a floor to climb over
    stopper = ef.callbacks.EarlyStopping(monitor="val_score", mode="max", patience=2,
                                         baseline=0.8)
    _, history = _fit_with_crafted([0.5, 0.4, 0.3, 0.2], stopper, key="val_score")
    assert history.epoch == [0, 1]


def test_early_stopping_start_from_epoch():
    seq = [5.0, 5.0, 1.0, 2.0, 3.0, 4.0]
    _, history = _fit_with_crafted(seq, ef.callbacks.EarlyStopping(patience=1))
    assert history.epoch == [0, 1]
    stopper = ef.callbacks.EarlyStopping(patience=1, start_from_epoch=2)
    _, history = _fit_with_crafted(seq, stopper)
    assert history.epoch == [0, 1, 2, 3]
    assert stopper.best_epoch == 2


def test_early_stopping_mode_max_and_auto():
    seq = [0.1, 0.5, 0.4, 0.3, 0.2, 0.1]
    _, history = _fit_with_crafted(seq, ef.callbacks.EarlyStopping(
        monitor="val_score", mode="max", patience=2), key="val_score")
    assert history.epoch == [0, 1, 2, 3]
    _, history = _fit_with_crafted(seq, ef.callbacks.EarlyStopping(
        monitor="val_score", mode="min", patience=2), key="val_score")
    assert history.epoch == [0, 1, 2]
    # "auto" follows the compiled metric's direction: accuracy is maximised
    _, history = _fit_with_crafted(seq, ef.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=2), key="val_accuracy", metrics=["accuracy"])
    assert history.epoch == [0, 1, 2, 3]
    # ... and a name that is neither a loss nor a compiled metric is an error, as Keras
    with pytest.raises(ValueError, match="mode='max'"):
        _fit_with_crafted(seq, ef.callbacks.EarlyStopping(monitor="val_score", patience=2),
                          key="val_score")


@pytest.mark.parametrize("metrics, monitor, names", [
    (None, "val_accuracy", [r"compiled: none", r"Compile it \(metrics=\['accuracy'\]\)",
                            "or monitor val_loss"]),
    (["accuracy"], "val_acc", [r"compiled: val_accuracy", "Did you mean monitor='val_accuracy'"]),
])
def test_auto_mode_on_an_uncompiled_metric_names_the_compiled_ones(tmp_path, metrics, monitor,
                                                                    names):
    x, y = data(40)
    with pytest.raises(ValueError, match="neither a loss nor a compiled metric") as info:
        model_of(metrics=metrics).fit(x, y, batch_size=20, epochs=2, verbose=0,
                                      validation_data=(x, y), callbacks=[
                                          ef.callbacks.ModelCheckpoint(tmp_path, monitor=monitor,
                                                                       save_best_only=True)])
    for name in names:
        assert re.search(name, str(info.value)), (name, str(info.value))
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_early_stopping_on_a_real_metric_with_validation_data():
    x, y = data(60)
    stopper = ef.callbacks.EarlyStopping(monitor="val_loss", patience=1)
    model = model_of(optimizer=ef.optimizers.sgd(0.0, momentum=0.0))   # val_loss never moves
    history = model.fit(x, y, batch_size=20, epochs=5, verbose=0, callbacks=[stopper],
                        validation_data=(x[:20], y[:20]))
    assert history.epoch == [0, 1]
    assert history.history["val_loss"][0] == history.history["val_loss"][1]


def test_early_stopping_missing_monitor_warns_and_continues():
    x, y = data(40)
    with pytest.warns(UserWarning, match="val_nothing"):
        history = model_of().fit(x, y, batch_size=20, epochs=2, verbose=0, callbacks=[
            ef.callbacks.EarlyStopping(monitor="val_nothing", mode="min", patience=0)])
    assert history.epoch == [0, 1]


# ---------------------------------------------------------------------------------------
# learning-rate callbacks
# ---------------------------------------------------------------------------------------

class StepProbe(ef.callbacks.Callback):
    """One step per epoch on all rows: records the weights before and after, and the
    hand-computed gradient at the weights before, to recover the learning rate used."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.before = self.model.get_weights()
        self.grad = loss_grad(self.model.module, self.x, self.y)

    def on_train_batch_end(self, batch, logs=None):
        after = self.model.get_weights()
        delta = np.concatenate([(a - b).ravel() for a, b in zip(after, self.before)])
        grad = np.concatenate([g.ravel() for g in self.grad])
        lr = -float(delta @ grad) / float(grad @ grad)
        # plain SGD: the update is exactly -lr * grad
        np.testing.assert_allclose(delta, -lr * grad, rtol=0, atol=1e-6)
        self.rates.append(lr)


def test_learning_rate_scheduler_changes_the_rate_used_without_recompiling():
    x, y = data(40)
    probe = StepProbe(x, y)
    sched = ef.callbacks.LearningRateScheduler(lambda epoch, lr: 0.2 * 0.5 ** epoch)
    model = model_of(optimizer=ef.optimizers.sgd(0.9, momentum=0.0))
    history = model.fit(x, y, batch_size=40, epochs=4, verbose=0, callbacks=[sched, probe])
    expected = [0.2, 0.1, 0.05, 0.025]
    np.testing.assert_allclose(probe.rates, expected, rtol=1e-4)
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6)
    assert model.trainer.steps.train.cache_size() == train_programs(model)


def test_learning_rate_scheduler_receives_the_current_rate():
    x, y = data(40)
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return lr * 0.5

    model = model_of(optimizer=ef.optimizers.sgd(0.4, momentum=0.0))
    history = model.fit(x, y, batch_size=40, epochs=3, verbose=0,
                        callbacks=[ef.callbacks.LearningRateScheduler(schedule)])
    assert [e for e, _ in seen] == [0, 1, 2]
    np.testing.assert_allclose([lr for _, lr in seen], [0.4, 0.2, 0.1], rtol=1e-6)
    np.testing.assert_allclose(history.history["learning_rate"], [0.2, 0.1, 0.05], rtol=1e-6)


def test_reduce_lr_on_plateau_changes_the_rate_used_without_recompiling():
    x, y = data(40)
    probe = StepProbe(x, y)
    plateau = ef.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2,
                                             min_lr=0.03)
    # the monitored value never improves after epoch 0: reductions after epochs 2 and 4
    model = model_of(optimizer=ef.optimizers.sgd(0.2, momentum=0.0))
    history = model.fit(x, y, batch_size=40, epochs=7, verbose=0,
                        callbacks=[Inject("val_loss", [1.0] * 7), plateau, probe])
    np.testing.assert_allclose(probe.rates, [0.2, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05], rtol=1e-4)
    # the third reduction (after the last epoch) stops at min_lr
    assert model.optimizer.learning_rate == pytest.approx(0.03)
    lr = history.history["learning_rate"]
    assert lr[0] == pytest.approx(0.2) and lr[1] == pytest.approx(0.2)
    assert lr[3] == pytest.approx(0.1) and lr[5] == pytest.approx(0.05)
    assert model.trainer.steps.train.cache_size() == train_programs(model)


def test_reduce_lr_on_plateau_respects_min_lr_and_cooldown():
    x, y = data(40)
    seen = []
    plateau = ef.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=1,
                                             cooldown=2, min_lr=0.004)
    probe = ef.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: seen.append(plateau.model.optimizer.learning_rate))
    model = model_of(optimizer=ef.optimizers.sgd(0.4, momentum=0.0))
    history = model.fit(x, y, batch_size=40, epochs=8, verbose=0,
                        callbacks=[Inject("val_loss", [1.0] * 8), plateau, probe])
    # reduced after epoch 1; cooldown epoch 2; reduced again after epoch 3, to min_lr
    np.testing.assert_allclose(seen, [0.4, 0.4, 0.04, 0.04] + [0.004] * 4, rtol=1e-6)
    np.testing.assert_allclose(history.history["learning_rate"][-3:], [0.004] * 3, rtol=1e-6)
    assert model.optimizer.learning_rate == pytest.approx(0.004)


def test_reduce_lr_on_plateau_scales_a_scheduled_rate():
    x, y = data(40)
    seen = []
    plateau = ef.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
    probe = ef.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: seen.append(plateau.model.optimizer.learning_rate))
    sched = ef.schedules.cosine(0.2, decay=1.0)
    model = model_of(optimizer=ef.optimizers.sgd(sched, momentum=0.0))
    model.fit(x, y, batch_size=20, epochs=4, verbose=0,
              callbacks=[Inject("val_loss", [1.0] * 4), plateau, probe])
    base = optax.cosine_decay_schedule(0.2, 8)
    # reduced by half after epoch 1, again after epoch 2 (patience 1)
    np.testing.assert_allclose(seen, [base(0), base(2), 0.5 * base(4), 0.25 * base(6)],
                               rtol=1e-5)


# ---------------------------------------------------------------------------------------
# CSVLogger, TensorBoard
# ---------------------------------------------------------------------------------------

def test_csv_logger_writes_header_and_history_values(tmp_path):
    x, y = data(60)
    path = tmp_path / "log.csv"
    model = model_of(metrics=["accuracy"])
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0, validation_split=0.25,
                        callbacks=[ef.callbacks.CSVLogger(path)])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"]
    assert len(rows) == 4
    for epoch, row in enumerate(rows[1:]):
        assert int(row[0]) == epoch
        for key, cell in zip(rows[0][1:], row[1:]):
            assert float(cell) == history.history[key][epoch]

    # append=True continues the file (one header), append=False starts over
    second = model.fit(x, y, batch_size=20, epochs=2, verbose=0, validation_split=0.25,
                       callbacks=[ef.callbacks.CSVLogger(path, append=True)])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 6 and rows.count(rows[0]) == 1
    assert [float(r[3]) for r in rows[4:]] == second.history["loss"]
    model.fit(x, y, batch_size=20, epochs=1, verbose=0, validation_split=0.25,
              callbacks=[ef.callbacks.CSVLogger(path)])
    with open(path, newline="") as f:
        assert len(list(csv.reader(f))) == 2


def test_csv_logger_given_a_directory_names_a_file_path(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a directory: pass a file path such as "
                                                r".*log\.csv"):
        ef.callbacks.CSVLogger(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_given_a_file_names_a_directory(tmp_path):
    (tmp_path / "tb").write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=r"is a file: pass a directory path"):
        ef.callbacks.TensorBoard(tmp_path / "tb")


def test_csv_logger_separator(tmp_path):
    x, y = data(40)
    path = tmp_path / "log.tsv"
    history = model_of().fit(x, y, batch_size=20, epochs=2, verbose=0,
                             callbacks=[ef.callbacks.CSVLogger(path, separator="\t")])
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["epoch", "learning_rate", "loss"]
    assert [float(r[2]) for r in rows[1:]] == history.history["loss"]


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_epoch_scalars_equal_history(tmp_path):
    x, y = data(60)
    model = model_of(metrics=["accuracy"])
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0, validation_split=0.25,
                        callbacks=[ef.callbacks.TensorBoard(tmp_path / "tb")])
    train = _scalars(tmp_path / "tb" / "train")
    val = _scalars(tmp_path / "tb" / "validation")
    for split, key, name in [(train, "loss", "epoch_loss"), (train, "accuracy", "epoch_accuracy"),
                             (train, "learning_rate", "epoch_learning_rate"), (val, "val_loss", "epoch_loss"),
                             (val, "val_accuracy", "epoch_accuracy")]:
        assert [s for s, _ in split[name]] == [0, 1, 2]
        np.testing.assert_array_equal(np.float32([v for _, v in split[name]]),
                                      np.float32(history.history[key]))
    assert not any(tag.startswith("batch_") for tag in train)


def test_tensorboard_update_freq_writes_batch_scalars(tmp_path):
    x, y = data(100)
    batch_losses = {}

    class Losses(ef.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batch_losses[self.model.trainer.step_count] = logs["loss"]

    model = model_of()
    model.fit(x, y, batch_size=20, epochs=2, verbose=0,
              callbacks=[Losses(), ef.callbacks.TensorBoard(tmp_path / "tb", update_freq=2)])
    train = _scalars(tmp_path / "tb" / "train")
    assert "batch_loss" in train and "epoch_loss" in train
    steps = [s for s, _ in train["batch_loss"]]
    assert steps == [2, 4, 6, 8, 10]
    for step, value in train["batch_loss"]:
        assert value == np.float32(batch_losses[step])
