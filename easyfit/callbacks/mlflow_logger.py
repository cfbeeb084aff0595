"""MLflow: metrics per epoch (and every N steps), hyperparameters, the final weights."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from easyfit.callbacks.tracking import TrackerCallback

__all__ = ["MLflowLogger"]

_MAX_PARAMS = 100   # MLflow's log_batch takes at most 100 params ...
_MAX_METRICS = 1000  # ... and 1000 metrics per call
_MAX_VALUE = 6000    # characters of a param value


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ImportError('MLflowLogger needs MLflow: pip install "easyfit[mlflow]"') from None
    return mlflow


class MLflowLogger(TrackerCallback):
    """Logs a ``fit`` to MLflow: each epoch's ``logs`` as metrics at step ``epoch``
    (``loss``, metrics, ``val_*``, ``learning_rate``), optionally the running training logs
    every ``log_every_n_steps`` steps (as ``batch_<name>`` at the global step), the
    ``compile`` and ``fit`` settings as params (see
    ``easyfit.callbacks.tracking.hyperparameters``), and with ``log_checkpoints`` the
    final weights as the artifact directory ``weights``. Only the chief process logs.

    The run is ``run`` if given (an ``mlflow.ActiveRun``, an ``mlflow.entities.Run`` or a
    run id), else the active run of ``mlflow.start_run()`` if there is one; either is left
    open. Otherwise the callback starts a run in ``experiment_name`` when training begins
    and ends it when training ends (as ``FAILED`` if ``fit`` raised). MLflow is imported when
    the callback is created (``pip install "easyfit[mlflow]"``).

    Args:
        run: the run to log to (see above), or ``None``.
        tracking_uri: where runs are stored (``"file:///path/mlruns"``,
            ``"sqlite:///mlflow.db"``, ``"http://server:5000"``); ``None``: MLflow's own
            setting (``mlflow.set_tracking_uri`` / ``MLFLOW_TRACKING_URI``).
        experiment_name: the experiment of a run the callback starts (created if missing;
            default: ``MLFLOW_EXPERIMENT_NAME``, else ``"Default"``).
        run_name: the name of a run the callback starts.
        tags: tags set on the run.
        log_every_n_steps: also log the training logs every this many steps (each write
            waits for the device once); ``None``: once per epoch.
        log_checkpoints: log the final weights (``model.save_weights``) as an artifact.
        log_hyperparameters: log the ``compile`` and ``fit`` settings as params.

    Attributes:
        run_id: the run logged to (set when training begins).
        client: the ``mlflow.MlflowClient`` used.

    Examples:
        ```python
        logger = MLflowLogger(tracking_uri="sqlite:///mlflow.db", experiment_name="mnist",
                              log_every_n_steps=100, log_checkpoints=True)
        model.fit(x, y, epochs=3, callbacks=[logger])
        ```
    """

    def __init__(self, run: Any = None, *, tracking_uri: str | None = None,
                 experiment_name: str | None = None, run_name: str | None = None,
                 tags: dict[str, str] | None = None, log_every_n_steps: int | None = None,
                 log_checkpoints: bool = False, log_hyperparameters: bool = True):
        super().__init__(log_every_n_steps, log_checkpoints, log_hyperparameters)
        self.mlflow = _import_mlflow()
        self.run, self.tracking_uri = run, tracking_uri
        self.experiment_name, self.run_name, self.tags = experiment_name, run_name, tags or {}
        self.client: Any = None
        self.run_id: str | None = None
        self.owns_run = False

    def start_run(self, hyperparameters: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        self.client = self.mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        run = self.run if self.run is not None else self.mlflow.active_run()
        self.owns_run = run is None
        if run is None and self.resume_run_id is not None:  # a resumed fit: its own run
            run = self.continued_run(self.resume_run_id)
            if run is not None:
                hyperparameters = {}  # logged when the run started
        if run is None:
            name = (self.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                    or "Default")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment is not None else \
                self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=self.run_name)
        self.run_id = run if isinstance(run, str) else run.info.run_id
        tags = [RunTag(str(k), str(v)) for k, v in self.tags.items()]
        params = [Param(key, str(value)[:_MAX_VALUE]) for key, value in hyperparameters.items()]
        try:
            for first in range(0, max(len(params), 1), _MAX_PARAMS):
                self.client.log_batch(self.run_id, params=params[first:first + _MAX_PARAMS],
                                      tags=tags if first == 0 else [])
        except self.mlflow.exceptions.MlflowException as error:  # e.g. a param logged before
            warnings.warn(f"MLflowLogger could not log the hyperparameters to run "
                          f"{self.run_id}: {error}", stacklevel=2)

    def continued_run(self, run_id: str) -> Any:
        """The run ``run_id`` marked running again, or ``None`` (with a warning) if the
        tracking store no longer has it."""
        try:
            self.client.update_run(run_id, status="RUNNING")
            return self.client.get_run(run_id)
        except self.mlflow.exceptions.MlflowException as error:
            warnings.warn(f"MLflowLogger cannot continue run {run_id} of the restored backup "
                          f"({error}); starting a new run.", stacklevel=2)
            return None

    def own_run_id(self) -> str | None:
        return self.run_id if self.owns_run else None

    def log_metrics(self, metrics: dict[str, float], step: int, kind: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        prefix = "batch_" if kind == "batch" else ""
        rows = [Metric(f"{prefix}{key}", value, now, step) for key, value in metrics.items()]
        for first in range(0, len(rows), _MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=rows[first:first + _MAX_METRICS])

    def log_directory(self, path: str, name: str) -> None:
        self.client.log_artifacts(self.run_id, path, artifact_path=name)

    def end_run(self, failed: bool) -> None:
        if self.owns_run:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
