"""The trainer's public surface: what loops, tools and callbacks rely on (issue 20)."""

import jax
import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from conftest import MLP, make_data, params_of
from easyfit.callbacks import Callback, CallbackList
from easyfit.training.live_optimizer import LiveOptimizer


def _model(optimizer=None):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(optimizer or ef.optimizers.sgd(0.05), "sparse_categorical_crossentropy")
    return model


def test_state_lives_in_the_trainer_and_is_written_back_to_the_module():
    x, y = make_data(64)
    model = _model()
    assert model.trainer.state is None and model.trainer.step_count == 0
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    state = model.trainer.state
    assert int(state.step) == 8 and model.trainer.step_count == 8
    assert model.trainer.position == (2, 0)
    trained = [np.asarray(a) for a in jax.tree.leaves(state.params)]
    np.testing.assert_array_equal(np.concatenate([a.ravel() for a in trained]),
                                  np.concatenate([a.ravel() for a in params_of(model.module)]))


def test_recompile_keeps_the_trained_weights_and_drops_the_state():
    x, y = make_data(64)
    model = _model()
    model.fit(x, y, batch_size=16, verbose=0)
    before = params_of(model.module)
    model.compile(ef.optimizers.adam(1e-3), "sparse_categorical_crossentropy")
    assert model.trainer.state is None and not model.trainer.has_steps
    for a, b in zip(before, params_of(model.module)):
        np.testing.assert_array_equal(a, b)


def test_optimizer_is_a_leaf_seen_through_the_trainer():
    x, y = make_data(64)
    optimizer = ef.optimizers.sgd(0.05)
    model = _model(optimizer)
    assert isinstance(model.optimizer, LiveOptimizer) and model.optimizer.optimizer is optimizer
    model.optimizer.learning_rate = 0.02          # before fit: the optimizer's own rate
    assert optimizer.learning_rate == 0.02
    model.fit(x, y, batch_size=16, verbose=0)
    model.optimizer.learning_rate = 0.01          # after: the live state's
    assert model.trainer.learning_rate == pytest.approx(0.01)
    assert optimizer.learning_rate == 0.02        # the leaf holds no live state
    assert model.optimizer.built                  # other attributes are the optimizer's


def test_checkpoint_payload_round_trips_through_load_checkpoint():
    x, y = make_data(64)
    model = _model()
    model.fit(x, y, batch_size=16, verbose=0)
    weights, train = model.trainer.checkpoint_payload(train=True)
    saved = jax.tree.map(np.asarray, (weights, train))
    step_count = model.trainer.step_count
    model.fit(x, y, batch_size=16, verbose=0)
    assert model.trainer.step_count == 2 * step_count
    model.trainer.load_checkpoint(*jax.tree.map(np.asarray, saved))
    assert model.trainer.step_count == step_count
    restored = jax.tree.leaves(saved[0]["params"])
    for a, b in zip(restored, params_of(model.module)):
        np.testing.assert_array_equal(a, b)


class Counter(Callback):
    def __init__(self, start):
        super().__init__()
        self.count = start

    def get_state(self):
        return {"count": self.count}

    def set_state(self, state):
        self.count = state["count"]


def test_callback_states_match_by_class_and_occurrence():
    saved = CallbackList([Counter(1), Counter(2), Callback()]).states()
    assert saved[2] is None
    fresh = [Counter(0), Counter(0)]
    CallbackList(fresh).restore_states(saved)
    assert [c.count for c in fresh] == [1, 2]
