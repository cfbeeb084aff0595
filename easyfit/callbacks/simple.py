"""Small callbacks: TerminateOnNaN, LambdaCallback, CSVLogger."""

from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Callable

from easyfit.callbacks.base import Callback
from easyfit.distribute.hosts import is_chief

__all__ = ["CSVLogger", "LambdaCallback", "TerminateOnNaN"]


class TerminateOnNaN(Callback):
    """Stops training as soon as the loss is NaN or infinite.

    It reads the loss after every step (chunk of ``steps_per_execution`` steps), which
    makes the host wait for the device each time; use it when debugging.

    Args:
        raise_error: raise a ``RuntimeError`` at once instead of setting
            ``model.stop_training`` (then ``on_train_end`` does not run, as Keras).
    """

    every_batch = False  # its batch hooks work once per dispatch

    def __init__(self, raise_error: bool = False):
        super().__init__()
        self.raise_error = raise_error

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            if self.raise_error:
                raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. "
                                   f"Loss value: {loss}. Terminating training immediately.")
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback from functions, as Keras: ``LambdaCallback(on_epoch_end=lambda e, logs: ...)``.

    Any hook name can be given (``on_train_begin``, ``on_epoch_end``, ``on_train_batch_end``...).
    Other keyword arguments become attributes, as Keras; one that starts with ``on_`` but is
    no hook (a typo, such as ``on_epoch_ends``) warns, since nothing would call it.

    Examples:
        >>> cb = LambdaCallback(on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]))
    """

    def __init__(self, **hooks: Callable):
        super().__init__()
        for name, fn in hooks.items():
            if name.startswith("on_") and not hasattr(Callback, name):
                warnings.warn(f"LambdaCallback: {name!r} is not a callback hook, so it will "
                              f"never be called (hooks: on_epoch_end, on_train_batch_end, "
                              f"...).", stacklevel=2)
            setattr(self, name, fn)


class CSVLogger(Callback):
    """Writes one CSV row per epoch: ``epoch`` then every logged value, in sorted order
    as Keras; when ``fit`` validates, the ``val_*`` columns are there from the first row
    (``NA`` in the epochs that do not validate).

    Args:
        filename: the CSV file.
        separator: the field separator.
        append: append to an existing file (e.g. when resuming) instead of overwriting.

    Examples:
        >>> cb = CSVLogger("runs/log.csv", append=True)
    """

    observer = True  # reads logs only

    def __init__(self, filename: str, separator: str = ",", append: bool = False):
        super().__init__()
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        if os.path.isdir(self.filename):
            raise IsADirectoryError(f"CSVLogger writes one file, but {self.filename!r} is a "
                                    "directory: pass a file path such as "
                                    f"{os.path.join(self.filename, 'log.csv')!r}.")
        self._file = self._writer = None
        self._keys: list[str] | None = None

    def on_train_begin(self, logs=None):
        if not is_chief():  # one file per job, written by process 0
            return
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename)
        os.makedirs(os.path.dirname(os.path.abspath(self.filename)), exist_ok=True)
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._keys = None
        if exists:
            with open(self.filename, newline="") as existing:
                header = next(csv.reader(existing, delimiter=self.separator), None)
            self._keys = header[1:] if header else None

    def on_epoch_end(self, epoch, logs=None):
        if self._file is None:
            return
        logs = dict(logs or {})
        if self._keys is None:
            self._keys = sorted(logs)
            if self.params.get("do_validation"):
                self._keys += sorted(f"val_{key}" for key in logs if not key.startswith("val_")
                                     and key != "learning_rate" and f"val_{key}" not in logs)
            csv.writer(self._file, delimiter=self.separator).writerow(["epoch", *self._keys])
        csv.writer(self._file, delimiter=self.separator).writerow(
            [epoch, *(logs.get(key, "NA") for key in self._keys)])
        self._file.flush()

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
