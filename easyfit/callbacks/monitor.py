"""Shared by callbacks that watch one logged quantity: mode and improvement test."""

from __future__ import annotations

import difflib
import math
import warnings
from typing import Any

from easyfit.metrics import METRICS

__all__ = ["Monitor"]


class Monitor:
    """Tracks whether ``logs[monitor]`` improves, in ``"min"``, ``"max"`` or ``"auto"`` mode.

    ``"auto"`` decides as Keras 3: ``"min"`` for a loss (``loss``, ``val_loss``, an output's
    ``a_loss``); for a compiled metric of the monitored name, its ``direction`` (``"up"``:
    ``"max"``, ``"down"``: ``"min"``). Any other name in ``"auto"`` mode is a ``ValueError``
    asking for ``mode="min"`` or ``"max"``, raised when training starts. An unknown mode warns
    and falls back to ``"auto"``, as Keras.

    Examples:
        >>> m = Monitor("val_loss")
        >>> m.improves(0.4, best=0.5)
        True
    """

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0,
                 owner: str = "Callback"):
        if mode not in ("auto", "min", "max"):
            warnings.warn(f"{owner} mode '{mode}' is unknown, fallback to auto mode.",
                          stacklevel=3)
            mode = "auto"
        self.monitor, self.owner, self.min_delta = monitor, owner, abs(min_delta)
        self.auto = mode == "auto"
        self._mode = None if self.auto else mode

    @property
    def mode(self) -> str:
        """``"min"`` or ``"max"``; in ``"auto"`` mode, decided by `bind` or, without a
        compiled model, from the name at first use."""
        if self._mode is None:
            self._mode = self._auto_mode(())
        return self._mode

    def bind(self, model: Any) -> None:
        """In ``"auto"`` mode, decides the direction from ``model``'s compiled metrics."""
        trainer = getattr(model, "trainer", None)
        options = getattr(trainer, "options", None)
        if self.auto and options is not None:
            metrics = getattr(trainer, "metrics", None)  # with several outputs: per output
            self._mode = self._auto_mode(tuple(metrics) if metrics is not None else
                                         (*options.metrics, *options.weighted_metrics))

    def _auto_mode(self, metrics: tuple) -> str:
        name = self.monitor.removeprefix("val_")
        if name == "loss" or name.endswith("_loss"):
            return "min"
        known = {"up": "max", "down": "min"}
        for metric in metrics:
            if metric.name == name and getattr(metric, "direction", None) in known:
                return known[metric.direction]
        compiled = any(metric.name == name for metric in metrics)
        if compiled:
            raise ValueError(
                f"{self.owner} monitors {self.monitor!r} with mode='auto', but that metric's "
                "direction is unknown (a plain function). Pass mode='max' to keep the highest "
                "value or mode='min' to keep the lowest, or compile "
                "ef.metrics.Mean(fn, direction='up').")
        prefix = "val_" if self.monitor.startswith("val_") else ""
        names = [f"{prefix}{metric.name}" for metric in metrics]
        close = difflib.get_close_matches(self.monitor, names, n=1)
        raise ValueError(
            f"{self.owner} monitors {self.monitor!r} with mode='auto', but that is neither a "
            f"loss nor a compiled metric (compiled: {', '.join(names) or 'none'})."
            + (f" Did you mean monitor={close[0]!r}?" if close else
               f" Compile it (metrics=[{name!r}])" if name in METRICS else
               f" Compile a metric named {name!r}")
            + ("" if close else f", or monitor {prefix}loss.")
            + " For a value your own callback adds to the logs, pass mode='max' to keep the "
              "highest value or mode='min' to keep the lowest.")

    @property
    def worst(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (``None``: nothing yet) by more than ``min_delta``."""
        if best is None:
            return True
        if self.mode == "max":
            return value - self.min_delta > best
        return value + self.min_delta < best

    def read(self, logs, owner: str) -> float | None:
        """``logs[monitor]``, or ``None`` with a warning naming the available keys."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"{owner} monitors {self.monitor!r}, which is not available. "
                          f"Available metrics are: {','.join(logs or {})}", stacklevel=3)
        return value
