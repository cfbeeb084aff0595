"""Experiment trackers against the real libraries with local backends: MLflowLogger on an
MLflow file store read back with ``MlflowClient``, WandbLogger on an offline W&B run read
back from its ``.wandb`` file. Each part skips when its library is not installed."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import easyfit as ef


class Net(nnx.Module):
    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def data(n: int = 64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, :4].argmax(-1)).astype(np.int32)


def model_of() -> ef.Model:
    model = ef.Model(Net())
    model.compile(optimizer=ef.optimizers.adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=2)
    return model


def test_importing_easyfit_imports_no_tracker():
    code = ("import sys, easyfit as ef; ef.callbacks.MLflowLogger; ef.callbacks.WandbLogger; "
            "print(sorted(m for m in ('mlflow', 'wandb', 'datasets', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r'pip install "easyfit\[mlflow\]"'):
        ef.callbacks.MLflowLogger()
    with pytest.raises(ImportError, match=r'pip install "easyfit\[wandb\]"'):
        ef.callbacks.WandbLogger()
    with pytest.raises(ValueError, match="log_every_n_steps"):
        ef.callbacks.TrackerCallback(log_every_n_steps=0)


def test_no_batch_hook_unless_steps_are_logged():
    # without log_every_n_steps, fit has no train batch hook to call (nothing read mid-epoch)
    assert not ef.callbacks.CallbackList([ef.callbacks.TrackerCallback()]).wants(
        "on_train_batch_end")
    every = ef.callbacks.CallbackList([ef.callbacks.TrackerCallback(log_every_n_steps=5)])
    assert every.wants("on_train_batch_end") and not every.needs_every_batch()


class Recorder(ef.callbacks.TrackerCallback):
    """A tracker that records what it is asked to log."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def start_run(self, hyperparameters):
        self.calls.append(("start", sorted(hyperparameters)))

    def log_metrics(self, metrics, step, kind):
        self.calls.append((kind, step, sorted(metrics)))

    def log_directory(self, path, name):
        self.calls.append(("directory", name))

    def end_run(self, failed):
        self.calls.append(("end", failed))


def test_only_the_chief_logs(monkeypatch):
    x, y = data()
    chief = Recorder(log_every_n_steps=3)
    model_of().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[chief])
    assert [c[0] for c in chief.calls] == ["start", "batch", "epoch", "batch", "epoch", "end"]
    assert chief.calls[2] == ("epoch", 0, ["accuracy", "learning_rate", "loss"])
    monkeypatch.setattr(ef.callbacks.tracking, "is_chief", lambda: False)
    worker = Recorder(log_every_n_steps=3, log_checkpoints=True)
    model_of().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[worker])
    assert worker.calls == []


# ---------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants it said
    return (tmp_path / "mlruns").as_uri()


def test_mlflow_logs_epochs_steps_params_and_weights(mlflow_store):
    from mlflow import MlflowClient

    x, y = data()
    model = model_of()
    logger = ef.callbacks.MLflowLogger(tracking_uri=mlflow_store, experiment_name="easyfit",
                                       run_name="digits", tags={"team": "fit"},
                                       log_every_n_steps=4, log_checkpoints=True)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, validation_split=0.25,
                        callbacks=[logger])
    client = MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "digits"
    assert run.data.tags["team"] == "fit"
    params = run.data.params
    assert params["optimizer"] == "adam" and float(params["optimizer.learning_rate"]) == 0.01
    assert params["loss"] == "sparse_categorical_crossentropy"
    assert params["metrics"] == "accuracy" and params["batch_size"] == "16"
    assert params["epochs"] == "3" and params["steps_per_epoch"] == "3"
    assert params["steps_per_execution"] == "2" and params["precision"] == "float32"
    assert params["module"] == "Net" and int(params["num_params"]) == 8 * 16 + 16 + 16 * 4 + 4
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        logged = client.get_metric_history(logger.run_id, key)
        assert [m.step for m in logged] == [0, 1, 2]
        np.testing.assert_allclose([m.value for m in logged], history.history[key], rtol=1e-6)
    # 3 steps an epoch, dispatched as 2 + 1: dispatches end at steps 2, 3, 5, 6, 8, 9; a write
    # at the first end 4 or more steps after the last one (0, then 5)
    assert [m.step for m in client.get_metric_history(logger.run_id, "batch_loss")] == [5, 9]
    files = [a.path for a in client.list_artifacts(logger.run_id, "weights")]
    assert files, "the final weights were not logged"
    restored = ef.Model(Net(seed=1))
    local = client.download_artifacts(logger.run_id, "weights")
    restored.load_weights(local)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_mlflow_users_active_run_stays_open_and_failed_fit_ends_own_run(mlflow_store):
    import mlflow

    x, y = data()
    mlflow.set_tracking_uri(mlflow_store)
    try:
        with mlflow.start_run() as active:
            model = model_of()
            model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                      callbacks=[ef.callbacks.MLflowLogger()])
            assert mlflow.active_run().info.run_id == active.info.run_id
        run = mlflow.MlflowClient().get_run(active.info.run_id)
        assert [m.step for m in mlflow.MlflowClient().get_metric_history(
            active.info.run_id, "loss")] == [0, 1]
        assert run.data.params["epochs"] == "2"

        class Boom(ef.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                raise RuntimeError("boom")

        logger = ef.callbacks.MLflowLogger(log_hyperparameters=False)
        with pytest.raises(RuntimeError, match="boom"):
            model_of().fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[logger, Boom()])
        failed = mlflow.MlflowClient().get_run(logger.run_id)
        assert failed.info.status == "FAILED" and failed.data.params == {}
        assert mlflow.active_run() is None
    finally:
        mlflow.set_tracking_uri(None)


class CrashAt(ef.callbacks.Callback):
    """Stands for a killed job: raises when epoch ``at`` begins (backups of the epochs
    before it are on disk)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError("killed")


def killed_at(logger, epoch: int, epochs: int, backup: Path) -> None:
    """A ``fit`` with ``logger`` and backups, killed when ``epoch`` begins."""
    x, y = data()
    with pytest.raises(RuntimeError, match="killed"):
        model_of().fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[
            logger, CrashAt(epoch), ef.callbacks.BackupAndRestore(backup)])


def run_again(logger, epochs: int, backup: Path) -> ef.callbacks.History:
    """The script run again: a fresh logger and model, the same backup directory."""
    x, y = data()
    return model_of().fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=[
        logger, ef.callbacks.BackupAndRestore(backup)])


def test_mlflow_resumed_fit_continues_its_run(mlflow_store, tmp_path):
    from mlflow import MlflowClient

    first = ef.callbacks.MLflowLogger(tracking_uri=mlflow_store, experiment_name="resume")
    killed_at(first, 2, epochs=4, backup=tmp_path / "backup")
    client = MlflowClient(tracking_uri=mlflow_store)
    assert client.get_run(first.run_id).info.status == "FAILED"
    again = ef.callbacks.MLflowLogger(tracking_uri=mlflow_store, experiment_name="resume")
    history = run_again(again, epochs=4, backup=tmp_path / "backup")
    assert again.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "4"
    logged = client.get_metric_history(first.run_id, "loss")
    assert [m.step for m in logged] == [0, 1, 2, 3]
    np.testing.assert_allclose([m.value for m in logged], history.history["loss"], rtol=1e-6)
    experiment = client.get_experiment_by_name("resume").experiment_id
    assert len(client.search_runs([experiment])) == 1


def test_mlflow_run_of_a_backup_that_is_gone_starts_a_new_one(mlflow_store, tmp_path):
    first = ef.callbacks.MLflowLogger(tracking_uri=mlflow_store, experiment_name="gone")
    killed_at(first, 1, epochs=3, backup=tmp_path / "backup")
    store_dir = Path(mlflow_store.removeprefix("file://"))
    for meta in store_dir.rglob(f"{first.run_id}/meta.yaml"):
        meta.unlink()  # the tracking store lost the run
    again = ef.callbacks.MLflowLogger(tracking_uri=mlflow_store, experiment_name="gone")
    with pytest.warns(UserWarning, match=f"cannot continue run {first.run_id}"):
        run_again(again, epochs=3, backup=tmp_path / "backup")
    assert again.run_id != first.run_id


# ---------------------------------------------------------------------------------------
# Weights & Biases
# ---------------------------------------------------------------------------------------


def wandb_records(run_dir: Path) -> list:
    """The records of an offline run's ``.wandb`` file (a LevelDB-style log of protobuf
    ``Record``s: a 7-byte header, then 32 KiB blocks of checksummed, typed chunks)."""
    from wandb.proto import wandb_internal_pb2

    raw = next(run_dir.glob("*.wandb")).read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if (kind == 0 and length == 0) or pos + 7 + length > len(raw):  # end, or still written
            break
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_contents(run_dir: Path) -> tuple[list[dict], dict, list[str]]:
    """``(history rows, config, artifact names)`` of an offline run, once its file is
    complete (W&B's service process may still be writing it when ``finish`` returns)."""
    deadline = time.monotonic() + 30
    records = wandb_records(run_dir)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, "the offline run's file never got its exit record"
        time.sleep(0.1)
        records = wandb_records(run_dir)
    history, config, artifacts = [], {}, []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind in ("config", "run"):
            updates = record.config.update if kind == "config" else record.run.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
        elif kind == "artifact":
            artifacts.append(record.artifact.name)
    return history, config, artifacts


def test_wandb_offline_run_holds_epochs_steps_config_and_weights(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    x, y = data()
    model = model_of()
    logger = ef.callbacks.WandbLogger(project="easyfit", mode="offline", dir=str(tmp_path),
                                      log_every_n_steps=4, log_checkpoints=True)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, validation_split=0.25,
                        callbacks=[logger])
    assert wandb.run is None  # the callback's own run was finished
    rows, config, artifacts = wandb_contents(Path(logger.wandb_run.dir).parent)
    epochs = [r for r in rows if "epoch/epoch" in r]
    assert [r["epoch/epoch"] for r in epochs] == [0, 1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        np.testing.assert_allclose([r[f"epoch/{key}"] for r in epochs], history.history[key],
                                   rtol=1e-6)
    assert [r["batch/step"] for r in rows if "batch/step" in r] == [5, 9]
    assert config["optimizer"] == "adam" and config["batch_size"] == 16
    assert config["optimizer.learning_rate"] == 0.01 and config["epochs"] == 3
    assert artifacts == [f"weights-{logger.wandb_run.id}"]


def test_wandb_users_run_stays_open(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    x, y = data()
    run = wandb.init(project="easyfit", mode="offline", dir=str(tmp_path))
    try:
        model_of().fit(x, y, batch_size=16, epochs=2, verbose=0,
                       callbacks=[ef.callbacks.WandbLogger(run)])
        assert wandb.run is run
        run.log({"after": 1.0})
    finally:
        run.finish()
    rows, config, _ = wandb_contents(Path(run.dir).parent)
    assert [r["epoch/epoch"] for r in rows if "epoch/epoch" in r] == [0, 1]
    assert rows[-1]["after"] == 1.0 and config["epochs"] == 2


def test_wandb_resumed_fit_continues_its_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    first = ef.callbacks.WandbLogger(project="easyfit", mode="offline", dir=str(tmp_path))
    killed_at(first, 1, epochs=3, backup=tmp_path / "backup")
    started = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: started.append(kw) or real_init(**kw))
    again = ef.callbacks.WandbLogger(project="easyfit", mode="offline", dir=str(tmp_path))
    run_again(again, epochs=3, backup=tmp_path / "backup")
    assert started[0]["id"] == first.wandb_run.id and started[0]["resume"] == "allow"
    assert again.wandb_run.id == first.wandb_run.id
