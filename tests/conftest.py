"""Shared tiny modules, data and helpers for the easyfit test suite.

Everything here is small (sklearn digits or generated numpy, MLPs of a few thousand
parameters) so the whole suite runs in a couple of minutes on 2 CPU cores.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from typing import Any, Callable

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits

# Many tests build fresh models of the same shapes; each Model jits its own steps, so the
# same XLA programs would be compiled again and again (~1 s each on CPU). A persistent
# compilation cache, private to this test session, turns the repeats into cache reads.
# jit-cache sizes (``_cache_size()``) are unaffected, and CompileCounter below counts
# cache hits as compiles too, so the compile-once tests still see every compile request.
_XLA_CACHE = tempfile.mkdtemp(prefix="easyfit-tests-xla-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def digits():
    """sklearn digits, scaled to [0, 1]: (x_train, y_train, x_test, y_test), fixed split."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def make_data(n: int, din: int = 8, classes: int = 4, seed: int = 0):
    """Generated classification data: ``x`` float32 ``(n, din)``, ``y`` int32 ``(n,)``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, din)).astype(np.float32)
    w = rng.normal(size=(din, classes)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(n, classes)), axis=-1).astype(np.int32)
    return x, y


# ---------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------


class MLP(nnx.Module):
    """Two-layer MLP, no dropout / batch norm: deterministic in train and eval mode."""

    def __init__(self, din: int = 8, hidden: int = 16, dout: int = 4, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(din, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


class DropoutMLP(nnx.Module):
    """MLP with dropout between the layers."""

    def __init__(self, din: int = 8, hidden: int = 32, dout: int = 4, rate: float = 0.5, *,
                 rngs: nnx.Rngs):
        self.l1 = nnx.Linear(din, hidden, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.l2 = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.l1(x))))


class BNMLP(nnx.Module):
    """MLP with batch norm and dropout: the NNX twin of :class:`LinenNet`."""

    def __init__(self, din: int = 8, hidden: int = 32, dout: int = 4, rate: float = 0.1, *,
                 rngs: nnx.Rngs):
        self.l1 = nnx.Linear(din, hidden, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.l2 = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


class LinenNet(linen.Module):
    """Linen MLP with BatchNorm and Dropout, switched by ``train``."""

    hidden: int = 32
    dout: int = 10
    rate: float = 0.1

    @linen.compact
    def __call__(self, x, train: bool):
        x = linen.Dense(self.hidden)(x)
        x = linen.BatchNorm(use_running_average=not train)(x)
        x = linen.relu(x)
        x = linen.Dropout(self.rate, deterministic=not train)(x)
        return linen.Dense(self.dout)(x)


class DictMLP(nnx.Module):
    """Takes a dict ``{"a": (N, 3), "b": (N, 5)}``."""

    def __init__(self, dout: int = 4, *, rngs: nnx.Rngs):
        self.la = nnx.Linear(3, 8, rngs=rngs)
        self.lb = nnx.Linear(5, 8, rngs=rngs)
        self.out = nnx.Linear(8, dout, rngs=rngs)

    def __call__(self, inputs):
        return self.out(nnx.relu(self.la(inputs["a"]) + self.lb(inputs["b"])))


class Identity(nnx.Module):
    """Returns its input (plus 0 x a dummy parameter): the input *is* the prediction.

    Lets tests evaluate metrics and losses on known predictions.
    """

    def __init__(self):
        self.w = nnx.Param(jnp.zeros(()))

    def __call__(self, x):
        return x + 0.0 * self.w[...]


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def params_of(module: nnx.Module) -> list[np.ndarray]:
    """The module's ``nnx.Param`` leaves as host arrays, in a fixed order."""
    state = nnx.state(module, nnx.Param, graph=True)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def assert_params_close(a: list[np.ndarray], b: list[np.ndarray], atol: float = 1e-6):
    assert len(a) == len(b)
    for left, right in zip(a, b):
        assert left.shape == right.shape
        np.testing.assert_allclose(left, right, atol=atol, rtol=0)


def sparse_ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def hand_fit(module: nnx.Module, tx: optax.GradientTransformation, x: np.ndarray,
             y: np.ndarray, batch_size: int, epochs: int,
             loss_fn: Callable = sparse_ce) -> list[np.ndarray]:
    """A plain optax loop over ``module`` (not modified): in-order batches, the last one
    smaller; the loss is the mean over the batch's rows. Returns the final params."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ..., graph=True)
    params = jax.tree.map(jnp.array, params)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss(p):
            return jnp.mean(loss_fn(nnx.merge(graphdef, p, rest)(xb), yb))

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(epochs):
        for start in range(0, len(x), batch_size):
            params, opt_state = step(params, opt_state, x[start:start + batch_size],
                                     y[start:start + batch_size])
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def forward(module: nnx.Module, x) -> np.ndarray:
    """``module(x)`` (in the module's current mode), jitted, as numpy; ``module`` unchanged."""
    graphdef, state = nnx.split(module, graph=True)
    run = jax.jit(lambda s, x: nnx.merge(graphdef, s, copy=True)(x))
    return np.asarray(run(state, x))


def mean_loss(module: nnx.Module, x, y, loss_fn: Callable = sparse_ce) -> float:
    """Mean loss of ``module`` (in its current mode) over all rows, unpadded."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ..., graph=True)
    run = jax.jit(lambda p, x, y: jnp.mean(loss_fn(nnx.merge(graphdef, p, rest, copy=True)(x),
                                                   y)))
    return float(run(params, x, y))


def grad_of(module: nnx.Module, x, y, loss_fn: Callable = sparse_ce) -> list[np.ndarray]:
    """Gradient of the mean loss over ``(x, y)`` wrt the module's params."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ..., graph=True)

    def loss(p, x, y):
        return jnp.mean(loss_fn(nnx.merge(graphdef, p, rest, copy=True)(x), y))

    return [np.asarray(g) for g in jax.tree.leaves(jax.jit(jax.grad(loss))(params, x, y))]


class CompileCounter:
    """Counts XLA compile requests through ``jax.monitoring`` while active.

    The event wraps the compile-or-read-the-persistent-cache call, so a program served from
    the cache counts as well: a count of 0 means no new executable was made.
    """

    EVENT = "/jax/core/compile/backend_compile_duration"
    _registered = False
    _active: list["CompileCounter"] = []

    def __init__(self):
        self.count = 0

    @classmethod
    def _listener(cls, event: str, duration: float, **kwargs: Any) -> None:
        if event == cls.EVENT:
            for counter in cls._active:
                counter.count += 1

    def __enter__(self):
        if not CompileCounter._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileCounter._listener)
            CompileCounter._registered = True
        CompileCounter._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileCounter._active.remove(self)
        return False


def train_programs(model) -> int:
    """How many train-step programs one compile of ``model`` may make: one per chunk size.

    ``steps_per_execution="auto"`` starts fused when the step's cost analysis allows it (one
    program, two if it is far too slow); otherwise it runs one step per dispatch while it
    measures, then times the fused size it suggests: up to two programs. A padded last batch
    or a short last chunk never adds one.
    """
    return max(1, len(model.trainer.dispatch.compiled_sizes)) if model.trainer.dispatch.requested == "auto" else 1
