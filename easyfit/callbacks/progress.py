"""The progress display of ``fit``, ``evaluate`` and ``predict``: a tqdm bar (``verbose=1``)
or a line per epoch or call (``2``)."""

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
    ``1 / refresh_seconds`` times a second and lets the device run ahead in between. At the
    end of an epoch (or of ``evaluate`` / ``predict``) the bar gives way to one line with
    every log value, as ``verbose=2`` prints it: a bar is cut to the terminal's width, which
    would hide the ``val_*`` values.

    Args:
        verbose: 1 for a bar, 2 for one line at the end of each epoch (or call).
        refresh_seconds: least time between two reads of the running metrics.
        stage: ``"fit"``, ``"evaluate"`` or ``"predict"``: the call it shows (``fit``'s
            display leaves out the validation pass, as Keras's does).
    """

    every_batch = False  # its batch hooks work once per dispatch
    observer = True  # reads logs only

    def __init__(self, verbose: int = 1, refresh_seconds: float = 0.25, stage: str = "fit"):
        super().__init__()
        self.verbose, self.refresh_seconds, self.stage = verbose, refresh_seconds, stage
        self._bar = None
        self._seen = 0
        self._last = 0.0
        self._start = 0.0

    def _begin(self, title: str) -> None:
        self._seen, self._start = 0, time.monotonic()
        self._last = self._start
        if self.verbose == 1:
            self._bar = tqdm(total=self.params.get("steps"), desc=title, unit="step",
                             leave=False, file=sys.stdout, dynamic_ncols=True)

    def _advance(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._seen)
        self._seen = done

    def _end(self, title: str, logs: dict | None, ran: int | None = None) -> None:
        steps = ""
        if self._bar is not None:
            ran = self._seen if ran is None else ran
            steps = f" - {ran}/{self.params.get('steps') or ran} steps" if ran else ""
            self._bar.close()
            self._bar = None
        if self.verbose in (1, 2):
            seconds = time.monotonic() - self._start
            text = format_logs(logs or {})
            print(f"{title}{steps} - {seconds:.1f}s" + (f" - {text}" if text else ""),
                  flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._begin(f"Epoch {epoch + 1}/{self.params.get('epochs')}")

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is None:
            return
        self._advance(batch + 1)
        now = time.monotonic()
        if now - self._last >= self.refresh_seconds:
            self._last = now
            self._bar.set_postfix_str(format_logs(logs), refresh=True)

    def on_epoch_end(self, epoch, logs=None):
        self._end(f"Epoch {epoch + 1}/{self.params.get('epochs')}", logs)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # evaluate and predict: counted at each dispatch's begin hook, which costs no device wait
    def _ran(self, stopped: bool) -> int:
        """Batches run: all of them unless a callback stopped the loop; 0 (not shown) when
        unknown, as the begin hooks lag one dispatch behind."""
        return 0 if stopped or not self.params.get("steps") else self.params["steps"]

    def on_test_begin(self, logs=None):
        if self.stage == "evaluate":
            self._begin("Evaluate")

    def on_test_batch_begin(self, batch, logs=None):
        if self.stage == "evaluate":
            self._advance(batch)

    def on_test_end(self, logs=None):
        if self.stage == "evaluate":
            self._end("Evaluate", logs, self._ran(self.model.stop_evaluating))

    def on_predict_begin(self, logs=None):
        if self.stage == "predict":
            self._begin("Predict")

    def on_predict_batch_begin(self, batch, logs=None):
        if self.stage == "predict":
            self._advance(batch)

    def on_predict_end(self, logs=None):
        if self.stage == "predict":
            self._end("Predict", None, self._ran(self.model.stop_predicting))
