"""History: per-epoch logs of a ``fit``, as Keras's ``History``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from easyfit.callbacks.base import Callback

__all__ = ["History"]

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure


class History(Callback):
    """Records each epoch's logs; ``fit`` returns it and sets ``model.history``.

    Attributes:
        history: ``{"loss": [...], "accuracy": [...], "val_loss": [...], "learning_rate": [...]}``.
        epoch: the epoch indices recorded (0-based, as Keras; a run resumed with
            ``initial_epoch=5`` starts at 5).

    Examples:
        >>> history = model.fit(x, y, epochs=3)  # doctest: +SKIP
        >>> history.history["loss"]              # doctest: +SKIP
        [0.91, 0.42, 0.30]
        >>> history.plot("curves.png")           # doctest: +SKIP
        >>> history.to_dataframe()               # doctest: +SKIP
    """

    observer = True  # reads logs only

    def __init__(self):
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        # The epochs at which each key was logged: ``val_*`` keys skip the epochs that
        # ``validation_freq`` does not validate.
        self._key_epochs: dict[str, list[int]] = {}

    def on_train_begin(self, logs=None):
        self.epoch = []
        self.history = {}
        self._key_epochs = {}

    def get_state(self):
        return {"history": self.history, "epoch": self.epoch, "key_epochs": self._key_epochs}

    def set_state(self, state):
        self.history = {key: list(values) for key, values in state["history"].items()}
        self.epoch = list(state["epoch"])
        saved = state.get("key_epochs") or {}
        self._key_epochs = {key: list(saved[key]) for key in self.history if key in saved}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
            self._key_epochs.setdefault(key, []).append(epoch)

    def epochs_of(self, key: str) -> list[int]:
        """The 0-based epoch indices at which ``key`` was logged, one per value.

        Equal to `epoch` except for keys not logged every epoch (``val_*`` keys with
        ``validation_freq``). For a History filled by hand, the values are taken to be the
        last epochs of `epoch` (or ``0, 1, ...`` when `epoch` is empty).

        Args:
            key: a key of `history`.

        Returns:
            A list as long as ``history[key]``.
        """
        values = self.history[key]
        recorded = self._key_epochs.get(key)
        if recorded is not None and len(recorded) == len(values):
            return list(recorded)
        if len(self.epoch) >= len(values):
            return list(self.epoch[len(self.epoch) - len(values):])
        return list(range(len(values)))

    def plot(self, path: str | os.PathLike[str] | None = None) -> Figure:
        """Learning curves: one panel per metric (train and validation), the learning rate
        on its own log-scale panel, the best epoch marked.

        Needs matplotlib (``pip install 'easyfit[plots]'``). See
        [`easyfit.plots.plot_history`][easyfit.plots.plot_history].

        Args:
            path: where to save a PNG; the figure is then closed (still returned).

        Returns:
            The ``matplotlib.figure.Figure``.

        Examples:
            >>> history = model.fit(x, y, epochs=10, validation_split=0.1)  # doctest: +SKIP
            >>> history.plot("curves.png")                                  # doctest: +SKIP
        """
        from easyfit.plots import plot_history  # matplotlib is imported only to draw

        return plot_history(self.history, path,
                            epochs={key: self.epochs_of(key) for key in self.history})

    def to_dataframe(self) -> pandas.DataFrame:
        """The history as a ``pandas.DataFrame``: one row per epoch, one column per key.

        The index, named ``"epoch"``, holds 1-based epoch numbers (as the progress bar
        shows them). Epochs without validation (``validation_freq``) hold NaN in the
        ``val_*`` columns.

        Returns:
            A ``pandas.DataFrame``.

        Raises:
            ImportError: pandas is not installed (``pip install pandas``).

        Examples:
            >>> history = model.fit(x, y, epochs=3, verbose=0)  # doctest: +SKIP
            >>> history.to_dataframe().columns.tolist()         # doctest: +SKIP
            ['loss', 'accuracy', 'learning_rate']
        """
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError("History.to_dataframe() needs pandas: pip install pandas") \
                from error
        epochs = set(self.epoch).union(*(self.epochs_of(key) for key in self.history))
        index = pd.Index([e + 1 for e in sorted(epochs)], name="epoch")
        columns: dict[str, Any] = {
            key: pd.Series([float(v) for v in values],
                           index=[e + 1 for e in self.epochs_of(key)], dtype=float)
            for key, values in self.history.items()}
        return pd.DataFrame(columns, index=index, columns=list(self.history))
