"""The progress display of ``fit``: a tqdm bar (``verbose=1``) or a line per epoch (``2``)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

from easyfit.callbacks.base import Callback

__all__ = ["ProgressBar", "format_logs"]


def format_logs(logs) -> str:
    """``loss: 0.1234 - accuracy: 0.9876 - learning_rate: 1.00e-03``, as Keras prints them."""
    parts = []
    for key, value in logs.items():
        parts.append(f"{key}: {value:.2e}" if key == "learning_rate" else f"{key}: {value:.4f}")
    return " - ".join(parts)


class ProgressBar(Callback):
    """Shows progress; refreshes its numbers a few times a second, never every step.

    Reading batch logs makes the host wait for the device, so the bar reads them at most
    ``1 / refresh_seconds`` times a second and lets the device run ahead in between.

    Args:
        verbose: 1 for a bar per epoch, 2 for one line per epoch.
        refresh_seconds: least time between two reads of the running metrics.
    """

    every_batch = False  # its batch hooks work once per dispatch
    observer = True  # reads logs only

    def __init__(self, verbose: int = 1, refresh_seconds: float = 0.25):
        super().__init__()
        self.verbose, self.refresh_seconds = verbose, refresh_seconds
        self._bar = None
        self._seen = 0
        self._last = 0.0
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._seen, self._start = 0, time.monotonic()
        self._last = self._start
        epochs = self.params.get("epochs")
        if self.verbose == 1:
            self._bar = tqdm(total=self.params.get("steps"), desc=f"Epoch {epoch + 1}/{epochs}",
                             unit="step", leave=True, file=sys.stdout, dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is None:
            return
        self._bar.update(batch + 1 - self._seen)
        self._seen = batch + 1
        now = time.monotonic()
        if now - self._last >= self.refresh_seconds:
            self._last = now
            self._bar.set_postfix_str(format_logs(logs), refresh=True)

    def on_epoch_end(self, epoch, logs=None):
        text = format_logs(logs or {})
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.close()
            self._bar = None
        elif self.verbose == 2:
            seconds = time.monotonic() - self._start
            print(f"Epoch {epoch + 1}/{self.params.get('epochs')} - {seconds:.1f}s - {text}",
                  flush=True)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
