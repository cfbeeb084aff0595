"""What experiment trackers log, and the callback that MLflow and W&B loggers build on.

``TrackerCallback`` decides *when* to log (each epoch's logs; the running training
logs every ``log_every_n_steps`` steps, read only then; the final weights at the end) and
*who* logs (the chief process only); a subclass says *how*, in four methods:
``start_run``, ``log_metrics``,
``log_directory`` and ``end_run``.
``hyperparameters`` is what a run records of ``compile`` and ``fit``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import jax

from easyfit.callbacks.base import Callback
from easyfit.distribute.hosts import is_chief
from easyfit.recipes import recipe_of

__all__ = ["TrackerCallback", "hyperparameters", "plain"]


def plain(value: Any) -> bool | int | float | str | None:
    """``value`` as a tracker stores it: numbers, strings, booleans and ``None`` as they are,
    anything else (a schedule, a mask function, a tuple) as its text.

    Examples:
        >>> plain(0.1), plain((1, 2))
        (0.1, '(1, 2)')
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy / JAX scalar
        return value.item()
    return str(value)


def _name(obj: Any) -> str:
    return str(getattr(obj, "name", None) or getattr(obj, "__name__", None) or type(obj).__name__)


def hyperparameters(model: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a run, as one flat dict: the optimizer (``"optimizer"``, its name,
    and ``"optimizer.<argument>"`` for each argument of the ``ef.optimizers`` function that
    built it), ``compile``'s loss, metrics, precision and the rest, ``fit``'s epochs, steps
    and batch size (from the callbacks' ``params``), and the module and how many parameters
    and devices it trains with. ``None`` values are left out.

    Args:
        model: the compiled ``ef.Model``, its training state built (from
            ``on_train_begin`` on).
        params: the callbacks' ``params`` of the running ``fit``.

    Returns:
        ``{name: number | string | bool}``.
    """
    trainer = model.trainer
    options = trainer.options
    optimizer = options.optimizer
    values: dict[str, Any] = {"optimizer": None if optimizer is None else optimizer.name}
    recipe = recipe_of(optimizer)
    for key, value in (recipe["args"] if recipe else {}).items():
        values[f"optimizer.{key}"] = value
    state = trainer.state
    values.update({
        "loss": None if options.loss is None else _name(options.loss),
        "metrics": ", ".join(m.name for m in options.metrics) or None,
        "weighted_metrics": ", ".join(m.name for m in options.weighted_metrics) or None,
        "steps_per_execution": options.steps_per_execution,
        "seed": options.seed,
        "precision": options.precision,
        "gradient_accumulation_steps": options.accumulation_steps,
        "remat": options.remat,
        "ema_momentum": None if options.ema is None else options.ema.momentum,
        "epochs": params.get("epochs"),
        "steps_per_epoch": params.get("steps"),
        "batch_size": params.get("batch_size"),
        "validation": params.get("do_validation"),
        "module": type(trainer.module).__name__ if trainer.has_module else None,
        "num_params": None if state is None else
        sum(int(leaf.size) for leaf in jax.tree.leaves(state.params)),
        "distribution": type(trainer.distribution).__name__,
        "processes": jax.process_count(),
        "devices": jax.device_count(),
    })
    return {key: plain(value) for key, value in values.items() if value is not None}


class TrackerCallback(Callback):
    """Base class of the experiment-tracker callbacks
    ([MLflowLogger][easyfit.callbacks.MLflowLogger],
    [WandbLogger][easyfit.callbacks.WandbLogger]); subclass it for another tracker.

    Only the chief process (``ef.distribute.is_chief()``) logs. When the first epoch begins
    it starts (or joins) a run and logs the ``compile`` and ``fit`` settings
    (``easyfit.callbacks.tracking.hyperparameters``); at each epoch end it logs the
    epoch's ``logs`` (loss, metrics, ``val_*``, ``learning_rate``) at step ``epoch``; with
    ``log_every_n_steps`` it also logs the running training logs at the global step, read
    from the device only then (at the end of the first dispatch that reaches N steps since
    the last write); at ``on_train_end`` it logs the final weights if asked, then ends the
    run if it started it. A ``fit`` that raises ends such a run as failed. With
    ``BackupAndRestore``, the id of a run it started is part of the backup, and a resumed
    ``fit`` continues that run (``resume_run_id`` is set before ``start_run``) instead of
    starting another.

    Args:
        log_every_n_steps: also log the training logs every this many steps (``None``:
            once per epoch only). Each write makes the host wait for the device once.
        log_checkpoints: at the end of training, save the final weights
            (``model.save_weights``) into a temporary directory and log it as an artifact
            (single-process runs; with several processes, log a ``ModelCheckpoint``
            directory yourself after ``fit``).
        log_hyperparameters: log those settings when training starts.

    Attributes:
        active: whether this process logs to an open run now.
        resume_run_id: the run to continue, from a restored backup (``None``: start one).
    """

    every_batch = False  # once per dispatch is enough
    observer = True      # reads logs only

    def __init__(self, log_every_n_steps: int | None = None, log_checkpoints: bool = False,
                 log_hyperparameters: bool = True):
        super().__init__()
        if log_every_n_steps is not None and (not isinstance(log_every_n_steps, int)
                                              or log_every_n_steps < 1):
            raise ValueError(f"log_every_n_steps must be a positive int or None; got "
                             f"{log_every_n_steps!r}.")
        self.log_every_n_steps = log_every_n_steps
        self.log_checkpoints = log_checkpoints
        self.log_hyperparameters = log_hyperparameters
        self.active = False
        self.started = False
        self.resume_run_id: str | None = None
        self.settings: dict[str, Any] = {}
        self.last_logged_step = 0
        if log_every_n_steps is not None:  # else no batch hook: fit reads nothing mid-epoch
            self.on_train_batch_end = self.log_running

    # -- what a tracker implements ----------------------------------------------------------
    def start_run(self, hyperparameters: dict[str, Any]) -> None:
        """Starts or joins the run, and records ``hyperparameters`` (empty if not asked);
        continues the run ``self.resume_run_id`` instead when it is set (a resumed ``fit``)."""
        raise NotImplementedError

    def own_run_id(self) -> str | None:
        """The id of the run this callback started (saved with a backup so that a resumed
        ``fit`` continues it); ``None`` for a run the user passed, or no resume support."""
        return None

    def log_metrics(self, metrics: dict[str, float], step: int, kind: str) -> None:
        """Logs ``metrics`` at ``step``: ``kind`` is ``"epoch"`` (step = epoch) or ``"batch"``
        (step = training steps taken)."""
        raise NotImplementedError

    def log_directory(self, path: str, name: str) -> None:
        """Logs the files under ``path`` as an artifact called ``name``."""
        raise NotImplementedError

    def end_run(self, failed: bool) -> None:
        """Ends the run if this callback started it (``failed``: ``fit`` raised)."""
        raise NotImplementedError

    # -- hooks ------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.active, self.started, self.resume_run_id = is_chief(), False, None
        if not self.active:
            return
        self.last_logged_step = self.model.trainer.step_count
        self.settings = hyperparameters(self.model, self.params) \
            if self.log_hyperparameters else {}

    def ensure_started(self) -> None:
        """Starts the run at the first epoch (or at the end of a ``fit`` of no epochs):
        after ``set_state``, so that a resumed ``fit`` can continue its run."""
        if self.active and not self.started:
            self.started = True
            self.start_run(self.settings)

    def get_state(self):
        run_id = self.own_run_id() if self.active and self.started else None
        return None if run_id is None else {"run_id": run_id}

    def set_state(self, state):
        if self.active and not self.started:
            self.resume_run_id = state.get("run_id")

    def on_epoch_begin(self, epoch, logs=None):
        self.ensure_started()

    def log_running(self, batch: int, logs: Any = None) -> None:
        """The train batch hook when ``log_every_n_steps`` is set: logs the running
        training ``logs`` if that many steps passed since the last write."""
        if not self.active or self.log_every_n_steps is None:
            return
        step = self.model.trainer.step_count
        self.ensure_started()
        if step - self.last_logged_step >= self.log_every_n_steps:
            self.last_logged_step = step
            self.log_metrics({key: float(value) for key, value in dict(logs or {}).items()},
                             step, "batch")

    def on_epoch_end(self, epoch, logs=None):
        self.ensure_started()
        if self.active:
            self.log_metrics({key: float(value) for key, value in (logs or {}).items()},
                             epoch, "epoch")

    def on_train_end(self, logs=None):
        self.ensure_started()
        if not self.active:
            return
        if self.log_checkpoints:
            self.log_final_weights()
        self.active = False
        self.end_run(failed=False)

    def log_final_weights(self) -> None:
        """Saves the model's weights into a temporary directory and logs it as the artifact
        ``"weights"`` (one process only: a multi-process save needs a shared directory)."""
        if jax.process_count() > 1:
            warnings.warn(f"{type(self).__name__}(log_checkpoints=True) logs the final weights "
                          "of single-process runs only; log a ModelCheckpoint directory after "
                          "fit instead.", stacklevel=2)
            return
        with tempfile.TemporaryDirectory(prefix="easyfit-weights-") as tmp:
            path = os.path.join(tmp, "weights")
            self.model.save_weights(path)
            self.log_directory(path, "weights")

    def close(self) -> None:
        """Ends a run left open by a ``fit`` that raised (``fit`` calls this at its end)."""
        if self.active and self.started:
            self.active = False
            self.end_run(failed=True)
