"""BackupAndRestore: resume an interrupted ``fit`` exactly where it stopped."""

from __future__ import annotations

import os
import shutil
import sys

from easyfit.callbacks.base import Callback
from easyfit.callbacks.preemption import PREEMPTION_EXIT_STATUS, SignalWatch
from easyfit.checkpoint import Checkpoints
from easyfit.distribute import any_process
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

    Preemption: spot VMs, SLURM and Kubernetes send SIGTERM some seconds before they kill
    a job. During ``fit``, SIGTERM does not kill the process at once: at the next step
    boundary (every process at the same step) a backup of that step is written and waited
    for, a message says so on stderr, and the process exits with status 143 (``128 +
    SIGTERM``, as if the signal had ended it). Running the script again resumes from that
    step. Your own SIGTERM handler is put back when ``fit`` ends.

    Examples:
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
        self._sigterm = SignalWatch()

    def on_train_begin(self, logs=None):
        # One backup: orbax commits atomically, so a kill mid-write leaves the previous one.
        self._sigterm.install()
        self._store = Checkpoints(self.backup_dir, keep_latest=2 if self.double_checkpoint else 1)
        trainer = self.model.trainer
        restored = self._store.restore(*trainer.checkpoint_targets(train=True))
        if restored is not None:
            step, weights, train, meta = restored
            trainer.load_checkpoint(weights, train)
            trainer.pending_resume = Resume((meta["epoch"], meta["batch"]), meta["callbacks"])
            self._last_saved_step = step

    def on_train_batch_end(self, batch, logs=None):
        step = self.model.trainer.step_count
        if any_process(self._sigterm.received):  # every process decides at the same step
            self._exit_for_preemption(step)
        if self.save_freq != "epoch" and step - self._last_saved_step >= self.save_freq:
            self._save(step)

    def on_epoch_end(self, epoch, logs=None):
        step = self.model.trainer.step_count
        if any_process(self._sigterm.received):
            self._exit_for_preemption(step)
        if self.save_freq == "epoch":
            self._save(step)

    def _exit_for_preemption(self, step: int) -> None:
        if step != self._last_saved_step or step == 0:
            self._save(step)
        self.close()  # the backup is complete on disk before the process ends
        print(f"easyfit: SIGTERM received; the backup of step {step} is in "
              f"{self.backup_dir}. Exiting with status {PREEMPTION_EXIT_STATUS}: run the same "
              f"script again to resume from this step.", file=sys.stderr, flush=True)
        raise SystemExit(PREEMPTION_EXIT_STATUS)

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
        """Waits for a backup being written (also when fit stops on an error) and puts the
        previous SIGTERM handler back."""
        self._sigterm.restore()
        if self._store is not None:
            self._store.close()
            self._store = None
