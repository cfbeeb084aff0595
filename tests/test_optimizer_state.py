"""The optimizer state ``fit`` starts from: made with numpy when ``init`` only fills arrays
with constants (nothing compiles), jitted otherwise; equal to optax's ``init`` either way."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import easyfit as ef
from conftest import CompileCounter
from easyfit.training.train_state import init_optimizer_state

PARAMS = {"w": jnp.ones((3, 4)), "b": jnp.ones(4, jnp.bfloat16)}
ONE = jax.sharding.SingleDeviceSharding(jax.devices()[0])
KEY = jax.random.key(0)

CONSTANT_INITS = {
    "sgd": ef.optimizers.sgd(0.1, momentum=0.9).build(None),
    "adamw, clipped, scheduled": ef.optimizers.adamw(
        ef.schedules.warmup_cosine(1e-3, warmup=0.1), clipnorm=1.0).build(100),
    "adagrad (a non-zero start)": ef.optimizers.adagrad(initial_accumulator_value=0.1).build(None),
    "accumulation and loss scaling": ef.optimizers.adam().build(
        None, accumulation_steps=4, loss_scaling=True),
}


def _assert_same(made, expected):
    assert jax.tree.structure(made) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(made), jax.tree.leaves(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", list(CONSTANT_INITS))
def test_constant_inits_are_made_without_compiling(name):
    transform = CONSTANT_INITS[name]
    with CompileCounter() as compiles:
        made = init_optimizer_state(transform.init, PARAMS, ONE)
        jax.block_until_ready(made)
    assert compiles.count == 0
    _assert_same(made, transform.init(PARAMS))
    assert all(leaf.sharding == ONE for leaf in jax.tree.leaves(made))


@pytest.mark.parametrize("init", [
    optax.add_noise(0.1, 0.5, seed=0).init,                 # a PRNG key from the seed
    lambda params: {"key": KEY, "zeros": jax.tree.map(jnp.zeros_like, params)},  # a key held
    optax.inject_hyperparams(optax.adam)(1e-3).init,         # arithmetic on constants
    lambda params: {"start": params},                         # the parameters themselves
    lambda params: jax.tree.map(lambda p: 2 * p, params),     # computed from them
])
def test_inits_that_compute_run_jitted(init):
    with CompileCounter() as compiles:
        made = init_optimizer_state(init, PARAMS, ONE)
    assert compiles.count >= 1
    _assert_same(made, init(PARAMS))
