"""Memory you can see: ``estimate_memory``, ``find_batch_size``, ``check_capacity`` and
``summary(batch_size=...)``, checked against XLA's own ``memory_analysis()`` on CPU.

The CPU backend reports no device capacity, so the capacity paths are checked by
patching ``easyfit.memory.estimate.device_capacity``; per-device figures on several devices
run in a subprocess with 8 fake CPU devices.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from easyfit.data import on_device
from easyfit import memory
from easyfit.data.adapters import ArrayAdapter

from conftest import MLP, CompileCounter, DropoutMLP, LinenNet, make_data, params_of

HERE = os.path.dirname(os.path.abspath(__file__))
LOSS = "sparse_categorical_crossentropy"


def _model(module=None, optimizer="adamw", **compile_kwargs) -> ef.Model:
    model = ef.Model(module or MLP(din=8, hidden=64, rngs=nnx.Rngs(0)))
    compile_kwargs.setdefault("steps_per_execution", 1)
    model.compile(optimizer=optimizer, loss=LOSS, **compile_kwargs)
    return model


@pytest.fixture(scope="module")
def data():
    return make_data(256)


class _TrainCompiles(logging.Handler):
    """Counts XLA compiles of the train step (``jax_log_compiles`` records)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        if "Compiling jit(_train_chunk)" in record.getMessage():
            self.count += 1


@pytest.fixture
def train_compiles():
    handler, logger = _TrainCompiles(), logging.getLogger("jax._src.interpreters.pxla")
    jax.config.update("jax_log_compiles", True)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        jax.config.update("jax_log_compiles", False)


# -- what an estimate holds ----------------------------------------------------------------


def test_estimate_grows_with_batch_size(data):
    x, y = data
    model = _model()
    small, large = (model.estimate_memory(b, x[:2], y[:2]) for b in (8, 1024))
    assert large.temp_bytes > small.temp_bytes
    assert large.peak_bytes > small.peak_bytes
    assert large.input_bytes == 128 * small.input_bytes
    # The state does not depend on the batch size.
    assert (large.params_bytes, large.optimizer_bytes) == (small.params_bytes,
                                                          small.optimizer_bytes)


def test_params_and_adamw_state_bytes(data):
    x, y = data
    module = MLP(din=8, hidden=64, rngs=nnx.Rngs(0))
    params_nbytes = sum(p.nbytes for p in params_of(module))
    estimate = _model(module, optimizer="adamw").estimate_memory(32, x[:2], y[:2])
    assert estimate.params_bytes == params_nbytes
    # Adam's two moments, plus a few scalars (step counts, the learning-rate scale).
    assert 2 * params_nbytes <= estimate.optimizer_bytes <= 2 * params_nbytes + 64
    assert estimate.devices == 1 and estimate.batch_size == 32
    assert estimate.steps_per_execution == 1


def test_figures_are_the_compiled_steps_memory_analysis(data):
    """Compiled again here from concrete arrays (a real placed chunk, the live state)."""
    x, y = data
    model = _model(steps_per_execution=2)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    estimate = model.estimate_memory(48, x[:2], y[:2])
    adapter = ArrayAdapter(x, y, batch_size=48)
    chunk = model.distribution.place_chunk(next(adapter.chunks(0, 2))[0])
    trainer = model.trainer
    analysis = trainer.steps.train.lower(trainer.state, chunk).compile().memory_analysis()
    assert estimate.argument_bytes == analysis.argument_size_in_bytes
    assert estimate.output_bytes == analysis.output_size_in_bytes
    assert estimate.alias_bytes == analysis.alias_size_in_bytes
    assert estimate.temp_bytes == analysis.temp_size_in_bytes
    assert estimate.generated_code_bytes == analysis.generated_code_size_in_bytes
    assert estimate.peak_bytes == (analysis.argument_size_in_bytes
                                   + analysis.output_size_in_bytes
                                   - analysis.alias_size_in_bytes
                                   + analysis.temp_size_in_bytes)
    assert estimate.steps_per_execution == 2
    assert estimate.input_bytes == sum(leaf.nbytes for leaf in jax.tree.leaves(chunk))
    # The donated state is aliased: its bytes are counted once.
    state_bytes = estimate.params_bytes + estimate.optimizer_bytes + estimate.other_bytes
    assert estimate.alias_bytes >= state_bytes - 64


def test_total_counts_what_fit_keeps_beside_the_step(data):
    """Between steps, the arrays alive on the device are the state, the chunk just trained
    on and the prefetched chunks (the module's own variables were there before fit): never
    more than the estimate's arguments + prefetched inputs."""
    x, y = make_data(2048, din=64)   # one step per call: the arrays are held on the device
    measured = _model(MLP(din=64, hidden=256, rngs=nnx.Rngs(0)))
    measured.fit(x, y, batch_size=128, epochs=1, verbose=0)
    estimate = measured.estimate_memory(128)  # knows the arrays fit held on the device
    assert estimate.dataset_bytes == x.nbytes + y.astype(np.int32).nbytes  # 2048 rows: no padding
    assert estimate.module_bytes == estimate.params_bytes  # no batch stats here
    assert estimate.prefetch_bytes == memory.CHUNKS_AHEAD * estimate.input_bytes
    assert estimate.total_bytes == (estimate.peak_bytes + estimate.module_bytes
                                    + estimate.prefetch_bytes)
    seen = []

    class Live(ef.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(0.02)  # give the prefetcher time to fill its queue
            seen.append(sum(a.nbytes for a in jax.live_arrays()))

    model = _model(MLP(din=64, hidden=256, rngs=nnx.Rngs(0)))  # the same, not trained yet
    gc.collect()
    before = sum(a.nbytes for a in jax.live_arrays())  # the module's variables, and others'
    model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[Live()])
    grown = max(seen) - before
    assert grown <= estimate.argument_bytes + estimate.prefetch_bytes + 1024
    # the state and the arrays; the chunk of row numbers is placed within the step's call
    assert grown >= estimate.argument_bytes - estimate.input_bytes - 1024


def test_estimate_is_frozen_and_prints_a_table(data):
    x, y = data
    estimate = _model().estimate_memory(64, x[:2], y[:2])
    with pytest.raises(AttributeError):
        estimate.batch_size = 1  # type: ignore[misc]
    text = str(estimate)
    capacity = "unknown" if jax.default_backend() == "cpu" else "fits"  # the GPU suite runs this
    for label in ("batch size 64", "Parameters", "Optimizer state", "temporaries", "peak",
                  "prefetched", "Total while training", "Device capacity", capacity):
        assert label in text
    assert "KiB" in text


# -- before fit: rows in, nothing changed ----------------------------------------------------


def test_no_data_and_no_rows_is_a_clear_error():
    model = _model()
    with pytest.raises(ValueError, match=r"estimate_memory\(256, x_train\[:2\]"):
        model.estimate_memory(256)
    with pytest.raises(ValueError, match="find_batch_size"):
        model.find_batch_size(budget_bytes=2**20)
    with pytest.raises(ValueError, match="x_train"):
        model.summary(print_fn=None, batch_size=64)


def test_errors_for_targets_uncompiled_and_bad_batch_sizes(data):
    x, y = data
    with pytest.raises(RuntimeError, match="compile"):
        ef.Model(MLP(rngs=nnx.Rngs(0))).estimate_memory(32, x[:2], y[:2])
    model = _model()
    with pytest.raises(ValueError, match="targets"):
        model.estimate_memory(32, x[:2])
    with pytest.raises(ValueError, match="positive int"):
        model.estimate_memory(0, x[:2], y[:2])
    with pytest.raises(TypeError, match="numpy arrays"):
        model.estimate_memory(32, [(x[:2], y[:2])])


def test_estimate_before_fit_changes_nothing(data):
    """Weights, RNG streams, optimizer step, and the schedule fit resolves: a fit after an
    estimate ends bit for bit where a fit without one does."""
    x, y = data

    def make():
        schedule = ef.schedules.warmup_cosine(peak=1e-2, warmup=0.2)  # a fraction of fit
        return _model(DropoutMLP(rngs=nnx.Rngs(1)), ef.optimizers.adamw(schedule))

    reference = make()
    reference.fit(x, y, batch_size=32, epochs=2, verbose=0)

    model = make()
    before = params_of(model.module)
    rng_before = [np.asarray(jax.random.key_data(a)) if jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else np.asarray(a)
        for a in jax.tree.leaves(nnx.state(model.module, nnx.Not(nnx.Param), graph=True))]
    estimate = model.estimate_memory(64, x[:3], y[:3])
    assert estimate.peak_bytes > 0
    assert model.trainer.state is None and not model.trainer.has_steps
    assert not model.optimizer.built
    for a, b in zip(params_of(model.module), before):
        np.testing.assert_array_equal(a, b)
    rng_after = [np.asarray(jax.random.key_data(a)) if jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else np.asarray(a)
        for a in jax.tree.leaves(nnx.state(model.module, nnx.Not(nnx.Param), graph=True))]
    for a, b in zip(rng_after, rng_before):
        np.testing.assert_array_equal(a, b)

    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert model.trainer.step_count == reference.trainer.step_count
    for a, b in zip(params_of(model.module), params_of(reference.module)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.history.history["learning_rate"], reference.history.history["learning_rate"])


def test_estimate_before_fit_keeps_an_optimizer_already_built(data):
    """A state-less model whose optimizer is built (a fit that failed after building it)
    keeps that optimizer as it was: the estimate reuses it, and forgets nothing."""
    x, y = data
    model = _model(optimizer=ef.optimizers.adamw(ef.schedules.warmup_cosine(1e-2, 0.2)))
    transform = model.optimizer.build(16)
    model.estimate_memory(64, x[:2], y[:2])
    assert model.trainer.state is None
    assert model.optimizer.built and model.optimizer.transform is transform


def test_estimate_before_fit_of_a_linen_model(data):
    """A Linen module waiting for its first input is initialised from the rows (as fit
    would from its first batch), and trains as one that was never estimated."""
    x, y = data

    def make():
        model = ef.Model(LinenNet(hidden=16, dout=4))
        model.compile("adamw", LOSS, steps_per_execution=1)
        return model

    reference = make()
    reference.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model = make()
    assert model.estimate_memory(64, x[:2], y[:2]).params_bytes > 0
    assert model.trainer.has_module and model.trainer.state is None
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for a, b in zip(params_of(model.module), params_of(reference.module)):
        np.testing.assert_array_equal(a, b)


def test_estimate_after_fit_keeps_training_state(data):
    x, y = data
    model = _model()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    step, weights = int(model.trainer.state.step), params_of(model.module)
    model.estimate_memory(64, x[:2], y[:2])
    model.estimate_memory(128)  # the shapes are remembered
    assert int(model.trainer.state.step) == step
    for a, b in zip(params_of(model.module), weights):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # trains on from there
    assert int(model.trainer.state.step) == 2 * step


def test_summary_shows_the_estimate(data):
    x, y = data
    model = _model()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.estimate_memory(32, x[:2], y[:2])  # (fit records the shapes via check_capacity)
    text = model.summary(print_fn=None, batch_size=64)
    assert "Trainable params" in text
    assert "Memory per device: training at batch size 64" in text
    assert "Total while training" in text


# -- capacity ---------------------------------------------------------------------------------


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU's capacity only")
def test_cpu_capacity_is_unknown_and_check_capacity_is_silent_and_free(data):
    x, y = data
    model = _model()
    estimate = model.estimate_memory(32, x[:2], y[:2])
    assert estimate.capacity_bytes is None and estimate.fits is None
    assert memory.device_capacity(model) is None
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with CompileCounter() as compiles:
            assert memory.check_capacity(model, 4096, ArrayAdapter(x, y, batch_size=4096)) \
                is None
    assert compiles.count == 0


def test_check_capacity_warns_when_over_capacity(data, monkeypatch):
    x, y = data
    model = _model()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    total = model.estimate_memory(32, x[:2], y[:2]).total_bytes
    monkeypatch.setattr(memory.estimate, "device_capacity", lambda model: total - 1)
    with pytest.warns(memory.MemoryWarning, match=r"find_batch_size\(\)") as caught:
        estimate = memory.check_capacity(model, 32)
    assert estimate.fits is False and estimate.capacity_bytes == total - 1
    assert "batch size 32" in str(caught[0].message)
    assert "DOES NOT FIT" in str(estimate)

    monkeypatch.setattr(memory.estimate, "device_capacity", lambda model: total)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert memory.check_capacity(model, 32).fits is True


def test_check_capacity_remembers_the_inputs_shapes(data, monkeypatch):
    x, y = data
    model = _model()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    memory.subject.forget_shapes(model)  # as if fit had not recorded them
    with pytest.raises(ValueError, match="input shapes"):
        model.estimate_memory(32)
    monkeypatch.setattr(memory.estimate, "device_capacity", lambda model: 2**40)
    assert memory.check_capacity(model, 32, ArrayAdapter(x, y, batch_size=32)).fits
    assert model.estimate_memory(64).batch_size == 64


# -- find_batch_size -------------------------------------------------------------------------


def test_find_batch_size_fits_the_budget_and_twice_does_not(data):
    x, y = data
    model = _model()
    budget = model.estimate_memory(300, x[:2], y[:2]).total_bytes
    batch = model.find_batch_size(x[:2], y[:2], budget_bytes=budget, max_batch_size=8192)
    assert batch >= 300
    assert model.estimate_memory(batch, x[:2], y[:2]).total_bytes <= budget
    assert model.estimate_memory(2 * batch, x[:2], y[:2]).total_bytes > budget
    assert model.trainer.state is None  # measured, then put back


def test_find_batch_size_limits_and_errors(data, monkeypatch):
    x, y = data
    model = _model()
    assert model.find_batch_size(x[:2], y[:2], budget_bytes=2**40, max_batch_size=100) == 100
    monkeypatch.setattr(memory.estimate, "device_capacity", lambda model: None)  # as on a CPU
    with pytest.raises(ValueError, match="budget_bytes="):
        model.find_batch_size(x[:2], y[:2])  # no capacity to default to
    with pytest.raises(ValueError, match="Even a batch of 1"):
        model.find_batch_size(x[:2], y[:2], budget_bytes=10)


def test_find_batch_size_defaults_to_the_capacity(data, monkeypatch):
    x, y = data
    model = _model()
    budget = model.estimate_memory(64, x[:2], y[:2]).total_bytes
    monkeypatch.setattr(memory.estimate, "device_capacity", lambda model: budget)
    assert model.find_batch_size(x[:2], y[:2], max_batch_size=4096) == \
        model.find_batch_size(x[:2], y[:2], budget_bytes=budget, max_batch_size=4096)


# -- compiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("held", [False, True])  # the arrays from the host, or on the device
def test_estimate_at_the_training_shapes_shares_the_step_compile(data, train_compiles, held,
                                                                 monkeypatch):
    """``lower(...).compile()`` and the jitted call share JAX's executable cache: measuring
    before training costs the step no second compile, and measuring after costs none."""
    if not held:  # (one step per call: held unless too large)
        monkeypatch.setattr(on_device, "DEVICE_DATA_BYTES", 0)
    x, y = data
    model = _model()
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # builds the state
    assert (model.estimate_memory(32).dataset_bytes > 0) == held
    before = train_compiles.count
    model.estimate_memory(48)                     # a new batch size: one compile...
    assert train_compiles.count == before + 1
    model.fit(x[:64], y[:64], batch_size=48, epochs=1, verbose=0)   # ...which fit reuses
    model.estimate_memory(32)                     # the shapes fit compiled: none
    assert train_compiles.count == before + 1


def test_an_estimate_from_a_few_rows_leaves_out_the_dataset(data, monkeypatch):
    """A few rows say nothing of the arrays a later fit holds on the device; after that
    fit, estimates count them (they are inputs of its train step)."""
    x, y = data   # one step per call: the arrays are held on the device
    model = _model()
    assert model.estimate_memory(32, x[:2], y[:2]).dataset_bytes == 0
    model.fit(x[:100], y[:100], batch_size=32, epochs=1, verbose=0)
    after = model.estimate_memory(32)
    rows = on_device.table_rows(100)  # 104: rounded up to 4 binary digits
    assert after.dataset_bytes == rows * (x[0].nbytes + np.int32(0).nbytes)
    assert "Training arrays held on the device" in str(after)
    # too large to hold: the rows come from the host, as the few rows estimated
    monkeypatch.setattr(on_device, "DEVICE_DATA_BYTES", 0)
    model.fit(x[:100], y[:100], batch_size=32, epochs=1, verbose=0)
    assert model.estimate_memory(32).dataset_bytes == 0


# -- several devices ---------------------------------------------------------------------------

_EIGHT_DEVICES = textwrap.dedent("""
    import json, sys
    import numpy as np
    from flax import nnx
    import easyfit as ef
    from conftest import MLP, make_data

    x, y = make_data(64)
    out = {}
    for name, dist in (("dp", ef.distribute.DataParallel()),
                       ("fsdp", ef.distribute.FSDP(min_size=64))):
        model = ef.Model(MLP(din=8, hidden=64, rngs=nnx.Rngs(0)), distribution=dist)
        model.compile("adamw", "sparse_categorical_crossentropy", steps_per_execution=1)
        est = model.estimate_memory(64, x[:2], y[:2])
        found = model.find_batch_size(x[:2], y[:2], budget_bytes=est.total_bytes,
                                      max_batch_size=1024)
        try:
            model.estimate_memory(12, x[:2], y[:2])
            error = ""
        except ValueError as e:
            error = str(e)
        out[name] = dict(devices=est.devices, params=est.params_bytes,
                         opt=est.optimizer_bytes, input=est.input_bytes, found=found,
                         error=error)
    out["total_params"] = sum(p.nbytes for p in jax.tree.leaves(
        nnx.state(MLP(din=8, hidden=64, rngs=nnx.Rngs(0)), nnx.Param, graph=True)))
    json.dump(out, open(sys.argv[1], "w"))
""").replace("import json, sys", "import json, sys\nimport jax")


def test_per_device_figures_on_eight_devices(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), HERE,
                                         env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, str(tmp_path / "out.json")],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())
    dp, fsdp, total = out["dp"], out["fsdp"], out["total_params"]
    assert dp["devices"] == fsdp["devices"] == 8
    assert dp["params"] == total                       # replicated: all of it on each device
    assert fsdp["params"] < total / 2                  # sharded: a share on each device
    assert fsdp["opt"] < dp["opt"] / 2
    assert dp["input"] == fsdp["input"]                # 8 rows of 64 per device either way
    for run in (dp, fsdp):
        assert run["found"] % 8 == 0 and run["found"] >= 64
        assert "multiple of 8" in run["error"]
