"""EarlyStopping: stop when a monitored quantity stops improving (Keras semantics)."""

from __future__ import annotations

import math

from easyfit.callbacks.base import Callback
from easyfit.callbacks.monitor import Monitor

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stops training after ``patience`` epochs without improvement of ``monitor``.

    Args:
        monitor: the logged quantity to watch.
        min_delta: smallest change that counts as an improvement.
        patience: epochs without improvement before stopping.
        verbose: 1 prints when it stops or restores.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (the metric's direction, see ``Monitor``).
        baseline: training stops if the value does not beat this within ``patience``.
        restore_best_weights: at the end of training, load the weights of the best epoch.
        start_from_epoch: epochs to wait before watching (warm-up).

    Examples:
        >>> stop = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 verbose: int = 0, mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = False, start_from_epoch: int = 0):
        super().__init__()
        self._monitor = Monitor(monitor, mode, min_delta, owner="EarlyStopping")
        self.monitor, self.patience, self.verbose = monitor, patience, verbose
        self.baseline, self.restore_best_weights = baseline, restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        if self.model is not None:
            self._monitor.bind(self.model)
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best: float | None = None
        self.best_weights = None

    def get_state(self):
        return {"wait": self.wait, "stopped_epoch": self.stopped_epoch,
                "best": math.nan if self.best is None else self.best,
                "best_epoch": self.best_epoch, "best_weights": self.best_weights}

    def set_state(self, state):
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.best = None if math.isnan(state["best"]) else state["best"]
        self.best_epoch = state["best_epoch"]
        weights = state["best_weights"]
        self.best_weights = None if weights is None else [weights[i] for i in range(len(weights))]

    def on_epoch_end(self, epoch, logs=None):
        value = self._monitor.read(logs, "EarlyStopping")
        if value is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self._monitor.improves(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._monitor.improves(value, self.baseline):
                self.wait = 0
                return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)
