"""Learning-rate control: ReduceLROnPlateau and LearningRateScheduler (Keras semantics).

Both write ``model.optimizer.learning_rate``, which lives in the optimizer state: the
change applies from the next step, with no recompile.
"""

from __future__ import annotations

import math

from typing import Callable

import numpy as np

from easyfit.callbacks.base import Callback
from easyfit.callbacks.monitor import Monitor

__all__ = ["LearningRateScheduler", "ReduceLROnPlateau"]


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when ``monitor`` stops improving.

    Args:
        monitor: the logged quantity to watch.
        factor: multiplier (< 1) applied to the learning rate.
        patience: epochs without improvement before reducing.
        verbose: 1 prints each reduction.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        min_delta: smallest change that counts as an improvement.
        cooldown: epochs to wait after a reduction before watching again.
        min_lr: lower bound on the learning rate.

    Examples:
        >>> cb = ReduceLROnPlateau(factor=0.5, patience=2)
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 verbose: int = 0, mode: str = "auto", min_delta: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0):
        super().__init__()
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau needs factor < 1, got {factor}.")
        self._monitor = Monitor(monitor, mode, min_delta, owner="ReduceLROnPlateau")
        self.factor, self.patience, self.verbose = factor, patience, verbose
        self.cooldown, self.min_lr = cooldown, min_lr
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        if self.model is not None:
            self._monitor.bind(self.model)
        self.wait, self.cooldown_counter = 0, 0
        self.best: float | None = None

    def get_state(self):
        return {"wait": self.wait, "cooldown_counter": self.cooldown_counter,
                "best": math.nan if self.best is None else self.best}

    def set_state(self, state):
        self.wait, self.cooldown_counter = state["wait"], state["cooldown_counter"]
        self.best = None if math.isnan(state["best"]) else state["best"]

    def on_epoch_end(self, epoch, logs=None):
        value = self._monitor.read(logs, "ReduceLROnPlateau")
        if value is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._monitor.improves(value, self.best):
            self.best, self.wait = value, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = self.model.optimizer.learning_rate
                new = max(old * self.factor, self.min_lr)
                if old > new:
                    self.model.optimizer.learning_rate = new
                    if logs is not None and "learning_rate" in logs:
                        logs["learning_rate"] = new
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                              f"to {new:.4g}.")
                self.cooldown_counter, self.wait = self.cooldown, 0


class LearningRateScheduler(Callback):
    """Sets the learning rate at each epoch start to ``schedule(epoch, lr)``.

    Args:
        schedule: ``(epoch index, current lr) -> new lr``, or ``epoch index -> new lr``
            (Keras's older form, taken when the two-argument call raises ``TypeError``).
        verbose: 1 prints each change.

    Examples:
        >>> cb = LearningRateScheduler(lambda epoch, lr: lr * 0.9 if epoch > 2 else lr)
    """

    def __init__(self, schedule: Callable[..., float], verbose: int = 0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        try:
            lr = self.schedule(epoch, float(self.model.optimizer.learning_rate))
        except TypeError:  # the one-argument form
            lr = self.schedule(epoch)
        if np.ndim(lr) != 0 or not np.issubdtype(np.asarray(lr).dtype, np.number):
            raise ValueError(f"The output of the `schedule` function should be a float. "
                             f"Got: {lr!r}")
        lr = float(lr)
        self.model.optimizer.learning_rate = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr:.4g}.")
