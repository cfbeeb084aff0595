"""ef.config (the persistent compilation cache) and the Profiler callback.

The cache tests run in fresh processes: this test session has its own cache (conftest.py),
and JAX opens a cache directory once per process.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from conftest import MLP, make_data

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE_SCRIPT = os.path.join(HERE, "cache_script.py")


def _python(args: list[str], env_extra: dict[str, str], cwd: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------
# persistent compilation cache
# ---------------------------------------------------------------------------------------


def test_cache_second_process_reads_every_program_and_writes_none(tmp_path):
    cache = tmp_path / "xla-cache"
    first = json.loads(_python([CACHE_SCRIPT], {"EASYFIT_CACHE_DIR": str(cache)}))
    entries = sorted(os.listdir(cache))
    assert first["cache_dir"] == str(cache)
    assert first["hits"] == 0 and first["writes"] > 0
    assert any(name.startswith("jit__train_chunk") for name in entries), entries
    assert any(name.startswith("jit__eval_chunk") for name in entries), entries
    assert any(name.startswith("jit__predict_chunk") for name in entries), entries

    second = json.loads(_python([CACHE_SCRIPT], {"EASYFIT_CACHE_DIR": str(cache)}))
    assert second["writes"] == 0                       # nothing compiled anew
    assert second["hits"] == first["writes"] == second["compiles"]
    assert sorted(os.listdir(cache)) == entries


def test_env_var_at_import_touches_no_device_and_set_cache_dir_switches(tmp_path):
    code = textwrap.dedent("""
        import json, os
        import easyfit as ef
        import jax
        import jax.numpy as jnp
        from jax._src import xla_bridge
        out = {"backends_at_import": xla_bridge.backends_are_initialized(),
               "from_env": ef.config.cache_dir(),
               "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
               "min_size": jax.config.jax_persistent_cache_min_entry_size_bytes}
        a = jnp.ones(4).block_until_ready()
        ef.config.set_cache_dir(None)
        out["off"] = ef.config.cache_dir()
        out["restored"] = [jax.config.jax_persistent_cache_min_compile_time_secs,
                           jax.config.jax_persistent_cache_min_entry_size_bytes]
        ef.config.set_cache_dir("rel")           # relative to the working directory
        out["relative"] = ef.config.cache_dir()
        jax.jit(lambda x: x * 3.0 + 1.0)(a).block_until_ready()
        ef.config.set_cache_dir("~/other")        # a switch after the cache was opened
        out["home"] = ef.config.cache_dir()
        jax.jit(lambda x: x * 5.0 - 2.0)(a).block_until_ready()
        out["rel_entries"] = len(os.listdir("rel"))
        out["other_entries"] = len(os.listdir(os.path.expanduser("~/other")))
        print(json.dumps(out))
    """)
    out = json.loads(_python(["-c", code], {"EASYFIT_CACHE_DIR": str(tmp_path / "env"),
                                            "HOME": str(tmp_path / "home")},
                             cwd=str(tmp_path)))
    assert out["backends_at_import"] is False
    assert out["from_env"] == str(tmp_path / "env")
    assert out["min_time"] == 0 and out["min_size"] == -1   # small CPU programs are cached
    assert out["off"] is None
    assert out["restored"] == [1.0, 0]                       # JAX's defaults again
    assert out["relative"] == str(tmp_path / "rel")
    assert out["home"] == str(tmp_path / "home" / "other")
    assert out["rel_entries"] == 1 and out["other_entries"] == 1


def test_set_cache_dir_rejects_bad_arguments():
    before = ef.config.cache_dir()
    with pytest.raises(ValueError, match="pass None"):
        ef.config.set_cache_dir("")
    with pytest.raises(ValueError, match="min_compile_time_secs"):
        ef.config.set_cache_dir("/tmp/x", min_compile_time_secs=-1)
    assert ef.config.cache_dir() == before
    assert "config" in ef.__all__


# ---------------------------------------------------------------------------------------
# Profiler
# ---------------------------------------------------------------------------------------


def _model(steps_per_execution: int = 1) -> ef.Model:
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.sgd(0.05), "sparse_categorical_crossentropy",
                  steps_per_execution=steps_per_execution)
    return model


class TraceSpy(ef.callbacks.Callback):
    """Records, before each chunk, the optimizer step and whether the trace is on."""

    def __init__(self, profiler):
        super().__init__()
        self.profiler, self.seen = profiler, []

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append((self.model.trainer.step_count, self.profiler.tracing))


def _traced_steps(spy: TraceSpy) -> list[int]:
    return [step for step, tracing in spy.seen if tracing]


def _trace_files(log_dir) -> list[str]:
    return glob.glob(os.path.join(str(log_dir), "plugins", "profile", "*", "*.xplane.pb"))


def test_profiler_traces_the_step_range(tmp_path):
    x, y = make_data(80)
    profiler = ef.callbacks.Profiler(tmp_path / "profile", steps=(2, 5))
    spy = TraceSpy(profiler)
    _model().fit(x, y, batch_size=10, epochs=2, verbose=0, validation_split=0.25,
                 callbacks=[profiler, spy])
    assert _traced_steps(spy) == [2, 3, 4]
    assert not profiler.tracing
    assert len(_trace_files(tmp_path / "profile")) == 1
    jax.profiler.start_trace(str(tmp_path / "again"))   # the profiler is free again
    jax.profiler.stop_trace()


def test_profiler_with_chunks_rounds_to_chunk_boundaries(tmp_path):
    x, y = make_data(80)
    profiler = ef.callbacks.Profiler(tmp_path / "profile", steps=(2, 5), perfetto=True)
    spy = TraceSpy(profiler)
    # 6 steps an epoch in chunks of 3: chunks start at steps 0, 3 | 6, 9
    _model(steps_per_execution=3).fit(x, y, batch_size=10, epochs=2, verbose=0,
                                      validation_split=0.25, callbacks=[profiler, spy])
    assert spy.seen == [(0, False), (3, True), (6, False), (9, False)]
    assert len(_trace_files(tmp_path / "profile")) == 1
    assert glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" /
                         "perfetto_trace.json.gz"))


def test_profiler_range_never_reached_writes_nothing(tmp_path):
    x, y = make_data(40)
    profiler = ef.callbacks.Profiler(tmp_path / "profile", steps=(100, 200))
    _model().fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[profiler])
    assert not (tmp_path / "profile").exists()


def test_profiler_stops_when_fit_fails(tmp_path):
    class Boom(ef.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if self.model.trainer.step_count == 3:
                raise RuntimeError("boom")

    x, y = make_data(80)
    profiler = ef.callbacks.Profiler(tmp_path / "profile", steps=(1, 50))
    with pytest.raises(RuntimeError, match="boom"):
        _model().fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[profiler, Boom()])
    assert not profiler.tracing
    assert len(_trace_files(tmp_path / "profile")) == 1


def test_profiler_warns_when_another_trace_runs(tmp_path):
    x, y = make_data(40)
    profiler = ef.callbacks.Profiler(tmp_path / "profile", steps=(0, 2))
    jax.profiler.start_trace(str(tmp_path / "user"))
    try:
        with pytest.warns(UserWarning, match="could not start a trace"):
            _model().fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[profiler])
    finally:
        jax.profiler.stop_trace()
    assert not (tmp_path / "profile").exists()


def test_profiler_only_on_process_zero(tmp_path, monkeypatch):
    import easyfit.callbacks.profiler as profiler_module

    monkeypatch.setattr(profiler_module, "is_chief", lambda: False)
    x, y = make_data(40)
    profiler = ef.callbacks.Profiler(tmp_path / "profile", steps=(0, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _model().fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[profiler])
    assert not (tmp_path / "profile").exists()


@pytest.mark.parametrize("steps", [(5, 2), (3, 3), (-1, 4), -2, (1, 2, 3), (1.5, 3), "10"])
def test_profiler_bad_steps_raise(steps):
    with pytest.raises(ValueError, match=r"0 <= start < stop, e.g. steps=\(10, 20\)"):
        ef.callbacks.Profiler(steps=steps)


def test_profiler_single_step_and_no_batch_end_hook():
    profiler = ef.callbacks.Profiler(steps=7)
    assert (profiler.start, profiler.stop) == (7, 8)
    # no on_train_batch_end: fit keeps its per-chunk path free of host agreements
    callbacks = ef.callbacks.CallbackList([profiler])
    assert callbacks.wants("on_train_batch_begin") and not callbacks.wants("on_train_batch_end")
    assert ef.callbacks.Profiler(steps=np.int64(3)).stop == 4


def test_profiler_does_not_force_one_step_per_dispatch():
    # Its batch hook works once per dispatch: steps_per_execution="auto" stays free to fuse.
    profiler = ef.callbacks.Profiler(steps=(10, 20))
    assert profiler.every_batch is False
    callbacks = ef.callbacks.CallbackList([profiler])
    if hasattr(callbacks, "needs_every_batch"):
        assert not callbacks.needs_every_batch()
