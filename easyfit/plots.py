"""Plots: learning curves of a ``fit`` and the learning-rate range test.

Needs matplotlib, an optional extra: ``pip install 'easyfit[plots]'``. matplotlib is
imported when a plot is drawn, never at ``import easyfit``.

The figures are plain ``matplotlib.figure.Figure`` objects drawn on an Agg canvas: pyplot
and its global state are never touched, the backend a user selected stays as it is, saving
works without a display, and a figure is freed as soon as nothing refers to it. Jupyter
shows a returned figure inline; in a script, pass ``path`` to write a PNG.

Examples:
    >>> from easyfit.plots import plot_history
    >>> history = model.fit(x, y, epochs=20, validation_split=0.1)  # doctest: +SKIP
    >>> fig = plot_history(history, "curves.png")                   # doctest: +SKIP
    >>> fig = history.plot("curves.png")                            # the same  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_history", "plot_lr_finder"]

_PIP_HINT = "pip install 'easyfit[plots]'"
_LR_KEYS = ("learning_rate", "lr")
_DPI = 110


def _require_matplotlib() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or an ImportError that says what to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"easyfit's plots need matplotlib: {_PIP_HINT}") from error
    return Figure, FigureCanvasAgg


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas, outside pyplot."""
    figure_cls, canvas_cls = _require_matplotlib()
    figure = figure_cls(figsize=figsize, layout="constrained")
    canvas_cls(figure)
    return figure


def _finish(figure: Figure, path: str | os.PathLike[str] | None) -> Figure:
    """Writes a PNG to ``path`` when given. The figure is not registered with pyplot, so
    there is nothing to close: it is freed once the caller drops it."""
    if path is not None:
        figure.savefig(os.fspath(path), format="png", dpi=_DPI)
    return figure


def _floats(values: Sequence[Any]) -> np.ndarray:
    """Values as float64, infinities as NaN (matplotlib leaves a gap)."""
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    array[~np.isfinite(array)] = np.nan
    return array


def _logs_and_epochs(history: Any, epochs: Mapping[str, Sequence[int]] | None
                     ) -> tuple[dict[str, list[Any]], dict[str, list[int]]]:
    """``(logs, key_epochs)``: the per-epoch lists and, per key, the 0-based epochs of its
    values. Takes a mapping of lists (``history.history``, or a Keras History's dict) or
    any object with such a ``history`` mapping and, optionally, an ``epochs_of(key)``
    method (an easyfit ``History``); it never imports the callbacks."""
    if not isinstance(history, Mapping):
        logs = getattr(history, "history", None)
        if not isinstance(logs, Mapping):
            raise TypeError(f"plot_history expects an easyfit History or a dict of lists, got "
                            f"{type(history).__name__}")
        epochs_of = getattr(history, "epochs_of", None)
        if epochs is None and callable(epochs_of):
            epochs = {key: epochs_of(key) for key in logs}
        history = logs
    logs = {key: list(values) for key, values in history.items()}
    # Without recorded epochs, each key's values are the last epochs of the longest run.
    longest = max((len(values) for values in logs.values()), default=0)
    given = epochs or {}
    key_epochs: dict[str, list[int]] = {}
    for key, values in logs.items():
        recorded = given.get(key)
        key_epochs[key] = ([int(e) for e in recorded]
                           if recorded is not None and len(recorded) == len(values)
                           else list(range(longest - len(values), longest)))
    return logs, key_epochs


def _metric_names(keys: Sequence[str]) -> list[str]:
    """One name per panel: keys without their ``val_`` prefix, ``loss`` first, no lr."""
    names: list[str] = []
    for key in keys:
        name = key[len("val_"):] if key.startswith("val_") else key
        if name not in names and key not in _LR_KEYS:
            names.append(name)
    return sorted(names, key=lambda name: name != "loss")  # stable: the rest keep their order


def _best_epoch(logs: Mapping[str, Sequence[Any]],
                key_epochs: Mapping[str, Sequence[int]]) -> tuple[str, int] | None:
    """``(monitored key, 1-based epoch)`` of the lowest ``val_loss`` (else ``loss``)."""
    for key in ("val_loss", "loss"):
        if key in logs:
            values = _floats(logs[key])
            if np.isfinite(values).any():
                return key, key_epochs[key][int(np.nanargmin(values))] + 1
    return None


def _curve(ax: Axes, x: np.ndarray, y: np.ndarray, **style: Any) -> Any:
    """One curve over epochs; dots at the points while there are few."""
    return ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, **style)[0]


def _best_line(ax: Axes, epoch: int) -> Any:
    return ax.axvline(epoch, color="0.4", linestyle="--", linewidth=1,
                      label=f"best epoch {epoch}")


def _grid(ax: Axes) -> None:
    ax.grid(alpha=0.3, which="major")
    ax.grid(alpha=0.08, which="minor")


def _integer_epochs(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def plot_history(history: Mapping[str, Sequence[float]] | Any,
                 path: str | os.PathLike[str] | None = None, *,
                 epochs: Mapping[str, Sequence[int]] | None = None) -> Figure:
    """Learning curves of a ``fit``: one panel per metric, the learning rate on its own.

    Each metric (``loss``, ``accuracy``, ...: the keys without the ``val_`` prefix) gets a
    panel with its training and, when logged, validation curve. The best epoch, lowest
    ``val_loss`` (``loss`` without validation), is marked on every panel by a dashed
    vertical line, with a dot on the curve, legend entry ``"best epoch N"``. A logged
    learning rate (``learning_rate``) gets a last panel with a log y-axis. The x-axis shows 1-based
    epoch numbers taken from ``history.epoch``, so a run resumed with ``initial_epoch``
    shows its true epochs; ``val_*`` values appear at the epochs that were validated
    (``validation_freq``).

    Args:
        history: a dict of per-epoch lists (``history.history``), or the
            [`History`][easyfit.callbacks.History] that ``fit`` returned (read through its
            ``history`` dict and ``epochs_of``).
        path: where to save the figure as a PNG; nothing is saved when ``None``.
        epochs: optional, per key of ``history``, the 0-based epochs of its values (as
            ``History.epochs_of`` gives them); a key without them is taken to cover the
            last epochs of the longest list.

    Returns:
        The ``matplotlib.figure.Figure`` (outside pyplot: in a notebook it shows inline).

    Raises:
        ImportError: matplotlib is missing (``pip install 'easyfit[plots]'``).
        ValueError: the history holds nothing to plot.

    Examples:
        >>> from easyfit.plots import plot_history
        >>> history = model.fit(x, y, epochs=10, validation_split=0.2)  # doctest: +SKIP
        >>> fig = plot_history(history, "curves.png")                   # doctest: +SKIP
        >>> [ax.get_title() for ax in fig.axes]                         # doctest: +SKIP
        ['loss', 'accuracy', 'learning rate']
    """
    _require_matplotlib()
    from matplotlib.legend_handler import HandlerTuple

    all_logs, key_epochs = _logs_and_epochs(history, epochs)
    logs = {key: values for key, values in all_logs.items() if len(values)}
    names = _metric_names(list(logs))
    lr_key = next((key for key in _LR_KEYS if key in logs), None)
    panels = len(names) + (lr_key is not None)
    if panels == 0:
        raise ValueError("The history is empty: nothing to plot (was fit run?).")
    cols = 1 if panels == 1 else 2
    rows = math.ceil(panels / cols)
    figure = _new_figure((5.2 * cols, 3.4 * rows))
    best = _best_epoch(all_logs, key_epochs)

    def series(key: str) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(key_epochs[key]) + 1, _floats(logs[key])

    for index, name in enumerate(names):
        ax = figure.add_subplot(rows, cols, index + 1)
        curves = []
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in logs:
                x, y = series(key)
                curves.append((_curve(ax, x, y, label=label), x, y))
        handles = [line for line, _, _ in curves]
        labels = [line.get_label() for line in handles]
        if best is not None:
            epoch = best[1]
            line = marker = _best_line(ax, epoch)
            curve, x, y = curves[-1]  # the validation curve when there is one
            at = np.flatnonzero(x == epoch)
            if at.size and np.isfinite(y[at[0]]):
                dot = ax.plot([epoch], [y[at[0]]], "o", color=curve.get_color(), markersize=7,
                              markeredgecolor="black", zorder=3, label="_best epoch dot")[0]
                marker = (line, dot)
            handles.append(marker)
            labels.append(f"best epoch {epoch}")
        ax.legend(handles, labels, handler_map={tuple: HandlerTuple(ndivide=1)}, fontsize=8)
        ax.set_title(name)
        ax.set_ylabel(name)
        _grid(ax)
        _integer_epochs(ax)

    if lr_key is not None:
        ax = figure.add_subplot(rows, cols, panels)
        x, y = series(lr_key)
        _curve(ax, x, y, color="C2", label=lr_key)
        if (y > 0).any():  # log axis; a schedule's final 0 is left out (masked)
            ax.set_yscale("log", nonpositive="mask")
        if best is not None:
            _best_line(ax, best[1])
        ax.set_title("learning rate")
        ax.set_ylabel(lr_key)
        _grid(ax)
        _integer_epochs(ax)
    return _finish(figure, path)


def plot_lr_finder(result: Any, path: str | os.PathLike[str] | None = None) -> Figure:
    """Loss against learning rate from a learning-rate range test, the suggestion marked.

    Draws the raw loss (light) and the smoothed loss on a log learning-rate axis, and,
    when the result has a suggestion, a vertical line labelled ``"suggested lr = 3.2e-03"``
    with a dot on the smoothed curve. When the loss diverges at the end of the range, the
    y-axis is cut a little above the starting loss so the useful part stays readable.

    Args:
        result: an ``LRFinderResult``, or any object with ``lrs`` (increasing), ``losses``
            (raw), ``smoothed`` (same length) and ``suggestion`` (float or ``None``).
        path: where to save the figure as a PNG; nothing is saved when ``None``.

    Returns:
        The ``matplotlib.figure.Figure``.

    Raises:
        ImportError: matplotlib is missing (``pip install 'easyfit[plots]'``).

    Examples:
        >>> from types import SimpleNamespace
        >>> from easyfit.plots import plot_lr_finder
        >>> lrs = np.geomspace(1e-5, 1.0, 50)
        >>> loss = (np.log10(lrs) + 2.5) ** 2 + 1.0
        >>> result = SimpleNamespace(lrs=lrs, losses=loss, smoothed=loss, suggestion=3.2e-3)
        >>> fig = plot_lr_finder(result)  # for an LRFinderResult: result.plot()
        >>> fig.axes[0].get_xscale()
        'log'
    """
    figure = _new_figure((6.4, 4.2))
    ax = figure.add_subplot()
    lrs = np.asarray(result.lrs, dtype=np.float64)
    raw, smoothed = _floats(result.losses), _floats(result.smoothed)
    ax.plot(lrs, raw, color="C0", alpha=0.3, linewidth=1, label="loss")
    ax.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    suggestion = getattr(result, "suggestion", None)
    if suggestion is not None and np.isfinite(suggestion) and suggestion > 0:
        ax.axvline(suggestion, color="C3", linestyle="--", linewidth=1.2,
                   label=f"suggested lr = {suggestion:.1e}")
        finite = np.isfinite(smoothed) & (lrs > 0)
        if finite.any():
            at = np.interp(np.log(suggestion), np.log(lrs[finite]), smoothed[finite])
            ax.plot([suggestion], [at], "o", color="C3", markersize=7, zorder=3)
    finite = np.concatenate([raw[np.isfinite(raw)], smoothed[np.isfinite(smoothed)]])
    start = smoothed[np.isfinite(smoothed)][:1]
    if finite.size and start.size:
        low, first = float(finite.min()), float(start[0])
        cap = first + 0.5 * max(first - low, 0.05 * abs(first), 1e-12)
        if finite.max() > cap:  # diverged: cut the blow-up off
            ax.set_ylim(low - 0.05 * (cap - low), cap)
    ax.set_title("Learning-rate range test")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    _grid(ax)
    ax.legend(fontsize=8)
    return _finish(figure, path)
