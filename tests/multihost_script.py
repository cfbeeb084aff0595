"""One process of the two-process tests (run by test_distribute.py), or the single-process
reference that checks what the pair wrote.

    python multihost_script.py pair PORT PROCESS_ID OUT_DIR   # two of these, ids 0 and 1
    python multihost_script.py single OUT_DIR                  # afterwards, one process
    python multihost_script.py preempt PORT PROCESS_ID OUT_DIR  # SIGTERM to process 1 only

Each pair process has 4 CPU devices (8 in all), calls ``ef.distribute.initialize`` and
trains on the same full dataset with the global batch size; easyfit feeds each process its
rows. It writes ``OUT_DIR/pair-ID.json`` (losses, epochs run, CSV ownership) and the pair
writes a checkpoint into ``OUT_DIR/ckpt``. The single process trains the same model on one
device and restores that checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import jax
from flax import nnx

import easyfit as ef
from mesh_script import Net, data  # the same model and data as the 8-device checks

EPOCHS, BATCH = 4, 40


def model(distribution=None) -> ef.Model:
    m = ef.Model(Net(nnx.Rngs(0)), distribution=distribution)
    m.compile(ef.optimizers.adamw(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    return m


class StopOnProcessOne(ef.callbacks.Callback):
    """Asks to stop on process 1 only, after epoch ``at``: both processes must stop."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at and jax.process_index() == 1:
            self.model.stop_training = True


def pair(port: int, process_id: int, out: str) -> None:
    jax.config.update("jax_num_cpu_devices", 4)
    ef.distribute.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and len(jax.devices()) == 8
    x, y = data()
    csv = os.path.join(out, f"log-{process_id}.csv")
    m = model(ef.distribute.FSDP(min_size=0))
    # verbose=2: the chief alone shows progress, and the other process must not wait for it
    history = m.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=2, shuffle=True,
                    validation_data=(x[:80], y[:80]),
                    callbacks=[ef.callbacks.CSVLogger(csv)])
    m.save_weights(os.path.join(out, "ckpt"))
    m.save(os.path.join(out, "saved"))  # the whole model: each process writes its shards
    assert os.path.isdir(os.path.join(out, "saved"))  # on every process once save returns
    predictions = m.predict(x[:37], batch_size=BATCH, verbose=2)
    m.evaluate(x, y, batch_size=BATCH, verbose=2)
    # Early stopping from a crafted monitor (min_delta no loss can reach): epoch 2 stops it.
    stopped = model().fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=[
        ef.callbacks.EarlyStopping(monitor="loss", min_delta=100.0, patience=1)])
    # A decision taken on one process only is taken by both.
    asked = model().fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0,
                        callbacks=[StopOnProcessOne(at=0)])
    with open(os.path.join(out, f"pair-{process_id}.json"), "w") as handle:
        json.dump({"loss": history.history["loss"], "val_loss": history.history["val_loss"],
                   "csv_written": os.path.exists(csv),
                   "early_stopping_epochs": len(stopped.history["loss"]),
                   "stop_training_epochs": len(asked.history["loss"]),
                   "predictions": predictions.tolist()}, handle)


class TerminateProcessOne(ef.callbacks.Callback):
    """Sends a real SIGTERM to process 1 only, after step ``at``."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if jax.process_index() == 1 and self.model.trainer.step_count == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def preempt(port: int, process_id: int, out: str) -> None:
    """Both processes must back up the same step and exit with status 143."""
    jax.config.update("jax_num_cpu_devices", 4)
    ef.distribute.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    x, y = data()
    model(ef.distribute.FSDP(min_size=0)).fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=[
            TerminateProcessOne(at=5),
            ef.callbacks.BackupAndRestore(os.path.join(out, "backup"), save_freq=10_000)])


def single(out: str) -> None:
    x, y = data()
    reference = model()
    history = reference.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, shuffle=True,
                            validation_data=(x[:80], y[:80]))
    restored = model()
    restored.load_weights(os.path.join(out, "ckpt"))
    loaded = ef.load_model(os.path.join(out, "saved"), module=Net(nnx.Rngs(1)))
    with open(os.path.join(out, "single.json"), "w") as handle:
        json.dump({"loss": history.history["loss"], "val_loss": history.history["val_loss"],
                   "predictions": restored.predict(x[:37]).tolist(),
                   "loaded_predictions": loaded.predict(x[:37]).tolist(),
                   "loaded_resumes": len(loaded.fit(x, y, batch_size=BATCH, epochs=1,
                                                    verbose=0).history["loss"]),
                   "loaded_steps": int(loaded.trainer.step_count),
                   "reference_predictions": reference.predict(x[:37]).tolist()}, handle)


if __name__ == "__main__":
    if sys.argv[1] == "pair":
        pair(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "preempt":
        preempt(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        single(sys.argv[2])
