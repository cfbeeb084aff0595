"""compile(seed=...) decides dropout masks and the shuffling order: same seed, same run."""

from __future__ import annotations

import numpy as np
from flax import nnx

import easyfit as ef
from conftest import DropoutMLP, assert_params_close, make_data, params_of


def _run(seed, x, y, epochs=3):
    model = ef.Model(DropoutMLP(rate=0.5, rngs=nnx.Rngs(0)))  # fresh, same initial weights
    model.compile(ef.optimizers.adamw(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], seed=seed)
    history = model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    return history.history, params_of(model.module)


def test_same_seed_same_history_different_seed_different_history():
    x, y = make_data(160)
    history_a, params_a = _run(7, x, y)
    history_b, params_b = _run(7, x, y)
    history_c, params_c = _run(8, x, y)
    assert history_a == history_b  # bit for bit
    assert_params_close(params_a, params_b, atol=0)
    assert history_a["loss"] != history_c["loss"]
    assert any(not np.array_equal(a, c) for a, c in zip(params_a, params_c))


def test_seed_drives_dropout_without_shuffling():
    # shuffle off: only the dropout masks depend on the seed
    x, y = make_data(64)
    losses = []
    for seed in (1, 1, 2):
        model = ef.Model(DropoutMLP(rate=0.5, rngs=nnx.Rngs(0)))
        model.compile(ef.optimizers.sgd(0.0, momentum=0.0), "sparse_categorical_crossentropy",
                      seed=seed)
        losses.append(model.fit(x, y, batch_size=64, epochs=1, shuffle=False,
                                verbose=0).history["loss"][0])
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_seed_drives_shuffling_without_dropout():
    # rate 0: only the order of rows depends on the seed
    x, y = make_data(160)
    final = []
    for seed in (3, 3, 4):
        model = ef.Model(DropoutMLP(rate=0.0, rngs=nnx.Rngs(0)))
        model.compile(ef.optimizers.sgd(0.1), "sparse_categorical_crossentropy", seed=seed)
        model.fit(x, y, batch_size=32, epochs=1, shuffle=True, verbose=0)
        final.append(params_of(model.module))
    assert_params_close(final[0], final[1], atol=0)
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(final[0], final[2]))
