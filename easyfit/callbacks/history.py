"""History: per-epoch logs of a ``fit``, as Keras's ``History``."""

from __future__ import annotations

from easyfit.callbacks.base import Callback


class History(Callback):
    """Records each epoch's logs; ``fit`` returns it and sets ``model.history``.

    Attributes:
        history: ``{"loss": [...], "accuracy": [...], "val_loss": [...], "lr": [...]}``.
        epoch: the epoch indices recorded.

    Example:
        >>> history = model.fit(x, y, epochs=3)  # doctest: +SKIP
        >>> history.history["loss"]              # doctest: +SKIP
        [0.91, 0.42, 0.30]
    """

    def __init__(self):
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_train_begin(self, logs=None):
        self.epoch = []
        self.history = {}

    def get_state(self):
        return {"history": self.history, "epoch": self.epoch}

    def set_state(self, state):
        self.history = {key: list(values) for key, values in state["history"].items()}
        self.epoch = list(state["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
