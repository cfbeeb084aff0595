"""Training script for the exact-resume tests (run as a subprocess by test_resume.py).

    python resume_script.py OUT BACKUP_DIR KILL_AT SAVE_FREQ

Trains an NNX model with BatchNorm and dropout (shuffled numpy data, AdamW with a
warmup-cosine schedule, steps_per_execution=2, validation_split, EarlyStopping) with
``BackupAndRestore(BACKUP_DIR, save_freq=SAVE_FREQ)``. With ``KILL_AT > 0`` the process
SIGKILLs itself at the end of the first chunk reaching that optimizer step, before that
step's backup starts. On a normal finish it writes OUT (an .npz): the final weights, the
weights before EarlyStopping restored the best ones, and the History as JSON. With the
environment variable ``REPORT_STEPS=1`` it prints ``step N`` after every chunk (for a parent
that sends SIGTERM at a step of its choosing).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
from flax import nnx

import easyfit as ef

EPOCHS, BATCH, ROWS, VALIDATION_SPLIT, STEPS_PER_EXECUTION = 4, 32, 300, 0.2, 2
TRAIN_ROWS = int(ROWS * (1 - VALIDATION_SPLIT))
STEPS_PER_EPOCH = -(-TRAIN_ROWS // BATCH)


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(8, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.l2 = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


class Killer(ef.callbacks.Callback):
    def __init__(self, kill_at: int):
        super().__init__()
        self.kill_at = kill_at

    def on_train_batch_end(self, batch, logs=None):
        if self.model.trainer.step_count >= self.kill_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class Reporter(ef.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print(f"step {self.model.trainer.step_count}", flush=True)


class BeforeRestore(ef.callbacks.Callback):
    """Runs before EarlyStopping: keeps the last weights before the best ones come back."""

    weights = None

    def on_train_end(self, logs=None):
        self.weights = self.model.get_weights()


def main(out: str, backup: str, kill_at: int, save_freq: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 8)).astype(np.float32)
    y = (np.argmax(x[:, :4] + 0.5 * rng.normal(size=(ROWS, 4)), -1)).astype(np.int32)
    model = ef.Model(Net(nnx.Rngs(0)))
    model.compile(ef.optimizers.adamw(ef.schedules.warmup_cosine(1e-2, warmup=0.2),
                                      weight_decay=1e-3),
                  "sparse_categorical_crossentropy", ["accuracy"],
                  steps_per_execution=STEPS_PER_EXECUTION)
    before = BeforeRestore()
    callbacks = [before,
                 ef.callbacks.EarlyStopping(monitor="val_loss", patience=100,
                                            restore_best_weights=True),
                 ef.callbacks.BackupAndRestore(backup, save_freq=save_freq)]
    if kill_at > 0:
        callbacks.insert(0, Killer(kill_at))
    if os.environ.get("REPORT_STEPS") == "1":
        callbacks.insert(0, Reporter())
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_split=VALIDATION_SPLIT,
                        verbose=0, callbacks=callbacks)
    arrays = {f"w{i}": np.asarray(a) for i, a in enumerate(model.get_weights())}
    arrays.update({f"pre{i}": np.asarray(a) for i, a in enumerate(before.weights)})
    np.savez(out, history=json.dumps({"history": history.history, "epoch": history.epoch}),
             steps=model.trainer.step_count, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
