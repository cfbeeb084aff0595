"""Profiler: a JAX profiler trace of a range of training steps, for TensorBoard or Perfetto."""

from __future__ import annotations

import operator
import os
import warnings

import jax

from easyfit.callbacks.base import Callback
from easyfit.distribute.hosts import is_chief

__all__ = ["Profiler"]


class Profiler(Callback):
    """Records a profiler trace (host and device activity) of training steps ``steps``.

    The trace starts before optimizer step ``steps[0]`` runs and stops once step
    ``steps[1]`` is reached, so ``steps=(10, 20)`` covers ten steps, counting from 0 (like
    Keras's ``TensorBoard(profile_batch=...)``, in optimizer steps). Leave the first steps
    out unless you want to see the compile; with ``steps_per_execution="auto"``, profiling
    the first few dozen steps also slows the steps it times to choose ``k``. When steps
    run ``k`` per dispatch, both ends move forward to the next dispatch, and at least one
    dispatch is recorded. Epoch ends inside the range are recorded too; once the range is
    done, the trace stops before anything else runs (validation, the epoch's end, the next
    steps), or at the end of ``fit``. One trace per callback; only process 0 records.

    JAX writes the trace to ``log_dir/plugins/profile/<time>/``: ``*.xplane.pb`` for
    TensorBoard's profile plugin or XProf (``xprof --logdir log_dir``), ``*.trace.json.gz``
    for https://ui.perfetto.dev. Give it the ``log_dir`` of the
    [`TensorBoard`][easyfit.callbacks.TensorBoard] callback to see both in one run.

    The callback does not wait for the device at each step: it reads the host's step
    counter, and waits once, before it stops the trace, so that the device work of the
    last traced steps is in it.

    Args:
        log_dir: where to write the trace.
        steps: ``(start, stop)`` optimizer steps, ``0 <= start < stop``, or one step
            ``n``, meaning ``(n, n + 1)``.
        perfetto: also write ``perfetto_trace.json.gz``, ready to open in Perfetto.

    Raises:
        ValueError: if ``steps`` is not ``0 <= start < stop`` or a step ``n >= 0``.

    Examples:
        >>> cb = Profiler("runs/profile", steps=(10, 20))
        >>> model.fit(x, y, epochs=1, callbacks=[cb])  # doctest: +SKIP
    """

    every_batch = False  # once per dispatch is enough: "auto" keeps its steps per dispatch

    def __init__(self, log_dir: str | os.PathLike = "profile",
                 steps: int | tuple[int, int] = (10, 20), perfetto: bool = False):
        super().__init__()
        self.log_dir, self.perfetto = os.fspath(log_dir), perfetto
        self.start, self.stop = _step_range(steps)
        self._tracing = False
        self._started_at: int | None = None  # the step the trace started at
        self._done = False

    @property
    def tracing(self) -> bool:
        """Whether this callback's trace is being recorded now."""
        return self._tracing

    # The hooks stop the trace at the first chance once step `stop` is reached. None of
    # them is on_train_batch_end: overriding it makes fit agree on stop_training across
    # processes after every chunk, a host sync that a profiler must not add.
    def on_train_batch_begin(self, batch, logs=None):
        if self._tracing:
            self._stop_if_done()
        elif not self._done and self.model.trainer.step_count >= self.start:
            self._start_trace(self.model.trainer.step_count)

    def on_test_begin(self, logs=None):  # validation inside fit, once the steps are traced
        self._stop_if_done()

    def on_epoch_end(self, epoch, logs=None):
        self._stop_if_done()

    def on_train_end(self, logs=None):
        if self._tracing:
            self._stop_trace()

    def close(self) -> None:
        """Stops a trace still running (called by ``fit`` even when it fails)."""
        if self._tracing:
            self._stop_trace(wait=False)

    def _start_trace(self, step: int) -> None:
        self._done = True  # one trace per callback, even if starting fails
        if not is_chief():
            return
        try:
            jax.profiler.start_trace(self.log_dir, create_perfetto_trace=self.perfetto)
        except RuntimeError as error:  # another trace is running (one at a time)
            warnings.warn(f"Profiler could not start a trace at step {step}: {error}",
                          stacklevel=2)
            return
        self._tracing, self._started_at = True, step

    def _stop_if_done(self) -> None:
        step = self.model.trainer.step_count
        if self._tracing and step >= self.stop and step > self._started_at:
            self._stop_trace()

    def _stop_trace(self, wait: bool = True) -> None:
        self._tracing = False
        try:
            if wait:  # the traced steps may still be running on the device
                jax.block_until_ready(self.model.trainer.state)
        finally:
            jax.profiler.stop_trace()


def _step_range(steps: int | tuple[int, int]) -> tuple[int, int]:
    """``(start, stop)`` from ``steps``, checked."""
    def integer(value) -> int | None:
        if isinstance(value, bool):
            return None
        try:
            return operator.index(value)
        except TypeError:
            return None

    pair = (steps, integer(steps) + 1) if integer(steps) is not None else steps
    try:
        start, stop = (integer(value) for value in pair)
    except (TypeError, ValueError):  # not a pair
        start = stop = None
    if start is None or stop is None or not 0 <= start < stop:
        raise ValueError(f"Profiler steps must be (start, stop) optimizer steps with "
                         f"0 <= start < stop, e.g. steps=(10, 20), or one step n >= 0; "
                         f"got steps={steps!r}.")
    return start, stop
