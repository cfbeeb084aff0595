"""Small stand-ins for the Keras layers and data of Keras 3's own tests.

Keras's tests build ``Sequential([Dense(..), Dense(..)])`` models on random data; these are
NNX modules of the same shapes, so each translated test asserts the same behaviour.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

import easyfit as ef


class Dense2(nnx.Module):
    """``Sequential([Dense(hidden, activation), Dense(out)])``."""

    def __init__(self, din: int, hidden: int, out: int, relu: bool = True, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.l1, self.l2 = nnx.Linear(din, hidden, rngs=rngs), nnx.Linear(hidden, out, rngs=rngs)
        self.relu = relu

    def __call__(self, x):
        h = self.l1(x)
        return self.l2(nnx.relu(h) if self.relu else h)


class Ones(nnx.Module):
    """Keras's ``ExampleModel`` of trainer_test: a dense layer with ones as kernel, no bias."""

    def __init__(self, din: int, units: int):
        self.kernel = nnx.Param(np.ones((din, units), np.float32))

    def __call__(self, x):
        return x @ self.kernel


def random_data(n: int, din: int, dout: int = 1, seed: int = 1337):
    rng = np.random.default_rng(seed)
    return (rng.random((n, din)).astype(np.float32), rng.random((n, dout)).astype(np.float32))


def regression_model(din: int = 5, hidden: int = 4, out: int = 1, optimizer=None,
                     metrics=("mse",), loss: str = "mae") -> ef.Model:
    model = ef.Model(Dense2(din, hidden, out))
    model.compile(optimizer or ef.optimizers.sgd(0.01, momentum=0.0), loss, list(metrics))
    return model
