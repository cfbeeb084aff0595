"""Callbacks, checkpoints and exact resume on scikit-learn's 8x8 digits.

Trains a small MLP (BatchNorm + dropout) with EarlyStopping, ReduceLROnPlateau, CSVLogger,
ModelCheckpoint, BackupAndRestore and a callback of our own; then loads the best checkpoint
and evaluates it. Needs no network; about 20 seconds on a 2-core CPU.

Run:                 pip install -e ".[examples]" && python examples/callbacks_and_resume.py

Try a preemption:    python examples/callbacks_and_resume.py --preempt-at-step 250
                     python examples/callbacks_and_resume.py        # resumes from the backup

The process kills itself (SIGKILL, as a preempted job) at step 250; the second command
continues from the last backup. Its final line, the fingerprint of the trained weights, is
the same as that of a run that was never interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import tempfile

import numpy as np
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import easyfit as ef


class MLP(nnx.Module):
    """64 pixels -> dense -> BatchNorm -> ReLU -> dropout -> 10 logits."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 128, rngs=rngs)
        self.norm = nnx.BatchNorm(128, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        x = self.dropout(nnx.relu(self.norm(self.hidden(x))))
        return self.out(x)  # logits


class BestSoFar(ef.callbacks.Callback):
    """Prints a line every `every` epochs and remembers the best validation accuracy.

    `get_state` / `set_state` make it survive a resume: BackupAndRestore saves what
    `get_state` returns and hands it back to `set_state` when the script runs again.
    """

    def __init__(self, every: int = 5):
        super().__init__()
        self.every = every

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch = 0.0, -1

    def on_epoch_end(self, epoch, logs=None):
        if logs["val_accuracy"] > self.best:
            self.best, self.best_epoch = logs["val_accuracy"], epoch
        if (epoch + 1) % self.every == 0:
            print(f"epoch {epoch + 1:3d}  loss {logs['loss']:.4f}  val_loss {logs['val_loss']:.4f}"
                  f"  val_accuracy {logs['val_accuracy']:.4f}  lr {logs['lr']:.1e}", flush=True)

    def get_state(self):
        return {"best": self.best, "best_epoch": self.best_epoch}

    def set_state(self, state):
        self.best, self.best_epoch = state["best"], state["best_epoch"]

    def on_train_end(self, logs=None):
        print(f"best val_accuracy {self.best:.4f} at epoch {self.best_epoch + 1}")


class PreemptAt(ef.callbacks.Callback):
    """Kills this process at a given training step, as a preempting scheduler would."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch * self.params["steps"] + batch + 1 >= self.step:
            print(f"-- killed at step {self.step}; run the script again to resume --",
                  flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def load_data(seed: int):
    """Digits as (N, 64) floats in [0, 1]: 60% train, 20% validation, 20% test."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_train, y_train, test_size=0.25, stratify=y_train, random_state=seed)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def fingerprint(model: ef.Model) -> str:
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                          "easyfit-callbacks-and-resume"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preempt-at-step", type=int, default=None,
                        help="kill this process at that training step (then run again)")
    args = parser.parse_args()

    backup_dir = os.path.join(args.workdir, "backup")
    ckpt_dir = os.path.join(args.workdir, "ckpt")
    csv_path = os.path.join(args.workdir, "log.csv")
    if os.path.exists(backup_dir):
        print(f"resuming from the backup in {backup_dir}")
    else:  # a new run: start from empty checkpoint and log files
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        if os.path.exists(csv_path):
            os.remove(csv_path)

    train, val, test = load_data(args.seed)
    model = ef.Model(MLP(rngs=nnx.Rngs(args.seed)))
    model.compile(optimizer=ef.optimizers.adamw(1e-3, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  seed=args.seed)

    early_stopping = ef.callbacks.EarlyStopping(monitor="val_loss", patience=6,
                                                restore_best_weights=True)
    callbacks = [
        BestSoFar(every=5),
        early_stopping,
        ef.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2,
                                       min_lr=1e-5),
        ef.callbacks.CSVLogger(csv_path, append=True),   # a resumed run continues the file
        ef.callbacks.ModelCheckpoint(ckpt_dir, monitor="val_loss", keep_best=2),
        ef.callbacks.BackupAndRestore(backup_dir, save_freq=40),   # every 40 steps
    ]
    if args.preempt_at_step:
        callbacks.append(PreemptAt(args.preempt_at_step))

    model.fit(*train, batch_size=32, epochs=args.epochs, validation_data=val, verbose=0,
              callbacks=callbacks)
    test_accuracy = model.evaluate(*test, verbose=0, return_dict=True)["accuracy"]
    print(f"EarlyStopping restored the weights of epoch {early_stopping.best_epoch + 1} "
          f"(val_loss {early_stopping.best:.4f}); test accuracy {test_accuracy:.4f}")

    # The best checkpoint by val_loss, loaded into a new model built by the same code.
    print("checkpoints kept (training steps):", sorted(os.listdir(ckpt_dir), key=int))
    best = ef.Model(MLP(rngs=nnx.Rngs(args.seed)))
    best.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    best.load_weights(ckpt_dir)
    val_results = best.evaluate(*val, batch_size=32, verbose=0, return_dict=True)
    test_results = best.evaluate(*test, verbose=0, return_dict=True)
    print(f"best checkpoint: val_loss {val_results['loss']:.4f}, "
          f"test accuracy {test_results['accuracy']:.4f}")
    print(f"weights fingerprint: {fingerprint(model)}")


if __name__ == "__main__":
    main()
