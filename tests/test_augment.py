"""``compile(augment=fn)``: ``fn((x, y), rng) -> (x, y)`` runs on training batches only,
inside the jitted step, with a fresh RNG key every step derived from ``compile(seed=)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_fixtures import (MLP, assert_params_close, forward, make_data, mlp_model,
                           params_differ, params_of, per_example_loss)


def _zero_inputs(batch, rng):
    x, y = batch
    return jnp.zeros_like(x), y


def _noise(batch, rng):
    x, y = batch
    return x + 0.5 * jax.random.normal(rng, x.shape, x.dtype), y


def test_augment_changes_training_batches_and_never_evaluation_or_predict():
    x, y = make_data(100)                    # batches of 32, the last one padded
    x_val, y_val = make_data(40, seed=1)
    module = MLP(rngs=nnx.Rngs(0))
    on_zeros = float(np.mean(per_example_loss(module, np.zeros_like(x), y)))
    on_data = float(np.mean(per_example_loss(module, x, y)))
    on_val = float(np.mean(per_example_loss(module, x_val, y_val)))
    assert on_zeros != pytest.approx(on_data, rel=1e-3)

    model = mlp_model(lr=0.0, augment=_zero_inputs)   # weights fixed: losses are plain means
    history = model.fit(x, y, batch_size=32, epochs=2, validation_data=(x_val, y_val),
                        verbose=0)
    np.testing.assert_allclose(history.history["loss"], [on_zeros] * 2, rtol=1e-5)
    np.testing.assert_allclose(history.history["val_loss"], [on_val] * 2, rtol=1e-5)
    assert model.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)["loss"] == \
        pytest.approx(on_data, rel=1e-5)
    np.testing.assert_allclose(model.predict(x, batch_size=32, verbose=0), forward(module, x),
                               atol=1e-6)

    plain = mlp_model(lr=0.0)
    np.testing.assert_allclose(model.predict(x, batch_size=32, verbose=0),
                               plain.predict(x, batch_size=32, verbose=0), atol=0)


def test_augment_can_change_labels():
    x, y = make_data(64)
    model = mlp_model(lr=0.0, augment=lambda batch, rng: (batch[0], jnp.zeros_like(batch[1])))
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    expected = float(np.mean(per_example_loss(MLP(rngs=nnx.Rngs(0)), x, np.zeros_like(y))))
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_augment_applies_to_dataset_inputs_too():
    x, y = make_data(64)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = mlp_model(lr=0.0, augment=_zero_inputs)
    history = model.fit(batches, epochs=1, verbose=0)
    expected = float(np.mean(per_example_loss(MLP(rngs=nnx.Rngs(0)), np.zeros_like(x), y)))
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_augment_gets_a_fresh_key_every_step(steps_per_execution):
    keys = []

    def record(batch, rng):
        jax.debug.callback(lambda k: keys.append(np.asarray(k).tobytes()),
                           jax.random.key_data(rng))
        return batch

    x, y = make_data(160)
    model = mlp_model(lr=0.1, augment=record, steps_per_execution=steps_per_execution)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)   # 10 steps an epoch
    jax.effects_barrier()
    assert len(keys) == 20
    assert len(set(keys)) == 20

    if steps_per_execution > 1:
        return
    # The same seed gives the same keys, step for step.
    first = list(keys)
    keys.clear()
    again = mlp_model(lr=0.1, augment=record, steps_per_execution=steps_per_execution)
    again.fit(x, y, batch_size=16, epochs=2, verbose=0)
    jax.effects_barrier()
    assert keys == first


def test_augment_randomness_follows_the_seed():
    x, y = make_data(96)
    fits = []
    for seed in (0, 0, 1):
        model = mlp_model(lr=0.1, augment=_noise, seed=seed)
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        fits.append(params_of(model.module))
    assert_params_close(fits[0], fits[1], atol=0)     # same seed: identical
    assert params_differ(fits[0], fits[2])            # another seed: other noise


def test_an_augment_of_the_wrong_shape_is_named():
    x, y = make_data(32)
    with pytest.raises(TypeError, match=r"augment is called as augment\(\(x, y\), key\).*"
                                        r"<lambda>\(batch\)"):
        mlp_model(augment=lambda batch: batch)
    model = mlp_model(augment=lambda batch, key: batch[0])  # forgot the labels
    with pytest.raises(TypeError, match=r"augment must return the batch as \(x, y\); it "
                                        r"returned a value: float32 \(\d+, 8\)"):
        model.fit(x, y, batch_size=16, verbose=0)
