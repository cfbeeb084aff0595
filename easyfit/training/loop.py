"""The loops: epochs x chunks for fit, chunks for evaluate and predict.

The host does not wait for the device inside an epoch: a chunk is dispatched, the next one
is prepared while it runs, and metric sums stay on the device until a log point (a callback
reading batch logs, the progress bar's refresh, the end of the epoch). The exceptions: it
stays at most ``MAX_RUNNING`` dispatches ahead (each holds its chunk in memory), and
``steps_per_execution="auto"`` waits a few times while it times the first steps
(`easyfit.training.steps_per_dispatch`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import jax
import numpy as np

from easyfit.callbacks.base import Callback, CallbackList, LazyLogs
from easyfit.callbacks.history import History
from easyfit.callbacks.progress import ProgressBar
from easyfit.callbacks.simple import TerminateOnNaN
from easyfit.data.adapters import DataAdapter
from easyfit.data.batch import Batch
from easyfit.data.on_device import device_rows
from easyfit.data.prefetch import prefetch
from easyfit.distribute import any_process, fetch, is_chief
from easyfit.errors import call_name
from easyfit.training.divergence import DivergenceCheck, takes_class_ids
from easyfit.training.dispatch_plan import regroup
from easyfit.training.ema_weights import finalize_average, has_average
from easyfit.training.steps_per_dispatch import StepTimer
from easyfit.memory.host import CompileWatch

if TYPE_CHECKING:
    from easyfit.model import Model
    from easyfit.training.trainer import Trainer

__all__ = ["MAX_RUNNING", "evaluate_loop", "fit_callbacks", "fit_loop", "predict_loop"]


def _floats(tree: dict[str, Any], names: list[str]) -> dict[str, float]:
    """Host floats in Keras's order (loss first); jitted dicts come back sorted."""
    host = fetch(tree)
    return {key: float(host[key]) for key in names}


def _on_device(trainer: "Trainer", data: DataAdapter, epoch: int, k: int,
               start: int = 0, **chunk_args: Any) -> Iterator[tuple[Batch, list[int]]]:
    """Chunks placed on the mesh by a background thread, ahead of the step that needs them."""
    place = trainer.distribution.place_chunk
    return prefetch(data.chunks(epoch, k, start, **chunk_args),
                    lambda item: (place(item[0]), item[1]))


# Train steps dispatched and not yet run, at most: the host stays ahead of the device, but
# not by a whole epoch, whose chunks would all be held in memory meanwhile.
MAX_RUNNING = 3
_EPOCH_END = object()


def _epoch_feeds(trainer: "Trainer", train: DataAdapter, epochs: range, start: int,
                 timer: StepTimer | None) -> Iterator[Iterator[tuple[Any, list[int]]]]:
    """One iterator of placed training chunks per epoch of ``epochs`` (the first from batch
    ``start``).

    While "auto" measures (``timer`` not settled), epochs are read one batch at a time and
    regrouped into ``timer.k``. Arrays that the fit holds on the devices
    (`easyfit.data.on_device`) come as chunks of row numbers, made in this thread (they
    cost less than handing them over between threads, which also made the speed vary by 2x
    from run to run). Other inputs are read, gathered and placed by a background thread.
    Arrays and re-iterable inputs are read ahead across epochs (``train.pure_epochs``): the
    next epoch's first chunk is ready when this one ends, so nothing waits for it at the
    boundary (each epoch starts over, so reading ahead has no side effect; a generator's
    next batches could be lost on a stop).
    """
    k = trainer.dispatch.steps()
    rows = device_rows(train, trainer.distribution, trainer.dispatch.one_step_per_call())
    args = {} if rows is None else {"as_index": True}
    place = rows or trainer.distribution.place_chunk

    def host(epoch: int) -> Iterator[tuple[Batch, list[int]]]:
        first = start if epoch == epochs.start else 0
        if timer is not None and timer.regroups:
            return regroup(train.chunks(epoch, 1, first, **args), lambda: timer.k)
        return train.chunks(epoch, k or timer.k, first, **args)

    def placed(item: Any) -> Any:
        return item if item is _EPOCH_END else (place(item[0]), item[1])

    depth = 0 if rows is not None else 2
    if not train.pure_epochs:
        for epoch in epochs:
            yield prefetch(host(epoch), placed, depth)
        return

    def read_ahead() -> Iterator[Any]:
        for epoch in epochs:
            yield from host(epoch)
            yield _EPOCH_END

    feed = prefetch(read_ahead(), placed, depth)
    try:
        for _ in epochs:
            yield iter(lambda: next(feed), _EPOCH_END)
    finally:
        feed.close()


class _Dispatcher:
    """Dispatches train steps, at most ``MAX_RUNNING`` ahead of the device, and hands back
    each compile's scratch memory."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.running: collections.deque = collections.deque()  # outputs of steps, oldest first
        self.compiles = CompileWatch()

    def __call__(self, chunk: Batch, batches: int) -> None:
        self.running.append(self.trainer.train_on_chunk(chunk, batches))
        if len(self.running) > MAX_RUNNING:  # the device is behind: wait for it
            jax.block_until_ready(self.running.popleft())
        self.compiles.release_if_compiled()


def _start_next_epoch(trainer: "Trainer", feeds: Iterator, dispatch: _Dispatcher) -> tuple[Any, Any]:
    """Dispatches the next epoch's first chunk now, before this epoch's logs are read: when
    the callbacks only read logs, nothing that runs in between can change that step, and the
    device need not wait while the host reads the logs and runs the callbacks.

    Returns the next epoch's chunks and that first ``(chunk, sizes)`` (``None`` if empty).
    """
    upcoming = next(feeds)
    first = next(upcoming, None)
    if first is not None:
        trainer.reset_totals()
        dispatch(first[0], len(first[1]))
    return upcoming, first


def _verbosity(verbose: int | str) -> int:
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)  # checked by easyfit.arguments before fit starts


def fit_callbacks(model: "Model", callbacks: Sequence[Callback] | None, history: History,
                  verbose: int | str, epochs: int, steps: int | None,
                  do_validation: bool = False, batch_size: int | None = None) -> CallbackList:
    """``fit``'s callbacks in Keras's order: the progress display first (one per job), the
    user's, History (it records what they set), then checkpointing (``runs_last``: it
    saves everyone's state after the epoch)."""
    verbose = _verbosity(verbose) if is_chief() else 0
    user = list(callbacks or [])
    savers = [c for c in user if getattr(c, "runs_last", False)]
    ordered = [*([ProgressBar(verbose)] if verbose else []),
               *(c for c in user if c not in savers), history, *savers]
    return CallbackList(ordered, model=model,
                        params={"epochs": epochs, "steps": steps, "verbose": verbose,
                                "do_validation": do_validation, "batch_size": batch_size})


def call_callbacks(model: "Model", callbacks: Sequence[Callback] | None, verbose: int | str,
                   steps: int | None, stage: str) -> CallbackList:
    """``evaluate``'s or ``predict``'s callbacks (``stage``), the progress display (the
    chief's, unless ``verbose=0``) first."""
    verbose = _verbosity(verbose) if is_chief() else 0
    shown = [ProgressBar(verbose, stage=stage)] if verbose else []
    return CallbackList([*shown, *(callbacks or [])], model=model,
                        params={"steps": steps, "verbose": verbose})


def fit_loop(model: "Model", train: DataAdapter, validation: DataAdapter | None, *,
             epochs: int, initial_epoch: int, validation_freq: int | list[int],
             callbacks: CallbackList) -> dict[str, float]:
    """Runs the epochs of ``Model.fit``; returns the last epoch's logs."""
    try:
        return _fit_epochs(model, train, validation, epochs=epochs, initial_epoch=initial_epoch,
                           validation_freq=validation_freq, callbacks=callbacks)
    finally:
        callbacks.close()  # pending checkpoint writes complete, files close, even on errors


def _fit_epochs(model: "Model", train: DataAdapter, validation: DataAdapter | None, *,
                epochs: int, initial_epoch: int, validation_freq: int | list[int],
                callbacks: CallbackList) -> dict[str, float]:
    trainer = model.trainer
    plan = trainer.dispatch
    names = trainer.steps.log_names(with_lr=trainer.has_lr)
    read_logs = lambda: _floats(trainer.train_logs(), names)
    batch_hooks = callbacks.wants("on_train_batch_end")
    # Agreed by all processes once: the progress display runs on the chief only, so a
    # per-process choice would have one process wait in a collective the others skip.
    batch_stops = any_process(callbacks.may_stop(("on_train_batch_begin", "on_train_batch_end")))
    auto = plan.undecided()
    logs: dict[str, float] = {}
    callbacks.on_train_begin()
    # A restored backup (BackupAndRestore) says where to continue: epoch and batch in epoch.
    start_epoch, start_batch = _resume_position(trainer, callbacks) or (initial_epoch, 0)
    timer = None  # "auto", not yet decided: measure (across epochs if short)
    if auto:
        timer = plan.timer or plan.start_timer(trainer.steps.train, trainer.distribution, train,
                                               trainer.state, train.sample_batch())
    dispatch = _Dispatcher(trainer)
    # a NaN loss is reported once, from the epoch-end logs the host reads anyway (no sync)
    divergence = DivergenceCheck(
        not any(isinstance(c, TerminateOnNaN) for c in callbacks.callbacks), train,
        class_ids=takes_class_ids(trainer.options.loss))
    feeds = _epoch_feeds(trainer, train, range(start_epoch, epochs), start_batch, timer)
    upcoming = None  # the next epoch's chunks, when its first one is already dispatched
    early = None     # that first chunk
    with contextlib.closing(feeds):  # stops reading ahead, also on errors
        for epoch in range(start_epoch, epochs):
            chunks = next(feeds) if upcoming is None else upcoming
            done = start_batch if epoch == start_epoch else 0
            if done == 0 and early is None:  # mid-epoch resumes keep the restored metric sums
                trainer.reset_totals()
            callbacks.on_epoch_begin(epoch)
            if timer is not None:
                timer.start_epoch(trainer.state)
            if early is not None:
                chunks = itertools.chain([early], chunks)
            sizes_run = set()
            for chunk, sizes in chunks:
                sizes_run.add(chunk.mask.shape[0])
                if callbacks.wants("on_train_batch_begin"):
                    callbacks.on_train_batch_begin(done)
                if early is None:
                    dispatch(chunk, len(sizes))
                early = None
                done += len(sizes)
                if timer is not None and not timer.settled:
                    left = None if train.steps is None else (epochs - epoch) * train.steps - done
                    plan.measure(trainer.steps.train, trainer.state, chunk, len(sizes), left)
                trainer.position = (epoch, done)
                if batch_hooks:
                    callbacks.on_train_batch_end(done - 1, LazyLogs(names, read_logs))
                if batch_stops:  # every process takes the same decision (no-op with one)
                    model.stop_training = any_process(model.stop_training)
                if model.stop_training:
                    break
            if timer is not None:
                timer.pause()
                if plan.end_epoch(sizes_run):
                    timer = None
            if done == 0:
                warnings.warn("The training input ran out of data; stopping training. Make it "
                              "repeat, or pass steps_per_epoch x epochs batches at most.",
                              stacklevel=3)
                break
            epoch_logs, epoch_steps = trainer.train_logs(), trainer.step_count
            validates = validation is not None and _validates(epoch, validation_freq)
            upcoming = None
            if (epoch + 1 < epochs and not validates and timer is None and train.pure_epochs
                    and not model.stop_training and callbacks.observers_only()):
                upcoming, early = _start_next_epoch(trainer, feeds, dispatch)
            logs = _floats(epoch_logs, names)
            divergence.check(logs, epoch, epoch_steps)
            if validates:
                model.stop_evaluating = False
                val_logs = evaluate_loop(trainer, validation, callbacks,  # on_test_* hooks fire, as Keras
                                         stop=lambda: model.stop_evaluating)
                divergence.check_validation(val_logs, epoch, epoch_steps, validation)
                logs.update({f"val_{key}": value for key, value in val_logs.items()})
                dispatch.compiles.release_if_compiled()
            trainer.position = (epoch + 1, 0)
            callbacks.on_epoch_end(epoch, logs)
            model.stop_training = any_process(model.stop_training)
            if model.stop_training or (train.exhausted and train.steps is None):
                break
    if auto:
        plan.end_fit()
    if has_average(trainer):  # use_ema: the weights become their average, before
        finalize_average(trainer)  # on_train_end, as Keras's finalize_variable_values
    callbacks.on_train_end(logs)
    return logs


def _resume_position(trainer: "Trainer", callbacks: CallbackList) -> tuple[int, int] | None:
    """Applies a restored backup's callback states; returns where to continue."""
    resume, trainer.pending_resume = trainer.pending_resume, None
    if resume is None:
        return None
    callbacks.restore_states(resume.callback_states)
    trainer.position = resume.position
    return resume.position


def _validates(epoch: int, validation_freq: int | list[int]) -> bool:
    if isinstance(validation_freq, int):
        return (epoch + 1) % validation_freq == 0
    return epoch + 1 in validation_freq


def _stop_check(callbacks: CallbackList, hooks: tuple[str, str],
                stop: Callable[[], bool] | None) -> Callable[[], bool]:
    """Whether to end the loop after this batch: only a batch hook of a callback that is not
    an observer can ask mid-loop (whether one can is agreed once by all processes, since
    the progress display is the chief's only), and every process takes the same decision
    (a no-op with one process)."""
    if stop is None or not any_process(callbacks.may_stop(hooks)):
        return lambda: False
    return lambda: any_process(stop())


def evaluate_loop(trainer: "Trainer", data: DataAdapter, callbacks: CallbackList,
                  stop: Callable[[], bool] | None = None,
                  per_dispatch: int | None = None) -> dict[str, float]:
    """Weighted means of the loss and metrics over ``data``, in eval mode; ends early after a
    batch where ``stop()`` is true (``model.stop_evaluating``, as Keras). ``per_dispatch``:
    batches per dispatch (default: the train step's)."""
    stops = _stop_check(callbacks, ("on_test_batch_begin", "on_test_batch_end"), stop)
    k = per_dispatch or trainer.dispatch.eval_steps()
    steps = trainer.steps
    names = steps.log_names(with_lr=False)
    totals = None
    compiles = CompileWatch()
    callbacks.on_test_begin()
    params, rest = trainer.eval_state()  # after on_test_begin, which may swap weights
    done = 0
    for chunk, sizes in _on_device(trainer, data, 0, k):
        if totals is None:
            totals = trainer.distribution.replicate(
                steps.zero_totals(params, rest, jax.tree.map(  # shapes only: nothing runs
                    lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), chunk)))
            names = steps.log_names(with_lr=False)  # several outputs: named by that trace
        callbacks.on_test_batch_begin(done)
        totals = steps.eval(params, rest, totals, chunk)
        done += len(sizes)
        if callbacks.wants("on_test_batch_end"):
            callbacks.on_test_batch_end(done - 1, LazyLogs(
                names, lambda t=totals: _floats(steps.results(t), names)))
        if stops():
            break
    if totals is None:
        call = call_name()
        raise ValueError(
            f"{call}: the input yielded no batch." + (
                " validation_data is read again for every validation; a generator or "
                "iterator can be read only once. Pass arrays or a list of batches, or a "
                "generator that repeats, with validation_steps=N." if "validation" in call
                else " Pass at least one batch (a generator or iterator that was read "
                "before is empty now)."))
    logs = _floats(steps.results(totals), names)
    compiles.release_if_compiled()
    callbacks.on_test_end(logs)
    return logs


def predict_loop(trainer: "Trainer", data: DataAdapter, callbacks: CallbackList,
                 stop: Callable[[], bool] | None = None, per_dispatch: int | None = None) -> Any:
    """Model outputs for every real row of ``data``, in order, as numpy; ends early after a
    batch where ``stop()`` is true (``model.stop_predicting``, as Keras). ``per_dispatch``:
    batches per dispatch (default: the train step's)."""
    stops = _stop_check(callbacks, ("on_predict_batch_begin", "on_predict_batch_end"), stop)
    k = per_dispatch or trainer.dispatch.eval_steps()
    steps = trainer.steps
    outputs: list[Any] = []
    pending = None  # (device outputs, sizes): fetched after the next chunk is dispatched
    compiles = CompileWatch()
    callbacks.on_predict_begin()
    params, rest = trainer.eval_state()  # after on_predict_begin, which may swap weights
    done = 0
    for chunk, sizes in _on_device(trainer, data, 0, k):
        callbacks.on_predict_batch_begin(done)
        result = steps.predict(params, rest, chunk.x)
        if pending is not None:
            outputs.extend(_unstack(*pending))
        pending = (result, sizes)
        done += len(sizes)
        if callbacks.wants("on_predict_batch_end"):  # Keras's logs: this call's outputs
            real = sum(sizes)
            callbacks.on_predict_batch_end(done - 1, {"outputs": jax.tree.map(
                lambda a: a[:len(sizes)].reshape(-1, *a.shape[2:])[:real], result)})
        if stops():
            break
    if pending is None:
        raise ValueError("The prediction input is empty: it yielded no batch.")
    outputs.extend(_unstack(*pending))
    compiles.release_if_compiled()
    callbacks.on_predict_end()
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def _unstack(stacked: Any, sizes: list[int]) -> list[Any]:
    host = fetch(stacked)
    return [jax.tree.map(lambda a: a[i, :size], host) for i, size in enumerate(sizes)]
