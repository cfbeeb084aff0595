"""Shared by callbacks that watch one logged quantity: mode and improvement test."""

from __future__ import annotations

import math
import warnings

__all__ = ["Monitor"]


class Monitor:
    """Tracks the best value of ``logs[monitor]`` in ``"min"``, ``"max"`` or ``"auto"`` mode.

    ``"auto"`` means ``"max"`` for accuracy-like names (``acc``, ``accuracy``, ``auc``,
    ``precision``, ``recall``), else ``"min"``, as Keras.

    Example:
        >>> m = Monitor("val_accuracy")
        >>> m.improves(0.9, best=0.8)
        True
    """

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max'; got {mode!r}.")
        if mode == "auto":
            maximise = any(k in monitor for k in ("acc", "auc", "precision", "recall"))
            mode = "max" if maximise else "min"
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(min_delta)

    @property
    def worst(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def improves(self, value: float, best: float) -> bool:
        """Whether ``value`` beats ``best`` by more than ``min_delta``."""
        if self.mode == "max":
            return value - self.min_delta > best
        return value + self.min_delta < best

    def read(self, logs, owner: str) -> float | None:
        """``logs[monitor]``, or ``None`` with a warning naming the available keys."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"{owner} monitors {self.monitor!r}, which is not in the logs "
                          f"(available: {', '.join(logs or {})}).", stacklevel=3)
        return value
