"""Weights & Biases: metrics per epoch (and every N steps), the run's config, the weights."""

from __future__ import annotations

from typing import Any

from easyfit.callbacks.tracking import TrackerCallback

__all__ = ["WandbLogger"]


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ImportError('WandbLogger needs wandb: pip install "easyfit[wandb]"') from None
    return wandb


class WandbLogger(TrackerCallback):
    """Logs a ``fit`` to Weights & Biases, as W&B's own Keras logger names things: each
    epoch's ``logs`` as ``epoch/<name>`` against ``epoch/epoch`` (``loss``, metrics,
    ``val_*``, ``learning_rate``), optionally the running training logs every
    ``log_every_n_steps`` steps as ``batch/<name>`` against ``batch/step`` (the global
    step), the ``compile`` and ``fit`` settings into ``run.config`` (see
    ``easyfit.callbacks.tracking.hyperparameters``), and with ``log_checkpoints`` the
    final weights as a ``model`` artifact. Only the chief process logs.

    The run is ``run`` if given (what ``wandb.init()`` returned), else the current run
    (``wandb.run``) if there is one; either is left open. Otherwise the callback calls
    ``wandb.init(project=project, name=name, **init_kwargs)`` when training begins and
    ``run.finish()`` when it ends (exit code 1 if ``fit`` raised). wandb is imported when
    the callback is created (``pip install "easyfit[wandb]"``).

    Args:
        run: the run to log to, or ``None``.
        project: the project of a run the callback starts.
        name: the name of a run the callback starts.
        log_every_n_steps: also log the training logs every this many steps (each write
            waits for the device once); ``None``: once per epoch.
        log_checkpoints: log the final weights (``model.save_weights``) as an artifact.
        log_hyperparameters: put the ``compile`` and ``fit`` settings in ``run.config``.
        **init_kwargs: more ``wandb.init`` arguments for a run the callback starts
            (``mode="offline"``, ``dir=``, ``config=``, ``tags=``, ``group=``...).

    Attributes:
        wandb_run: the run logged to (set when training begins).

    Examples:
        ```python
        logger = WandbLogger(project="mnist", mode="offline", log_every_n_steps=100)
        model.fit(x, y, epochs=3, callbacks=[logger])
        ```
    """

    def __init__(self, run: Any = None, *, project: str | None = None, name: str | None = None,
                 log_every_n_steps: int | None = None, log_checkpoints: bool = False,
                 log_hyperparameters: bool = True, **init_kwargs: Any):
        super().__init__(log_every_n_steps, log_checkpoints, log_hyperparameters)
        self.wandb = _import_wandb()
        self.run, self.project, self.name, self.init_kwargs = run, project, name, init_kwargs
        self.wandb_run: Any = None
        self.owns_run = False

    def start_run(self, hyperparameters: dict[str, Any]) -> None:
        run = self.run if self.run is not None else self.wandb.run
        self.owns_run = run is None
        if run is None:
            resume = {} if self.resume_run_id is None else {"id": self.resume_run_id,
                                                            "resume": "allow"}
            run = self.wandb.init(project=self.project, name=self.name,
                                  **{**self.init_kwargs, **resume})
        self.wandb_run = run
        if hyperparameters:
            run.config.update(hyperparameters, allow_val_change=True)
        run.define_metric("epoch/epoch")
        run.define_metric("epoch/*", step_metric="epoch/epoch")
        run.define_metric("batch/step")
        run.define_metric("batch/*", step_metric="batch/step")

    def own_run_id(self) -> str | None:
        return self.wandb_run.id if self.owns_run else None

    def log_metrics(self, metrics: dict[str, float], step: int, kind: str) -> None:
        counter = "epoch/epoch" if kind == "epoch" else "batch/step"
        self.wandb_run.log({**{f"{kind}/{key}": value for key, value in metrics.items()},
                            counter: step})

    def log_directory(self, path: str, name: str) -> None:
        artifact = self.wandb.Artifact(f"{name}-{self.wandb_run.id}", type="model")
        artifact.add_dir(path)
        self.wandb_run.log_artifact(artifact)

    def end_run(self, failed: bool) -> None:
        if self.owns_run:
            self.wandb_run.finish(exit_code=1 if failed else 0)
