"""BackupAndRestore: resume an interrupted ``fit`` exactly where it stopped."""

from __future__ import annotations

import os
import shutil

from easyfit.callbacks.base import Callback
from easyfit.checkpoint import Checkpoints
from easyfit.training.trainer import Resume

__all__ = ["BackupAndRestore"]


class BackupAndRestore(Callback):
    """Backs up everything that decides the rest of training; restores it when ``fit`` reruns.

    A backup holds the training state (weights, batch statistics, dropout RNG streams,
    optimizer state and LR schedule position, step counter, the running epoch's metric
    sums), the epoch and batch reached, and the state of the other callbacks (History,
    EarlyStopping counters...). Run the same script again after a crash or preemption and
    ``fit`` continues from the last backup: with the same data the final weights are
    bit-identical to an uninterrupted run's (numpy, grain and re-iterable inputs replay the
    same batches; a mid-epoch resume re-reads and skips the batches already done).

    Args:
        backup_dir: directory for the backups (one per run).
        save_freq: ``"epoch"``, or a number of steps between backups (taken at the end of
            the ``steps_per_execution`` chunk that reaches it).
        delete_checkpoint: delete the backups when ``fit`` finishes normally.
        double_checkpoint: keep the two latest backups, as Keras (a damaged newest one
            falls back to the one before; orbax's atomic writes already keep a kill
            mid-write from damaging the last good backup).

    Example:
        >>> cb = BackupAndRestore("runs/backup", save_freq=200)
    """

    every_batch = False  # its batch hooks work once per dispatch

    runs_last = True  # after History and the other callbacks, so it saves their final state

    def __init__(self, backup_dir: str | os.PathLike, save_freq: str | int = "epoch",
                 delete_checkpoint: bool = True, double_checkpoint: bool = False):
        super().__init__()
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed: give the directory for the "
                             "backups, e.g. BackupAndRestore('runs/backup').")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(f"Invalid value for argument `save_freq`. Received: "
                             f"save_freq={save_freq!r}. Expected either 'epoch' or a positive "
                             f"integer (steps between backups).")
        self.backup_dir, self.save_freq = os.fspath(backup_dir), save_freq
        self.delete_checkpoint, self.double_checkpoint = delete_checkpoint, double_checkpoint
        self._store: Checkpoints | None = None
        self._last_saved_step = 0

    def on_train_begin(self, logs=None):
        # One backup: orbax commits atomically, so a kill mid-write leaves the previous one.
        self._store = Checkpoints(self.backup_dir, keep_latest=2 if self.double_checkpoint else 1)
        trainer = self.model.trainer
        restored = self._store.restore(*trainer.checkpoint_targets(train=True))
        if restored is not None:
            step, weights, train, meta = restored
            trainer.load_checkpoint(weights, train)
            trainer.pending_resume = Resume((meta["epoch"], meta["batch"]), meta["callbacks"])
            self._last_saved_step = step

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        step = self.model.trainer.step_count
        if step - self._last_saved_step >= self.save_freq:
            self._save(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(self.model.trainer.step_count)

    def _save(self, step: int) -> None:
        trainer = self.model.trainer
        weights, train = trainer.checkpoint_payload(train=True)
        epoch, batch = trainer.position
        self._store.save(step, weights, {"epoch": epoch, "batch": batch,
                                         "callbacks": trainer.callbacks.states()}, train)
        self._last_saved_step = step

    def on_train_end(self, logs=None):
        if self._store is None:
            return
        self.close()
        if self.delete_checkpoint:  # training finished: the backup is no longer needed
            shutil.rmtree(self.backup_dir, ignore_errors=True)

    def close(self) -> None:
        """Waits for a backup being written (also when fit stops on an error)."""
        if self._store is not None:
            self._store.close()
            self._store = None
