"""Shared by callbacks that watch one logged quantity: mode and improvement test."""

from __future__ import annotations

import math
import warnings
from typing import Any

__all__ = ["Monitor"]


class Monitor:
    """Tracks the best value of ``logs[monitor]`` in ``"min"``, ``"max"`` or ``"auto"`` mode.

    ``"auto"``, as Keras: ``"min"`` for a loss; for a compiled metric, the metric's own
    ``direction`` (see :meth:`bind`); otherwise, where Keras would raise, from the name:
    ``"max"`` for accuracy-like names (``acc``, ``auc``, ``precision``, ``recall``, ``f1``),
    else ``"min"``. An unknown mode warns and falls back to ``"auto"``, as Keras.

    Example:
        >>> m = Monitor("val_accuracy")
        >>> m.improves(0.9, best=0.8)
        True
    """

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0,
                 owner: str = "Callback"):
        if mode not in ("auto", "min", "max"):
            warnings.warn(f"{owner} mode '{mode}' is unknown, fallback to auto mode.",
                          stacklevel=3)
            mode = "auto"
        self.monitor, self.auto, self.min_delta = monitor, mode == "auto", abs(min_delta)
        self.mode = mode if not self.auto else _mode_from_name(monitor)

    def bind(self, model: Any) -> None:
        """In ``"auto"`` mode: the direction of ``model``'s compiled metric of the monitored
        name (its ``direction``, ``"up"`` or ``"down"``) decides, as Keras."""
        options = getattr(getattr(model, "trainer", None), "options", None)
        if not self.auto or options is None:
            return
        name = self.monitor.removeprefix("val_")
        for metric in (*options.metrics, *options.weighted_metrics):
            direction = getattr(metric, "direction", None)
            if metric.name == name and direction in ("up", "down"):
                self.mode = "max" if direction == "up" else "min"

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


def _mode_from_name(monitor: str) -> str:
    if monitor.removeprefix("val_") == "loss" or monitor.endswith("_loss"):
        return "min"
    maximise = any(k in monitor for k in ("acc", "auc", "precision", "recall", "f1"))
    return "max" if maximise else "min"
