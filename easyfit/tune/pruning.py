"""``PruningCallback``: reports each epoch's objective to an optuna trial and stops ``fit``
when the trial's pruner (or a diverged loss) says so."""

from __future__ import annotations

import math
from typing import Any

from easyfit.callbacks.base import Callback
from easyfit.tune._optuna import import_optuna

__all__ = ["PruningCallback"]


class PruningCallback(Callback):
    """Reports each epoch's ``logs[objective]`` to an optuna trial and stops ``fit`` when
    the trial's pruner says so.

    ``fit`` then ends cleanly (``self.model.stop_training = True``); call
    [`raise_if_pruned`][easyfit.tune.pruning.PruningCallback.raise_if_pruned] after it to raise
    ``optuna.TrialPruned``. A non-finite
    objective or training loss (a diverged run) also stops the trial as pruned.
    `search` uses it; it also serves a hand-written optuna objective.

    Args:
        trial: the ``optuna.Trial`` being run.
        objective: the ``logs`` key to report, e.g. ``"val_loss"``.

    Examples:
        >>> def objective(trial):                                    # doctest: +SKIP
        ...     model = build(trial)
        ...     pruning = ef.tune.PruningCallback(trial, "val_loss")
        ...     model.fit(x, y, epochs=10, validation_data=(x_val, y_val),
        ...               callbacks=[pruning], verbose=0)
        ...     pruning.raise_if_pruned()
        ...     return model.evaluate(x_val, y_val, verbose=0)  # val_loss
    """

    def __init__(self, trial: Any, objective: str):
        super().__init__()
        self.trial, self.objective = trial, objective
        self.pruned_at: int | None = None   # 0-based epoch at which the trial was stopped
        self.reason = ""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.objective not in logs:
            if self.objective.startswith("val_") and not any(k.startswith("val_") for k in logs):
                return  # no validation this epoch (validation_freq)
            raise KeyError(f"The objective {self.objective!r} is not in the epoch logs "
                           f"{sorted(logs)}; pass one of them as objective=.")
        value = float(logs[self.objective])
        loss = float(logs.get("loss", 0.0))
        if not (math.isfinite(value) and math.isfinite(loss)):
            name = self.objective if not math.isfinite(value) else "loss"
            self._stop(epoch, f"{name} is {float(logs[name])}")
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self._stop(epoch, "pruned")

    def _stop(self, epoch: int, reason: str) -> None:
        self.pruned_at, self.reason = epoch, reason
        self.model.stop_training = True

    def raise_if_pruned(self) -> None:
        """Raises ``optuna.TrialPruned`` if this callback stopped training."""
        if self.pruned_at is not None:
            raise import_optuna().TrialPruned(f"{self.reason} at epoch {self.pruned_at + 1}")
