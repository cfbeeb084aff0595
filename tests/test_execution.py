"""steps_per_execution="auto": the choice, the regrouping of batches, and what users see."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from conftest import BNMLP, MLP, CompileCounter, make_data, params_of, train_programs
from easyfit.data.adapters import ArrayAdapter
from easyfit.training.dispatch_plan import regroup
from easyfit.training.steps_per_dispatch import (ASYNC_STEP_SECONDS, CALL_SHARE, MAX_CALL_SECONDS,
                                                 MAX_CHUNK_BYTES, MAX_STEPS, PEAK_FLOPS,
                                                 TARGET_SECONDS, call_cost, choose_steps,
                                                 first_size, step_flops)


def test_a_slow_step_runs_alone():
    assert choose_steps(TARGET_SECONDS, 1000, None) == 1
    assert choose_steps(1.0, 1000, None) == 1


def test_fast_steps_are_fused_in_powers_of_two_up_to_the_caps():
    assert choose_steps(TARGET_SECONDS / 3, 1000, None) == 4
    assert choose_steps(1e-7, 1000, None) == MAX_STEPS
    assert choose_steps(1e-7, 1000, steps_per_epoch=20) == 20       # no more than an epoch
    assert choose_steps(1e-7, MAX_CHUNK_BYTES // 4, None) == 4      # chunk input capped
    assert choose_steps(1e-7, MAX_CHUNK_BYTES // 5, None) == 4      # ... in a power of two


def test_a_costly_call_is_amortised_over_more_steps():
    # 0.2 s of fixed cost per call at 2%: calls of 10 s (the cap), 0.4 s a step -> 32
    assert choose_steps(0.4, 1000, None, fixed_cost=0.2) == 32
    assert choose_steps(0.4, 1000, None, fixed_cost=1.0) == 32     # capped at MAX_CALL_SECONDS
    assert choose_steps(0.4, 1000, 20, fixed_cost=0.2) == 20       # no more than an epoch
    assert choose_steps(0.001, 1000, None, fixed_cost=0.0005) == choose_steps(0.001, 1000, None)
    assert MAX_CALL_SECONDS * CALL_SHARE > 0.1                      # the cap leaves room


def test_a_long_step_runs_alone_on_an_accelerator():
    long, short = ASYNC_STEP_SECONDS, ASYNC_STEP_SECONDS / 4
    assert choose_steps(long, 1000, None) > 1                        # a CPU still fuses it
    assert choose_steps(long, 1000, None, asynchronous=True) == 1
    assert choose_steps(short, 1000, None, asynchronous=True) == choose_steps(short, 1000, None)


def test_only_a_large_cpu_scratch_costs_a_call_something():
    assert call_cost(8 * 2**20, "cpu") == 0.0          # glibc reuses blocks this small
    assert 0.05 < call_cost(362 * 2**20, "cpu") < 0.2  # mapped afresh: ~93k page faults
    assert call_cost(362 * 2**20, "gpu") == 0.0        # a pooled allocator


def test_regroup_stacks_single_batches_once_the_size_is_known():
    x, y = make_data(10)
    adapter = ArrayAdapter(x, y, batch_size=2)
    k = {"value": None}
    out = []
    for i, (chunk, sizes) in enumerate(regroup(adapter.chunks(0, 1), lambda: k["value"])):
        out.append((chunk.mask.shape[0], sizes))
        k["value"] = 3 if i == 0 else k["value"]
    # first chunk passes through; the other 4 batches become a 3-chunk and a padded one
    assert out == [(1, [2]), (3, [2, 2, 2]), (3, [2])]


def _fit(x, y, callbacks=(), epochs=2, steps_per_execution="auto"):
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(0.1), "sparse_categorical_crossentropy",
                  steps_per_execution=steps_per_execution)
    model.fit(x, y, batch_size=10, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


def test_auto_fuses_the_steps_of_a_small_model_and_trains_like_one_step():
    x, y = make_data(400)
    auto, single = _fit(x, y), _fit(x, y, steps_per_execution=1)
    assert auto.trainer.dispatch.steps() > 1           # a tiny MLP step is far below 20 ms
    assert int(auto.trainer.state.step) == int(single.trainer.state.step) == 80
    for a, b in zip(params_of(auto.module), params_of(single.module)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # the step's cost analysis says it is cheap: it starts fused, and compiles once
    assert auto.trainer.dispatch.timer is None and auto.trainer.dispatch.compiled_sizes == {auto.trainer.dispatch.steps()}
    assert auto.trainer.steps.train.cache_size() == train_programs(auto) == 1
    # a fit too short to time its one dispatch keeps the size it started at
    short = _fit(x, y, epochs=1)
    assert short.trainer.dispatch.steps() == 40 and short.trainer.dispatch.compiled_sizes == {40}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_fused_start_compiles_from_shapes_what_the_state_then_runs(optimizer):
    # compiled from the state's shapes before its arrays exist: batch statistics, dropout
    # keys and the optimizer state must match them exactly, or the first step compiles again
    x, y = make_data(400)
    model = ef.Model(BNMLP(rngs=nnx.Rngs(0)))
    model.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, batch_size=10, epochs=2, verbose=0)
    assert model.trainer.dispatch.compiled_sizes == {model.trainer.dispatch.steps()} and model.trainer.dispatch.steps() > 1
    assert model.trainer.steps.train.cache_size() == 1
    with CompileCounter() as counter:
        model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert counter.count == 0


def _batch_recorder(seen):
    return ef.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))


def test_a_callback_with_batch_hooks_sees_every_batch():
    seen = []
    x, y = make_data(200)
    model = _fit(x, y, callbacks=[_batch_recorder(seen)], epochs=1)
    assert seen == list(range(20))


def test_batch_hooks_see_every_batch_after_auto_chose_to_fuse():
    x, y = make_data(200)
    model = _fit(x, y)                                       # no callbacks: "auto" fuses
    k = model.trainer.dispatch.steps()
    assert k > 1
    seen = []
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[_batch_recorder(seen)])
    assert seen == list(range(20))
    assert model.trainer.dispatch.steps() == k                     # the next fit fuses again


def test_a_fit_with_batch_hooks_does_not_stop_later_fits_from_fusing():
    x, y = make_data(200)
    seen = []
    model = _fit(x, y, callbacks=[_batch_recorder(seen)], epochs=1)
    assert seen == list(range(20))
    model.fit(x, y, batch_size=10, epochs=2, verbose=0)
    assert model.trainer.dispatch.steps() > 1


def test_a_callback_fine_with_dispatches_keeps_auto():
    class PerDispatch(ef.callbacks.Callback):
        every_batch = False

        def __init__(self):
            super().__init__()
            self.batches = []

        def on_train_batch_end(self, batch, logs=None):
            self.batches.append(batch)

    x, y = make_data(400)
    callback = PerDispatch()
    model = _fit(x, y, callbacks=[callback], epochs=2)
    k = model.trainer.dispatch.steps()
    assert k > 1
    assert callback.batches[-1] == 39 and len(callback.batches) < 80   # per dispatch


class _EpochEndWeights(ef.callbacks.Callback):
    """Not an observer: it reads the weights at each epoch end."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_the_next_epoch_starts_early_only_for_observers_and_changes_nothing(
        steps_per_execution):
    x, y = make_data(200)
    run = lambda callbacks: _fit(x, y, callbacks, epochs=4,
                                 steps_per_execution=steps_per_execution)
    observed = run([ef.callbacks.CSVLogger(os.devnull)])  # observers only: starts early
    reader = _EpochEndWeights()
    checked = run([reader])                               # a weight reader: does not
    assert observed.history.history == checked.history.history  # the same logs, to the bit
    for a, b in zip(params_of(observed.module), params_of(checked.module)):
        np.testing.assert_array_equal(a, b)
    # the reader saw each epoch's own weights, not a step of the next epoch
    for epoch in (0, 2):
        expected = _fit(x, y, epochs=epoch + 1, steps_per_execution=steps_per_execution)
        for a, b in zip(reader.weights[epoch], expected.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert int(observed.trainer.state.step) == int(checked.trainer.state.step) == 80


def test_bad_steps_per_execution_names_auto():
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="'auto' or a positive int"):
        model.compile("sgd", "mse", steps_per_execution="fast")


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _chunk(k: int):
    x, y = make_data(2 * k)
    return next(ArrayAdapter(x, y, batch_size=2).chunks(0, k))[0]


@pytest.mark.parametrize("fused_seconds, keep", [(0.0001, True), (0.002, False)])
def test_the_fused_size_is_kept_only_if_it_is_faster(monkeypatch, fused_seconds, keep):
    from easyfit.training import steps_per_dispatch as execution

    clock = _FakeClock()
    monkeypatch.setattr(execution.time, "perf_counter", clock)
    timer = execution.StepTimer(steps_per_epoch=None)
    one, state = _chunk(1), np.zeros(())
    timer.after_chunk(state, one, 1)                 # compiles: not timed
    for _ in range(execution.PROBE_STEPS):
        clock.now += 0.001                           # 1 ms per step, one per dispatch
        timer.after_chunk(state, one, 1)
    candidate = choose_steps(0.001, 0, None)         # TARGET_SECONDS / 1 ms, a power of 2
    assert candidate > 1 and timer.k == candidate and not timer.settled   # to be timed
    fused = _chunk(candidate)
    timer.compiled(candidate, state)                 # the loop compiles it ahead
    clock.now += 1.0                                 # a cold first fused dispatch: not timed
    timer.after_chunk(state, fused, candidate)
    assert not timer.settled
    for _ in range(2):
        clock.now += candidate * fused_seconds
        timer.after_chunk(state, fused, candidate)
    assert timer.settled and timer.k == (candidate if keep else 1)


def test_the_candidate_leaves_room_to_be_timed_before_the_fit_ends(monkeypatch):
    from easyfit.training import steps_per_dispatch as execution

    clock = _FakeClock()
    monkeypatch.setattr(execution.time, "perf_counter", clock)
    for left, expected in ((40, 16), (20, 4)):
        timer = execution.StepTimer(steps_per_epoch=None)
        one, state = _chunk(1), np.zeros(())
        for _ in range(1 + execution.PROBE_STEPS):  # the compiling dispatch, then timed steps
            clock.now += 1e-6                        # fast steps: only the room caps the size
            timer.after_chunk(state, one, 1, steps_left=left)
        # one untimed fused dispatch, then at least PROBE_STEPS (16) timed steps: 16 + 16 <= 40,
        # 4 + 16 <= 20
        assert timer.k == expected


class _Traced:
    """A traced step as :func:`first_size` reads it: one dot of ``flops`` (none: no
    arithmetic), or a convolution."""

    def __init__(self, k, flops, convolution=False):
        self.k = k
        if convolution:
            fn = lambda x, w: jax.lax.conv(x, w, (1, 1), "SAME")
            args = (jax.ShapeDtypeStruct((1, 1, 10, 10), np.float32),
                    jax.ShapeDtypeStruct((1, 1, 3, 3), np.float32))
        elif flops:  # (n, 500) @ (500, 1): 2 * n * 500 flops
            fn = lambda a, b: a @ b
            args = (jax.ShapeDtypeStruct((int(flops) // 1000, 500), np.float32),
                    jax.ShapeDtypeStruct((500, 1), np.float32))
        else:
            fn, args = (lambda a: a.reshape(-1)), (jax.ShapeDtypeStruct((4, 4), np.float32),)
        self.jaxpr = jax.make_jaxpr(fn)(*args)

    def lower(self):
        return self


def _trace(flops, convolution=False):
    return lambda k: _Traced(k, flops, convolution)


def test_a_cheap_step_starts_fused_at_the_size_its_flops_allow():
    k, lowered, settled = first_size(_trace(1e6), 1000, None, "cpu")  # 1 us at the peak
    assert k == MAX_STEPS and lowered.k == k and not settled         # the caps decide
    step = TARGET_SECONDS / 8 * PEAK_FLOPS["cpu"]              # an eighth of the target
    k, lowered, _ = first_size(_trace(step), 1000, None, "cpu")
    assert k == 8 and lowered.k == 8                           # traced again at that size
    k, lowered, _ = first_size(_trace(1e6), 1000, 20, "cpu")
    assert k == 20 and lowered.k == 20                         # no more than an epoch


@pytest.mark.parametrize("trace, platform", [
    (_trace(None), "cpu"),                                     # no flops found
    (_trace(1e6), "metal"),                                    # a platform without a peak
    (_trace(PEAK_FLOPS["cpu"]), "cpu"),                        # 1 s a step even at the peak
])
def test_auto_measures_single_steps_when_the_cost_cannot_tell(trace, platform):
    k, lowered, settled = first_size(trace, 1000, None, platform)
    assert (k, lowered.k, settled) == (1, 1, False)            # compiled ahead, then timed


@pytest.mark.parametrize("trace, batch_bytes", [
    (_trace(1e6, convolution=True), 1000),                     # ~10x slower in a loop on CPU
    (_trace(1e6), MAX_CHUNK_BYTES),                            # the caps allow one batch
])
def test_auto_keeps_one_step_per_call_where_fusing_cannot_pay(trace, batch_bytes):
    k, lowered, settled = first_size(trace, batch_bytes, None, "cpu")
    assert (k, lowered.k, settled) == (1, 1, True)


def test_a_step_long_even_at_the_peak_runs_alone_on_an_accelerator_with_no_timing():
    flops = 2 * ASYNC_STEP_SECONDS * PEAK_FLOPS["gpu"]
    k, lowered, settled = first_size(_trace(flops), 1000, None, "gpu")
    assert (k, settled) == (1, True) and lowered is not None
    k, _, settled = first_size(_trace(flops / 100), 1000, None, "gpu")
    assert k > 1 and not settled


def test_convolutions_start_fused_off_the_cpu():
    k, _, _ = first_size(_trace(1e6, convolution=True), 1000, None, "gpu")
    assert k == MAX_STEPS


def test_step_flops_count_as_xla_does():
    """A train step with a loop over batches: within 5% of XLA's own cost analysis."""
    def step(w, xs, ys):
        def body(i, w):
            loss = lambda w: jnp.mean((jnp.tanh(xs[i] @ w[0]) @ w[1] - ys[i]) ** 2)
            return jax.tree.map(lambda p, g: p - 0.1 * g, w, jax.grad(loss)(w))
        return jax.lax.fori_loop(0, xs.shape[0], body, w)

    args = ((jnp.ones((64, 32)), jnp.ones((32, 10))), jnp.ones((8, 16, 64)),
            jnp.ones((8, 16, 10)))
    traced = jax.jit(step).trace(*args)
    flops, convolves = step_flops(traced.jaxpr.jaxpr)
    assert flops == pytest.approx(traced.lower().cost_analysis()["flops"], rel=0.05)
    assert not convolves


@pytest.mark.parametrize("seconds_per_step, expected, fixed_cost", [
    (0.0001, 64, 0.0),   # under the target: stays
    (0.004, 64, 0.0),    # 2.6x over: stays (a second compile costs more than it saves)
    (0.01, 16, 0.0),     # 6.4x over: shrinks to what the time asks for
    (0.01, 64, 0.05),    # a call's fixed cost asks for 2.5 s a call: stays
])
def test_a_fused_start_shrinks_only_when_far_over_the_target(monkeypatch, seconds_per_step,
                                                             expected, fixed_cost):
    from easyfit.training import steps_per_dispatch as execution

    clock = _FakeClock()
    monkeypatch.setattr(execution.time, "perf_counter", clock)
    timer = execution.StepTimer(steps_per_epoch=None, fixed_cost=fixed_cost)
    timer.start_fused(64)
    assert not timer.regroups and timer.untimed_k == 64
    fused, state = _chunk(64), np.zeros(())
    clock.now += 1.0
    timer.after_chunk(state, fused, 64)                         # the first dispatch: untimed
    while not timer.settled:
        clock.now += 64 * seconds_per_step
        timer.after_chunk(state, fused, 64)
    assert timer.k == expected


def test_convolutions_on_cpu_run_one_step_per_call():
    class Conv(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.out = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(self.conv(x).reshape(x.shape[0], -1))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = ef.Model(Conv(nnx.Rngs(0)))
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert model.trainer.dispatch.compiled_sizes == {1} and model.trainer.dispatch.steps() == 1   # decided, untimed
    assert model.trainer.steps.train.cache_size() == 1        # compiled ahead, once


@pytest.mark.parametrize("spe", [1, 4])
def test_small_array_datasets_train_from_the_device_like_from_the_host(monkeypatch, spe):
    from easyfit.data import on_device

    x, y = make_data(300)   # 10 batches: with 4 per chunk, the last chunk has a filler batch
    w = np.linspace(0.5, 1.5, 300).astype(np.float32)
    trained = []
    monkeypatch.setattr(on_device, "WIDE_ROW_BYTES", 0)   # held, whatever the rows' width
    for limit in (on_device.DEVICE_DATA_BYTES, 0):   # rows gathered in the step, then the host
        monkeypatch.setattr(on_device, "DEVICE_DATA_BYTES", limit)
        model = ef.Model(MLP(rngs=nnx.Rngs(0)))
        model.compile(ef.optimizers.sgd(0.1), "sparse_categorical_crossentropy", ["accuracy"],
                      steps_per_execution=spe)
        history = model.fit(x, y, sample_weight=w, batch_size=32, epochs=3, verbose=0)
        trained.append((params_of(model.module), history.history))
    (device_params, device_history), (host_params, host_history) = trained
    for a, b in zip(device_params, host_params):
        np.testing.assert_array_equal(a, b)
    assert device_history == host_history


def test_rows_are_gathered_in_the_step_where_it_pays():
    from easyfit.data import on_device

    narrow = (np.zeros((10, 64), np.float32), np.zeros(10, np.int32))    # 260 bytes a row
    wide = (np.zeros((10, 784), np.float32), np.zeros(10, np.int32))    # 3,140 bytes
    assert not on_device.gathers_in_step(narrow, False, "cpu")  # the host gathers those
    assert on_device.gathers_in_step(narrow, True, "cpu")       # a call per step: held
    assert on_device.gathers_in_step(wide, False, "cpu")
    assert on_device.gathers_in_step(narrow, False, "gpu")      # accelerators: always held


def test_device_tables_only_for_one_process_and_small_data():
    x, y = make_data(100)
    assert ArrayAdapter(x, y).device_tables(10**9) is not None
    assert ArrayAdapter(x, y).device_tables(100) is None                       # too big
    assert ArrayAdapter(x, y, process_count=2).device_tables(10**9) is None    # per process
    chunk, sizes = next(ArrayAdapter(x, y, batch_size=30).chunks(3, 4, start=3, as_index=True))
    assert chunk.x.dtype == np.int32 and chunk.x.shape == (4, 30)
    assert sizes == [10]                                   # the last, padded batch
