"""Helpers shared by the data-input tests (test_data_*.py, test_augment.py, test_prefetch.py).

Self-contained on purpose (does not import conftest): tiny modules, generated data, a
by-hand loss, and the local TFDS ``digits`` dataset built once per test session.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import easyfit as ef


# ---------------------------------------------------------------------------------------
# modules and data
# ---------------------------------------------------------------------------------------


class MLP(nnx.Module):
    """Flattens and casts its input to float32 (uint8 images arrive as they are)."""

    def __init__(self, din: int = 8, hidden: int = 16, dout: int = 4, scale: float = 1.0, *,
                 rngs: nnx.Rngs):
        self.scale = scale
        self.l1 = nnx.Linear(din, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1).astype(jnp.float32) * self.scale
        return self.l2(nnx.relu(self.l1(x)))


def make_data(n: int, din: int = 8, classes: int = 4, seed: int = 0):
    """Generated classification data: ``x`` float32 ``(n, din)``, ``y`` int32 ``(n,)``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, din)).astype(np.float32)
    w = rng.normal(size=(din, classes)).astype(np.float32)
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(n, classes)), axis=-1).astype(np.int32)
    return x, y


def model_for(module: nnx.Module, lr: float = 0.0, metrics=("accuracy",), **compile_kw) -> ef.Model:
    """``module`` compiled with plain SGD (no momentum) and sparse cross-entropy."""
    model = ef.Model(module)
    model.compile(optax.sgd(lr), "sparse_categorical_crossentropy", metrics=list(metrics),
                  **compile_kw)
    return model


def mlp_model(lr: float = 0.0, din: int = 8, dout: int = 4, init: int = 0, **compile_kw):
    """``MLP`` initialised from ``nnx.Rngs(init)``; ``compile_kw`` (``seed=``, ``augment=``,
    ...) go to ``compile``."""
    return model_for(MLP(din=din, dout=dout, rngs=nnx.Rngs(init)), lr, **compile_kw)


def per_example_loss(module: nnx.Module, x, y) -> np.ndarray:
    """Per-row sparse cross-entropy of ``module`` on ``(x, y)``, computed here by hand."""
    graphdef, state = nnx.split(module, graph=True)
    logits = jax.jit(lambda s, x: nnx.merge(graphdef, s, copy=True)(x))(state, x)
    return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)))


def forward(module: nnx.Module, x) -> np.ndarray:
    graphdef, state = nnx.split(module, graph=True)
    return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s, copy=True)(x))(state, x))


def params_of(module: nnx.Module) -> list[np.ndarray]:
    state = nnx.state(module, nnx.Param, graph=True)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def assert_params_close(a, b, atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_allclose(left, right, atol=atol, rtol=0)


def params_differ(a, b, atol: float = 1e-6) -> bool:
    return any(not np.allclose(l, r, atol=atol, rtol=0) for l, r in zip(a, b))


class BatchCounter(ef.callbacks.Callback):
    """Counts train batches per epoch (``on_train_batch_end`` calls)."""

    def __init__(self):
        super().__init__()
        self.per_epoch: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


# ---------------------------------------------------------------------------------------
# guards
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def deadline(seconds: int, what: str = "the call"):
    """Fails (instead of hanging) when the block runs longer than ``seconds`` (main thread)."""

    def expire(signum, frame):
        raise TimeoutError(f"{what} did not finish within {seconds} s (hang?)")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------
# the local TFDS digits dataset, built once per session
# ---------------------------------------------------------------------------------------

_DIGITS_DIR: dict[str, str] = {}


def digits_data_dir(tmp_path_factory) -> str:
    """Builds ``easyfit.datasets.digits`` (TFRecord + ArrayRecord) once per session."""
    if "dir" not in _DIGITS_DIR:
        from easyfit.datasets import digits
        _DIGITS_DIR["dir"] = digits.prepare(str(tmp_path_factory.mktemp("tfds_digits")))
    return _DIGITS_DIR["dir"]


class DigitsMLP(nnx.Module):
    """8x8x1 uint8 images -> 10 logits; casts and scales inside."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, 64, rngs=rngs)
        self.l2 = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1).astype(jnp.float32) / 16.0
        return self.l2(nnx.relu(self.l1(x)))


def digits_model(seed: int = 0, compile_seed: int = 0) -> ef.Model:
    model = ef.Model(DigitsMLP(rngs=nnx.Rngs(seed)))
    model.compile(ef.optimizers.adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], seed=compile_seed)
    return model


DIGITS_EPOCHS = 4
DIGITS_BAR = 0.9
