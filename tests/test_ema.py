"""Exponential moving average of the weights (Keras's ``use_ema``) and ``SwapEMAWeights``."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef
from easyfit.ema import EMA, find
from conftest import MLP, make_data, train_programs

MOMENTUM = 0.9


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _model(optimizer=None, seed=0, **compile_kw):
    model = ef.Model(MLP(rngs=nnx.Rngs(seed)))
    optimizer = optimizer or ef.optimizers.sgd(0.1, momentum=0.0, use_ema=True,
                                               ema_momentum=MOMENTUM)
    model.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"], **compile_kw)
    return model


class Record(ef.callbacks.Callback):
    """After each batch: the training weights and the average in the optimizer state."""

    def __init__(self):
        super().__init__()
        self.weights, self.averages = [], []

    def on_train_batch_end(self, batch, logs=None):
        state = self.model.trainer.state
        self.weights.append(_leaves(state.params))
        self.averages.append(_leaves(find(state.opt_state).average))


def _numpy_ema(params, momentum=MOMENTUM):
    """Keras's EMA by hand: the first step copies, then m * ema + (1 - m) * w, float32."""
    m = np.float32(momentum)
    ema, out = None, []
    for weights in params:
        ema = [w.copy() for w in weights] if ema is None else \
            [m * e + (np.float32(1) - m) * w for e, w in zip(ema, weights)]
        out.append(ema)
    return out


def test_ema_matches_a_numpy_ema_and_fit_ends_with_the_average():
    x, y = make_data(80)
    model, record = _model(), Record()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[record])
    assert len(record.weights) == 10
    expected = _numpy_ema(record.weights)
    for got, want in zip(record.averages, expected, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # the first step's average is the weights themselves, exactly
    for a, b in zip(record.averages[0], record.weights[0]):
        np.testing.assert_array_equal(a, b)
    # finalize (Keras's finalize_variable_values): the weights are now the average ...
    final = _leaves(model.trainer.state.params)
    for a, b in zip(final, record.averages[-1]):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(final, record.weights[-1]))
    # ... in the module too, and the average is kept
    for a, b in zip(model.get_weights(), final):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(find(model.trainer.state.opt_state).average), final):
        np.testing.assert_array_equal(a, b)


def test_compile_ema_momentum_works_with_an_optax_optimizer():
    x, y = make_data(48)
    model, record = _model(optax.sgd(0.05), ema_momentum=0.5), Record()
    assert model.trainer.options.ema == EMA(0.5)
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.5  # as Keras's
    assert model.optimizer.ema_overwrite_frequency is None
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[record])
    expected = _numpy_ema(record.weights, 0.5)[-1]
    for a, b in zip(_leaves(model.trainer.state.params), expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_overwrite_frequency_sets_the_weights_to_the_average_every_k_steps():
    x, y = make_data(64)
    opt = ef.optimizers.sgd(0.1, momentum=0.0, use_ema=True, ema_momentum=0.5,
                            ema_overwrite_frequency=2)
    model, record = _model(opt), Record()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[record])
    for step, (params, average) in enumerate(zip(record.weights, record.averages), 1):
        close = all(np.allclose(p, a, rtol=1e-6, atol=1e-7) for p, a in zip(params, average))
        assert close == (step % 2 == 0 or step == 1), step  # step 1: the average is a copy


def test_without_ema_nothing_changes():
    x, y = make_data(48)
    assert not ef.optimizers.sgd().use_ema and ef.optimizers.sgd().ema is None
    model = _model(ef.optimizers.sgd(0.1, momentum=0.0))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert model.trainer.options.ema is None and not model.optimizer.use_ema
    assert find(model.trainer.state.opt_state) is None
    plain = ef.optimizers.sgd(0.1, momentum=0.0).build(None)
    params = model.trainer.state.params
    assert jax.tree.structure(model.trainer.state.opt_state) == \
        jax.tree.structure(plain.init(params))


def test_bad_ema_settings_are_refused_as_keras():
    with pytest.raises(ValueError, match="ema_momentum"):
        ef.optimizers.adam(use_ema=True, ema_momentum=1.5)
    with pytest.raises(ValueError, match="ema_overwrite_frequency"):
        ef.optimizers.adamw(use_ema=True, ema_overwrite_frequency=0)
    with pytest.raises(ValueError, match="ema_momentum"):
        _model(ef.optimizers.sgd(), ema_momentum=-0.1)


class Probe(ef.callbacks.Callback):
    """Records the weights the model shows at test begin, and at epoch end."""

    def __init__(self):
        super().__init__()
        self.at_test, self.at_epoch_end, self.average_at_test = [], [], []

    def on_test_begin(self, logs=None):
        self.at_test.append([np.array(w) for w in self.model.get_weights()])
        self.average_at_test.append(_leaves(find(self.model.trainer.state.opt_state).average))

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end.append([np.array(w) for w in self.model.get_weights()])


def test_swap_ema_weights_evaluates_with_the_average_and_swaps_back():
    x, y = make_data(64)
    before, after = Probe(), Probe()   # one before SwapEMAWeights, one after it
    model = _model()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y),
                        callbacks=[before, ef.callbacks.SwapEMAWeights(), after])
    for epoch in range(2):
        training, average = before.at_test[epoch], before.average_at_test[epoch]
        assert not all(np.array_equal(a, b) for a, b in zip(training, average))
        for a, b in zip(after.at_test[epoch], average):     # validation sees the average
            np.testing.assert_array_equal(a, b)
        for a, b in zip(before.at_epoch_end[epoch], training):  # and it is swapped back
            np.testing.assert_array_equal(a, b)
    # as Keras's test: the last validation equals an evaluation after fit (the average)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == logs["loss"]
    # without the callback the validation used the training weights
    plain = _model()
    history = plain.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y))
    assert history.history["val_loss"][-1] != plain.evaluate(x, y, verbose=0,
                                                             return_dict=True)["loss"]


def test_swap_on_epoch_checkpoints_the_average(tmp_path):
    x, y = make_data(64)
    model = _model()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y),
              callbacks=[ef.callbacks.SwapEMAWeights(swap_on_epoch=True),
                         ef.callbacks.ModelCheckpoint(tmp_path / "ckpt", monitor="loss",
                                                      async_save=False)])
    assert int(find(model.trainer.state.opt_state).swapped) == 0
    assert model.trainer.steps.train.cache_size() == train_programs(model)  # no recompile
    restored = _model(seed=1)
    restored.load_weights(str(tmp_path / "ckpt"))
    for a, b in zip(restored.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)     # the epoch-2 checkpoint holds the average


def test_swap_ema_weights_needs_an_optimizer_with_ema():
    x, y = make_data(32)
    model = _model(ef.optimizers.sgd(0.1))
    with pytest.raises(ValueError, match="SwapEMAWeights must be used when `use_ema=True`"):
        model.fit(x, y, epochs=1, verbose=0, validation_data=(x, y),
                  callbacks=[ef.callbacks.SwapEMAWeights()])
    with pytest.raises(ValueError, match="SwapEMAWeights must be used"):
        model.evaluate(x, y, verbose=0, callbacks=[ef.callbacks.SwapEMAWeights()])


def test_swap_before_any_step_changes_nothing():
    x, y = make_data(32)
    model = _model()
    plain = model.predict(x, verbose=0)
    swapped = model.predict(x, verbose=0, callbacks=[ef.callbacks.SwapEMAWeights()])
    np.testing.assert_array_equal(plain, swapped)


class Interrupted(Exception):
    pass


class InterruptAt(ef.callbacks.Callback):
    def __init__(self, step=None, epoch=None):
        super().__init__()
        self.step, self.epoch = step, epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.step is not None and self.model.trainer.step_count >= self.step:
            raise Interrupted

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.swapped = int(find(self.model.trainer.state.opt_state).swapped)
            raise Interrupted


def _resumable_fit(backup, *extra, save_freq="epoch"):
    x, y = make_data(80, seed=3)
    model = _model(ef.optimizers.adamw(1e-2, use_ema=True, ema_momentum=0.8),
                   steps_per_execution=2)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, validation_split=0.2,
                        callbacks=[*extra, ef.callbacks.SwapEMAWeights(swap_on_epoch=True),
                                   ef.callbacks.BackupAndRestore(backup, save_freq=save_freq)])
    return model, history


def test_interrupted_run_resumes_exactly_with_the_average(tmp_path):
    reference, ref_history = _resumable_fit(tmp_path / "ref")
    # the backup after epoch 1 is taken while the weights hold the average
    interrupt = InterruptAt(epoch=2)
    with pytest.raises(Interrupted):
        _resumable_fit(tmp_path / "backup", interrupt)
    assert interrupt.swapped == 1
    # then one taken mid-epoch
    with pytest.raises(Interrupted):
        _resumable_fit(tmp_path / "backup", InterruptAt(step=11), save_freq=2)
    resumed, history = _resumable_fit(tmp_path / "backup")
    assert history.history == ref_history.history
    state, ref_state = resumed.trainer.state, reference.trainer.state
    for a, b in zip(_leaves(state.params), _leaves(ref_state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(state.opt_state), _leaves(ref_state.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("where", ["compile", "optimizer"])
def test_save_and_load_model_keep_the_average(tmp_path, where):
    x, y = make_data(48)
    opt = ef.optimizers.sgd(0.05, momentum=0.0, use_ema=where == "optimizer", ema_momentum=0.5)
    model = _model(opt, **({"ema_momentum": 0.5} if where == "compile" else {}))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.save(str(tmp_path / "model"))
    loaded = ef.load_model(str(tmp_path / "model"), module=MLP(rngs=nnx.Rngs(1)))
    assert loaded.trainer.options.ema == EMA(0.5)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for a, b in zip(_leaves(loaded.trainer.state.opt_state),
                    _leaves(model.trainer.state.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ema_under_accumulation_and_float16_updates_every_batch():
    x, y = make_data(64)
    model = _model(ef.optimizers.sgd(0.1, momentum=0.0), ema_momentum=0.5,
                   gradient_accumulation_steps=2, precision="float16")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    node = find(model.trainer.state.opt_state)
    assert int(node.count) == 4      # every batch, as Keras (its iterations count batches)
    assert all(np.isfinite(w).all() for w in model.get_weights())
