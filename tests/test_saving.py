"""Whole-model saving (``model.save`` / ``ef.load_model``) and serving exports
(``model.export`` / ``ef.load_exported``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef
from conftest import MLP, DropoutMLP, LinenNet, make_data


class ServedNet(nnx.Module):
    """BatchNorm + dropout: eval mode matters for an export."""

    def __init__(self, din: int = 8, hidden: int = 16, dout: int = 4, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(din, hidden, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.l2 = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def my_loss(y_true, y_pred):
    """A user's loss: Python code, which a save cannot store."""
    return optax.softmax_cross_entropy_with_integer_labels(y_pred, y_true)


X, Y = make_data(96)
FIT = dict(batch_size=16, verbose=0)


def _dropout_model(seed: int = 0, **compile_kw) -> ef.Model:
    model = ef.Model(DropoutMLP(rngs=nnx.Rngs(seed)))
    compile_kw.setdefault("optimizer", ef.optimizers.adamw(
        ef.schedules.warmup_cosine(1e-2, warmup=0.25), weight_decay=1e-3))
    compile_kw.setdefault("loss", "sparse_categorical_crossentropy")
    model.compile(**compile_kw)
    return model


def _equal(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))


def _rng_state(model: ef.Model) -> list[np.ndarray]:
    leaves = jax.tree.leaves(nnx.state(model.module, nnx.RngState))
    return [np.asarray(jax.random.key_data(leaf) if jax.dtypes.issubdtype(
        leaf.dtype, jax.dtypes.prng_key) else leaf) for leaf in leaves]


def test_round_trip_then_fit_continues_bit_exact(tmp_path):
    original = _dropout_model(metrics=["accuracy"])
    original.fit(X, Y, epochs=2, **FIT)
    original.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "easyfit_model.json").read_text())
    assert config["compile"]["optimizer"]["name"] == "adamw"
    assert config["training"]["step_count"] == original.trainer.step_count == 12

    # a module built with another seed: every weight (and the dropout RNG) comes from the save
    loaded = ef.load_model(tmp_path / "m", module=lambda: DropoutMLP(rngs=nnx.Rngs(7)))
    assert loaded.compiled and _equal(original.get_weights(), loaded.get_weights())
    assert _equal(_rng_state(original), _rng_state(loaded))
    assert np.array_equal(original.predict(X, verbose=0), loaded.predict(X, verbose=0))
    assert loaded.optimizer.learning_rate == pytest.approx(original.optimizer.learning_rate)

    # the optimizer state (Adam moments, schedule position) and the RNG streams continue
    continued = original.fit(X, Y, epochs=2, **FIT).history
    resumed = loaded.fit(X, Y, epochs=2, **FIT).history
    assert continued == resumed
    assert _equal(original.get_weights(), loaded.get_weights())
    assert loaded.trainer.step_count == original.trainer.step_count == 24

    # control: a fresh optimizer state does not give the same weights
    fresh = ef.load_model(tmp_path / "m", module=DropoutMLP(rngs=nnx.Rngs(0)), compile=False)
    assert not fresh.compiled
    fresh.compile(ef.optimizers.adamw(ef.schedules.warmup_cosine(1e-2, warmup=0.25),
                                      weight_decay=1e-3), "sparse_categorical_crossentropy")
    fresh.fit(X, Y, epochs=2, **FIT)
    assert not _equal(original.get_weights(), fresh.get_weights())


def test_compile_config_restored(tmp_path):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(0.05, momentum=0.5, nesterov=True), "mse",
                  metrics=["mae", ef.metrics.TopKAccuracy(k=2, name="top2")],
                  weighted_metrics=["mae"], steps_per_execution=2, seed=3)
    model.optimizer.learning_rate = 0.02  # before fit: the saved optimizer has the new rate
    target = np.eye(4, dtype=np.float32)[Y]
    model.save(tmp_path / "m")  # compiled, never trained: no optimizer state yet
    loaded = ef.load_model(tmp_path / "m", module=MLP(rngs=nnx.Rngs(1)))
    options = loaded.trainer.options
    assert options.loss.name == "mse"
    assert [m.name for m in options.metrics] == ["mae", "top2"]
    assert options.metrics[1].k == 2
    assert [m.name for m in options.weighted_metrics] == ["weighted_mae"]
    assert (options.steps_per_execution, options.seed) == (2, 3)
    assert loaded.optimizer.learning_rate == 0.02
    assert options.optimizer.recipe["args"]["momentum"] == 0.5
    assert options.optimizer.recipe["args"]["nesterov"] is True
    a = model.fit(X, target, epochs=1, **FIT).history
    b = loaded.fit(X, target, epochs=1, **FIT).history
    assert a == b and list(a) == ["loss", "mae", "top2", "weighted_mae", "learning_rate"]


def test_uncompiled_model_saves_weights_and_loads_uncompiled(tmp_path):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.save(tmp_path / "m")
    loaded = ef.load_model(tmp_path / "m", module=MLP(rngs=nnx.Rngs(5)))
    assert not loaded.compiled
    assert np.array_equal(model.predict(X, verbose=0), loaded.predict(X, verbose=0))


def test_callable_loss_is_noted_and_asked_for(tmp_path):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.adam(1e-2), my_loss, metrics=[lambda y, p: jnp.abs(p[:, 0])])
    model.fit(X, Y, epochs=1, **FIT)
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "easyfit_model.json").read_text())
    assert config["compile"]["loss"]["name"] == "my_loss"
    assert "custom_objects" in config["compile"]["loss"]["note"]
    assert config["compile"]["metrics"][0]["custom"] == "metric"

    with pytest.raises(ValueError, match="my_loss.*<lambda>.*custom_objects.*compile=False"):
        ef.load_model(tmp_path / "m", module=MLP(rngs=nnx.Rngs(0)))
    loaded = ef.load_model(tmp_path / "m", module=MLP(rngs=nnx.Rngs(0)), custom_objects={
        "my_loss": my_loss, "<lambda>": lambda y, p: jnp.abs(p[:, 0])})
    assert model.fit(X, Y, epochs=1, **FIT).history == loaded.fit(X, Y, epochs=1, **FIT).history
    assert _equal(model.get_weights(), loaded.get_weights())
    assert not ef.load_model(tmp_path / "m", module=MLP(rngs=nnx.Rngs(0)),
                             compile=False).compiled


def test_optax_optimizer_is_asked_for_by_role(tmp_path):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(optax.sgd(0.1), "sparse_categorical_crossentropy")
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="optimizer 'optimizer'"):
        ef.load_model(tmp_path / "m", module=MLP(rngs=nnx.Rngs(0)))
    loaded = ef.load_model(tmp_path / "m", module=MLP(rngs=nnx.Rngs(0)),
                           custom_objects={"optimizer": optax.sgd(0.1)})
    assert loaded.compiled


def test_bad_paths_and_modules(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ef.load_model(missing, module=MLP(rngs=nnx.Rngs(0)))
    assert not missing.exists()
    with pytest.raises(ValueError, match="not a model saved by easyfit"):
        ef.load_model(tmp_path, module=MLP(rngs=nnx.Rngs(0)))

    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.save(tmp_path / "m")
    with pytest.raises(TypeError, match="module="):
        ef.load_model(tmp_path / "m", module=None)
    with pytest.raises(ValueError, match=r"module= does not match(.|\n)*l1/kernel"):
        ef.load_model(tmp_path / "m", module=MLP(hidden=32, rngs=nnx.Rngs(0)))

    # never replaces what is not an easyfit save; replaces a save only with overwrite
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a model saved by easyfit"):
        model.save(other)
    assert os.listdir(other) == ["notes.txt"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m", overwrite=False)
    model.save(tmp_path / "m")  # overwrite=True, the default, as Keras 3
    assert sorted(os.listdir(tmp_path / "m")) == ["easyfit_model.json", "state"]

    with pytest.raises(RuntimeError, match="sample_input="):  # a Linen model not built yet
        ef.Model(LinenNet()).save(tmp_path / "linen")
    assert not (tmp_path / "linen").exists()


def test_export_matches_predict_for_any_batch_size(tmp_path):
    model = ef.Model(ServedNet(rngs=nnx.Rngs(0)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(X, Y, epochs=1, **FIT)  # BatchNorm statistics move: the export must use them
    model.export(tmp_path / "e", sample_input=X[:1])
    served = ef.load_exported(tmp_path / "e")
    assert served.config["inputs"] == {"shape": ["batch", 8], "dtype": "float32"}
    for n in (3, 50):
        np.testing.assert_allclose(served(X[:n]), model.predict(X[:n], verbose=0),
                                   rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="sample_input="):
        model.export(tmp_path / "e2")
    with pytest.raises(FileNotFoundError):
        ef.load_exported(tmp_path / "none")
    with pytest.raises(ValueError, match="not an easyfit export"):
        ef.load_exported(tmp_path)
    for wrong in (X[:2, :5], X[:2].astype(np.int32), X[0]):  # features, dtype, no batch axis
        with pytest.raises(ValueError, match=r"This export takes x \(batch, 8\) float32; got "
                                             rf"x {wrong.dtype} {re.escape(str(wrong.shape))}"):
            served(wrong)
    with pytest.raises(ef.errors.ModuleInputError,
                       match=r"model\.export: x has 5 features where the first layer"):
        model.export(tmp_path / "e3", sample_input=X[:1, :5])
    assert not (tmp_path / "e3").exists()

    # a fresh process runs it with no model code and no training code imported
    np.save(tmp_path / "x.npy", X[:5])
    script = (
        "import sys, numpy as np\n"
        "from easyfit.export import load_exported\n"
        f"out = load_exported({str(tmp_path / 'e')!r})(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, out)\n"
        "bad = [m for m in sys.modules if m in ('test_saving', 'conftest', 'easyfit.model')\n"
        "       or m.startswith(('easyfit.training', 'flax.nnx'))]\n"
        "assert not bad, bad\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.predict(X[:5], verbose=0),
                               rtol=1e-5, atol=1e-6)


class TwoHeads(nnx.Module):
    """Two outputs in a dict: ``a`` regresses, ``b`` classifies."""

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.body = nnx.Linear(8, 16, rngs=rngs)
        self.head_a = nnx.Linear(16, 1, rngs=rngs)
        self.head_b = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.body(x))
        return {"a": self.head_a(h)[:, 0], "b": self.head_b(h)}


def test_several_outputs_and_loss_weights_restored(tmp_path):
    y = {"a": X[:, 0], "b": Y}
    model = ef.Model(TwoHeads())
    model.compile(ef.optimizers.adam(1e-2), loss={"a": "mse", "b": ef.losses.
                                                 SparseCategoricalCrossentropy()},
                  loss_weights={"a": 1.0, "b": 0.5}, metrics={"b": ["accuracy"]})
    model.fit(X, y, epochs=1, **FIT)
    model.save(tmp_path / "m")
    loaded = ef.load_model(tmp_path / "m", module=lambda: TwoHeads(seed=1))
    a, b = model.fit(X, y, epochs=1, **FIT).history, loaded.fit(X, y, epochs=1, **FIT).history
    assert a == b and "b_accuracy" in a
    assert _equal(model.get_weights(), loaded.get_weights())

    single = ef.Model(MLP(rngs=nnx.Rngs(0)))
    single.compile("sgd", "sparse_categorical_crossentropy", loss_weights=0.25)
    single.save(tmp_path / "s")
    options = ef.load_model(tmp_path / "s", module=MLP(rngs=nnx.Rngs(0))).trainer.options
    assert options.loss.weight == 0.25
