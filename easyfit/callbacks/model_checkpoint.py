"""ModelCheckpoint: keep the best and the latest checkpoints of a run (orbax, async)."""

from __future__ import annotations

import math
import os
import warnings

from easyfit.callbacks.base import Callback
from easyfit.callbacks.monitor import Monitor
from easyfit.checkpoint import Checkpoints

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Saves checkpoints during ``fit``; keeps the ``keep_best`` best and the ``keep_latest``
    newest (the newest is never deleted). ``model.load_weights(directory)`` loads the best.

    Args:
        filepath: the checkpoint directory; with Keras's format fields
            (``"ckpt/{epoch:02d}-{val_loss:.2f}"``: ``epoch`` counts from 1, ``batch`` with
            a step ``save_freq``, and any logged value), each save goes to its own directory,
            named by the fields, which ``load_weights`` reads (``keep_best`` and
            ``keep_latest`` then do not delete: Keras keeps every file).
        monitor: the logged quantity that ranks checkpoints.
        verbose: 1 prints each save.
        save_best_only: save only when ``monitor`` improves.
        save_weights_only: save weights only (no optimizer state).
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        save_freq: ``"epoch"`` or a number of steps (those saves rank by the latest logs).
        keep_best: how many best checkpoints to keep (``None``: keep only ``keep_latest``).
        keep_latest: how many newest checkpoints to keep.
        async_save: write in the background (the step waits only for the device-to-host copy).
        initial_value_threshold: the best value to beat before the first save, with
            ``save_best_only`` (as Keras).

    Examples:
        >>> cb = ModelCheckpoint("runs/ckpt", monitor="val_accuracy", mode="max", keep_best=3)
    """

    @property
    def every_batch(self) -> bool:
        """Saves every ``save_freq`` steps need every step ("auto" then runs one per dispatch)."""
        return self.save_freq != "epoch"

    runs_last = True

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False,
                 mode: str = "auto", save_freq: str | int = "epoch", keep_best: int | None = 1,
                 keep_latest: int = 1, async_save: bool = True,
                 initial_value_threshold: float | None = None):
        super().__init__()
        self.filepath, self.verbose = os.fspath(filepath), verbose
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(f"Unrecognized save_freq: {save_freq!r}. Expected save_freq are "
                             f"'epoch' or a positive integer (batches between saves).")
        self._monitor = Monitor(monitor, mode, owner="ModelCheckpoint")
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.save_freq, self.keep_best, self.keep_latest = save_freq, keep_best, keep_latest
        self.async_save = async_save
        self.initial_value_threshold = initial_value_threshold
        self.best = None if initial_value_threshold is None else float(initial_value_threshold)
        self._store: Checkpoints | None = None
        self._formatted: dict[str, Checkpoints] = {}  # per formatted path, open until close
        self._last_logs: dict = {}
        self._last_saved_step = 0

    def on_train_begin(self, logs=None):
        self._monitor.bind(self.model)
        if "{" in self.filepath:
            return  # a directory per save, made by _save
        self._store = Checkpoints(self.filepath, keep_latest=self.keep_latest,
                                  keep_best=self.keep_best, mode=self._monitor.mode,
                                  async_save=self.async_save)

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        step = self.model.trainer.step_count
        if step - self._last_saved_step >= self.save_freq:
            self._save(step, dict(logs or {}))

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(self.model.trainer.step_count, dict(logs or {}), epoch)

    def _save(self, step: int, logs: dict, epoch: int | None = None) -> None:
        value = logs.get(self._monitor.monitor)
        improved = value is not None and self._monitor.improves(value, self.best)
        if self.save_best_only and value is None:
            warnings.warn(f"Can save best model only with {self._monitor.monitor} available, "
                          f"skipping.", stacklevel=2)
        if self.save_best_only and not improved:
            return
        if improved:
            self.best = value
        weights, train = self.model.trainer.checkpoint_payload(train=not self.save_weights_only)
        epoch_reached, batch = self.model.trainer.position
        target = self._target(logs, epoch_reached if epoch is None else epoch, batch)
        target.save(step, weights, {"epoch": epoch_reached, "batch": batch, "logs": logs},
                    train, metric=value)
        self._last_saved_step = step
        if self.verbose:
            where = f"epoch {epoch + 1}" if epoch is not None else f"step {step}"
            print(f"ModelCheckpoint: saved {where} to {self._last_path} "
                  f"({self._monitor.monitor}={value})")

    def get_state(self):
        return {"best": math.nan if self.best is None else self.best}

    def set_state(self, state):
        self.best = None if math.isnan(state["best"]) else state["best"]

    def on_train_end(self, logs=None):
        self.close()

    def _target(self, logs: dict, epoch: int, batch: int) -> Checkpoints:
        """Where this save goes: the directory, or the formatted path's own store."""
        if self._store is not None:
            self._last_path = self.filepath
            return self._store
        try:
            path = self.filepath.format(epoch=epoch + 1, batch=batch, **logs)
        except KeyError as error:
            raise KeyError(f"ModelCheckpoint filepath {self.filepath!r} names {error}, which "
                           f"is not in the logs (available: {', '.join(logs)}).") from None
        if path not in self._formatted:
            self._formatted[path] = Checkpoints(path, keep_latest=1, mode=self._monitor.mode,
                                                async_save=self.async_save)
        self._last_path = path
        return self._formatted[path]

    def close(self) -> None:
        """Waits for checkpoints being written (also when fit stops on an error)."""
        for store in [self._store, *self._formatted.values()]:
            if store is not None:
                store.close()
        self._store, self._formatted = None, {}
