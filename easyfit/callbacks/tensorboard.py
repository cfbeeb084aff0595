"""TensorBoard: scalars per epoch and every ``update_freq`` steps, as event files."""

from __future__ import annotations

import os

from easyfit.callbacks.base import Callback
from easyfit.distribute.hosts import is_chief

__all__ = ["TensorBoard"]


class _NullWriter:
    def add_scalar(self, *args, **kwargs) -> None: ...


class TensorBoard(Callback):
    """Writes ``logs`` (loss, metrics, ``lr``) to TensorBoard event files.

    Training scalars go to ``log_dir/train``, validation ones (``val_*``, written without the
    prefix) to ``log_dir/validation``, so TensorBoard overlays them. Uses tensorboardX
    (``pip install 'easyfit[tensorboard]'``); no TensorFlow needed.

    Args:
        log_dir: the run directory (point ``tensorboard --logdir`` at it or its parent).
        update_freq: ``"epoch"``, or write the running training logs every this many steps
            (each write waits for the device once).

    Examples:
        >>> cb = TensorBoard("runs/tb", update_freq=100)
    """

    every_batch = False  # its batch hooks work once per dispatch

    def __init__(self, log_dir: str | os.PathLike = "logs", update_freq: str | int = "epoch"):
        super().__init__()
        self.log_dir, self.update_freq = os.fspath(log_dir), update_freq
        if os.path.isfile(self.log_dir):
            raise NotADirectoryError(f"TensorBoard writes a directory of event files, but "
                                     f"{self.log_dir!r} is a file: pass a directory path such "
                                     f"as 'runs/tb'.")
        self._writers: dict = {}
        self._last_step = 0

    def _writer(self, name: str):
        if not is_chief():  # one set of event files per job, written by process 0
            return _NullWriter()
        if name not in self._writers:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ImportError("The TensorBoard callback needs tensorboardX: "
                                  "pip install 'easyfit[tensorboard]'") from None
            self._writers[name] = SummaryWriter(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch":
            return
        step = self.model.trainer.step_count
        if step - self._last_step >= self.update_freq:
            self._last_step = step
            for key, value in dict(logs or {}).items():
                self._writer("train").add_scalar(f"batch_{key}", value, step)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self._writer(split).add_scalar(f"epoch_{name}", value, epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
