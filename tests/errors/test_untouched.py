"""Issue 22 part 4: nothing touched by a failed call. Reading from a path that does not exist
creates nothing; a failed ``fit`` leaves the last good checkpoint, creates no checkpoint
directory before its first save, and leaves the user's module as it was; a crash in a user
callback or a user input surfaces as the user's own exception, with a note naming where."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import easyfit as ef

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clear_errors import clear_error, snapshot  # noqa: E402
from conftest import MLP, make_data  # noqa: E402

X, Y = make_data(40)


class UserBug(Exception):
    """The user's own exception type: it must come out as it is, not wrapped."""


def _model() -> tuple[nnx.Module, ef.Model]:
    module = MLP(rngs=nnx.Rngs(0))
    model = ef.Model(module)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  steps_per_execution=1)
    return module, model


def _weights(module: nnx.Module) -> list[np.ndarray]:
    return [np.array(leaf) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param))]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _savers(root: Path) -> list[ef.callbacks.Callback]:
    return [ef.callbacks.ModelCheckpoint(root / "runs" / "ckpt", monitor="loss"),
            ef.callbacks.BackupAndRestore(root / "runs" / "backup", delete_checkpoint=False)]


def _notes(info: pytest.ExceptionInfo) -> str:
    return " ".join(getattr(info.value, "__notes__", []))


# -- reading from a path that does not exist --------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "nested", "file"])
def test_load_weights_from_a_path_that_is_not_a_checkpoint_creates_nothing(tmp_path, kind):
    path = {"missing": tmp_path / "nope", "nested": tmp_path / "a" / "b",
            "file": tmp_path / "weights.txt"}[kind]
    if kind == "file":
        path.write_text("not a checkpoint")
    _, model = _model()
    state = "is a file" if kind == "file" else "does not exist"
    with clear_error(FileNotFoundError, "load_weights", str(path.name), state,
                     "save_weights, ModelCheckpoint or BackupAndRestore", untouched=tmp_path):
        model.load_weights(path)
    assert sorted(os.listdir(tmp_path)) == (["weights.txt"] if kind == "file" else [])


def test_load_model_from_a_missing_path_creates_nothing(tmp_path):
    with clear_error(FileNotFoundError, "nope", "does not exist", "model.save",
                     untouched=tmp_path):
        ef.load_model(tmp_path / "nope", module=MLP(rngs=nnx.Rngs(0)))
    assert os.listdir(tmp_path) == []


# -- a failed fit before any step -------------------------------------------------------------

@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(epochs=-2),
                                 dict(validation_data=(X,)), dict(class_weight={9: 1.0})])
def test_a_bad_argument_creates_no_checkpoint_and_keeps_the_weights(tmp_path, bad):
    module, model = _model()
    before = _weights(module)
    with clear_error((TypeError, ValueError), list(bad)[0], untouched=tmp_path):
        model.fit(X, Y, verbose=0, callbacks=_savers(tmp_path), **bad)
    assert not (tmp_path / "runs").exists()
    assert _same(_weights(module), before) and _same(_weights(model.module), before)


class Boom(ef.callbacks.Callback):
    """Raises the user's own exception from one hook, at the first call."""

    def __init__(self, hook: str):
        super().__init__()
        setattr(self, hook, self.boom)

    def boom(self, *args):
        raise UserBug("my callback broke")


@pytest.mark.parametrize("hook", ["on_train_begin", "on_epoch_begin", "on_train_batch_begin"])
def test_a_callback_failing_before_the_first_step(tmp_path, hook):
    module, model = _model()
    before = _weights(module)
    with clear_error(UserBug, "my callback broke", untouched=tmp_path) as info:
        model.fit(X, Y, batch_size=8, verbose=0, callbacks=[Boom(hook), *_savers(tmp_path)])
    assert f"Boom.{hook}" in _notes(info)
    assert not (tmp_path / "runs").exists()  # no empty checkpoint directories left behind
    assert _same(_weights(module), before) and _same(_weights(model.module), before)


def _failing_input(fail_at: int, batches: int = 5):
    def generate():
        for i in range(batches):
            if i == fail_at:
                raise UserBug("my generator broke")
            yield X[8 * i:8 * i + 8], Y[8 * i:8 * i + 8]
    return generate()


def test_a_generator_failing_at_its_first_batch(tmp_path):
    module, model = _model()
    before = _weights(module)
    with clear_error(UserBug, "my generator broke", untouched=tmp_path) as info:
        model.fit(_failing_input(0), steps_per_epoch=5, verbose=0,
                  callbacks=_savers(tmp_path))
    assert "first batch" in _notes(info) and "generator" in _notes(info)
    assert not (tmp_path / "runs").exists()
    assert _same(_weights(module), before)


# -- a failed fit after some steps --------------------------------------------------------------

def test_a_generator_failing_mid_epoch_names_the_batch(tmp_path):
    module, model = _model()
    before = _weights(module)
    with clear_error(UserBug, "my generator broke", untouched=tmp_path) as info:
        model.fit(_failing_input(3), steps_per_epoch=5, verbose=0,
                  callbacks=_savers(tmp_path))
    assert "`x`" in _notes(info) and "batch 3 of epoch 1" in _notes(info)
    assert not (tmp_path / "runs").exists()  # no save was due: nothing on disk
    assert _same(_weights(module), before)  # the failed fit wrote nothing back
    history = model.fit(X, Y, batch_size=8, epochs=2, verbose=0)  # and the model still trains
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("fail_at, where", [(0, "that input is `validation_data`"),
                                            (2, "`validation_data` (generator) while reading "
                                                "batch 2")])
def test_a_validation_generator_failing(tmp_path, fail_at, where):
    _, model = _model()
    with clear_error(UserBug, "my generator broke", untouched=tmp_path) as info:
        model.fit(X, Y, batch_size=8, verbose=0, validation_data=_failing_input(fail_at))
    assert where in _notes(info)


def test_evaluate_and_predict_with_a_failing_input_name_the_batch(tmp_path):
    _, model = _model()
    with clear_error(UserBug, "my generator broke", untouched=tmp_path) as info:
        model.evaluate(_failing_input(2), verbose=0)
    assert "batch 2" in _notes(info)
    with clear_error(UserBug, "my generator broke", untouched=tmp_path) as info:
        model.predict((x for x, _ in _failing_input(1)), verbose=0)
    assert "batch 1" in _notes(info)


def test_a_failed_fit_leaves_the_last_good_checkpoints(tmp_path):
    _, model = _model()
    # the first run saves epoch 1, then its user callback fails at the start of epoch 2
    fail_second = ef.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: (_ for _ in ()).throw(UserBug("stop")) if epoch
        else None)
    with pytest.raises(UserBug):
        model.fit(X, Y, batch_size=8, epochs=3, verbose=0,
                  callbacks=[fail_second, *_savers(tmp_path)])
    saved = snapshot(tmp_path)
    assert any(name.startswith("runs/ckpt/") for name in saved)
    assert any(name.startswith("runs/backup/") for name in saved)
    # the rerun resumes from the backup and fails in its first batch: nothing on disk changes
    module, model = _model()
    before = _weights(module)
    with clear_error(UserBug, "my callback broke", untouched=tmp_path) as info:
        model.fit(X, Y, batch_size=8, epochs=3, verbose=0,
                  callbacks=[Boom("on_train_batch_begin"), *_savers(tmp_path)])
    assert "Boom.on_train_batch_begin" in _notes(info)
    assert _same(_weights(module), before)


@pytest.mark.parametrize("hook", ["on_train_batch_end", "on_epoch_end"])
def test_a_callback_failing_after_steps_surfaces_unwrapped(tmp_path, hook):
    module, model = _model()
    before = _weights(module)
    with clear_error(UserBug, "my callback broke", untouched=tmp_path) as info:
        model.fit(X, Y, batch_size=8, verbose=0, callbacks=[Boom(hook), *_savers(tmp_path)])
    assert type(info.value) is UserBug and f"Boom.{hook}" in _notes(info)
    assert not (tmp_path / "runs").exists()  # the user's callback failed before any save
    assert _same(_weights(module), before)


def test_a_first_batch_the_module_cannot_take_creates_nothing(tmp_path):
    module, model = _model()
    before = _weights(module)
    with clear_error((TypeError, ValueError), r"\b5\b", r"\b8\b", untouched=tmp_path):
        model.fit(np.zeros((40, 5), np.float32), Y, batch_size=8, verbose=0,
                  callbacks=_savers(tmp_path))  # the module takes 8 features
    assert not (tmp_path / "runs").exists()
    assert _same(_weights(module), before) and _same(_weights(model.module), before)
