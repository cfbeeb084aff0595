"""Hyperparameter search with optuna: ``ef.tune.search`` runs trials, prunes bad ones early,
keeps the best model and prints a ranked table.

Optuna is an optional extra (``pip install 'easyfit[tune]'``); it is imported only when a
function of this module runs, never at ``import easyfit``.

Example:
    >>> def build(trial):                                            # doctest: +SKIP
    ...     model = ef.Model(Net(width=trial.suggest_int("width", 32, 256), rngs=nnx.Rngs(0)))
    ...     model.compile(ef.optimizers.adamw(trial.suggest_float("lr", 1e-4, 1e-2, log=True)),
    ...                   "sparse_categorical_crossentropy", metrics=["accuracy"])
    ...     return model
    >>> study = ef.tune.search(build, x, y, validation_data=(x_val, y_val),  # doctest: +SKIP
    ...                        objective="val_accuracy", trials=20, epochs=10)
    >>> study.best_params, study.best_value                          # doctest: +SKIP
    ({'width': 180, 'lr': 0.0031}, 0.975)
    >>> study.best_model.evaluate(x_test, y_test, return_dict=True)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from typing import Any, Callable, Sequence

from easyfit.callbacks.base import Callback

__all__ = ["PruningCallback", "Study", "search"]

_INSTALL = "pip install 'easyfit[tune]'"
_WEIGHTS_ATTR = "easyfit_weights"    # trial user attribute: where its weights were saved
_MINIMIZED = ("loss", "error", "mse", "mae", "mape", "msle", "crossentropy")


def _optuna() -> Any:
    """Imports optuna, or says how to install it."""
    try:
        import optuna
    except ImportError:
        raise ImportError(f"ef.tune needs optuna: {_INSTALL}") from None
    return optuna


def _direction(objective: str, direction: str | None) -> str:
    """``"minimize"`` or ``"maximize"``: as given, else inferred from the objective's name."""
    if direction is None:
        name = objective.lower()
        return "minimize" if any(word in name for word in _MINIMIZED) else "maximize"
    aliases = {"min": "minimize", "minimize": "minimize", "max": "maximize",
               "maximize": "maximize"}
    if direction not in aliases:
        raise ValueError(f"direction must be 'minimize' ('min') or 'maximize' ('max'); got "
                         f"{direction!r}.")
    return aliases[direction]


class PruningCallback(Callback):
    """Reports each epoch's ``logs[objective]`` to an optuna trial and stops ``fit`` when
    the trial's pruner says so.

    ``fit`` then ends cleanly (``self.model.stop_training = True``); call
    :meth:`raise_if_pruned` after it to raise ``optuna.TrialPruned``. A non-finite
    objective or training loss (a diverged run) also stops the trial as pruned.
    :func:`search` uses it; it also serves a hand-written optuna objective.

    Args:
        trial: the ``optuna.Trial`` being run.
        objective: the ``logs`` key to report, e.g. ``"val_loss"``.

    Example:
        >>> def objective(trial):                                    # doctest: +SKIP
        ...     model = build(trial)
        ...     pruning = ef.tune.PruningCallback(trial, "val_loss")
        ...     model.fit(x, y, epochs=10, validation_data=(x_val, y_val),
        ...               callbacks=[pruning], verbose=0)
        ...     pruning.raise_if_pruned()
        ...     return model.evaluate(x_val, y_val, verbose=0)  # val_loss
    """

    def __init__(self, trial: Any, objective: str):
        super().__init__()
        self.trial, self.objective = trial, objective
        self.pruned_at: int | None = None   # 0-based epoch at which the trial was stopped
        self.reason = ""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.objective not in logs:
            if self.objective.startswith("val_") and not any(k.startswith("val_") for k in logs):
                return  # no validation this epoch (validation_freq)
            raise KeyError(f"The objective {self.objective!r} is not in the epoch logs "
                           f"{sorted(logs)}; pass one of them as objective=.")
        value = float(logs[self.objective])
        loss = float(logs.get("loss", 0.0))
        if not (math.isfinite(value) and math.isfinite(loss)):
            name = self.objective if not math.isfinite(value) else "loss"
            self._stop(epoch, f"{name} is {float(logs[name])}")
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self._stop(epoch, "pruned")

    def _stop(self, epoch: int, reason: str) -> None:
        self.pruned_at, self.reason = epoch, reason
        self.model.stop_training = True

    def raise_if_pruned(self) -> None:
        """Raises ``optuna.TrialPruned`` if this callback stopped training."""
        if self.pruned_at is not None:
            raise _optuna().TrialPruned(f"{self.reason} at epoch {self.pruned_at + 1}")


class Study:
    """The result of :func:`search`: optuna's study plus the best model.

    Attributes:
        optuna: the ``optuna.study.Study`` (its storage holds every trial).

    Example:
        >>> study = ef.tune.search(build, x, y, validation_split=0.2, trials=10)  # doctest: +SKIP
        >>> study.best_params                                        # doctest: +SKIP
        {'width': 128, 'lr': 0.003}
        >>> text = study.summary()                                   # doctest: +SKIP
    """

    def __init__(self, study: Any, build: Callable[[Any], Any], objective: str,
                 fit_args: dict[str, Any]):
        self.optuna = study
        self.objective = objective
        self._build, self._fit_args = build, fit_args
        self._best_number: int | None = None   # trial whose model is in memory
        self._best_model: Any = None

    # -- optuna's view ----------------------------------------------------------------------
    @property
    def trials(self) -> list[Any]:
        """All trials (``optuna.trial.FrozenTrial``), earlier processes' included."""
        return self.optuna.trials

    @property
    def best_trial(self) -> Any:
        """The best complete trial (``optuna.trial.FrozenTrial``)."""
        return self.optuna.best_trial

    @property
    def best_params(self) -> dict[str, Any]:
        """The best trial's hyperparameters, ``{name: value}``."""
        return self.optuna.best_params

    @property
    def best_value(self) -> float:
        """The best trial's objective (its value at the last epoch it trained)."""
        return self.optuna.best_value

    @property
    def direction(self) -> str:
        """``"minimize"`` or ``"maximize"``."""
        return self.optuna.direction.name.lower()

    # -- the best model -----------------------------------------------------------------------
    @property
    def best_model(self) -> Any:
        """The best trial's :class:`~easyfit.Model`, with the weights it ended that trial with.

        Kept in memory when the best trial ran in this process. Otherwise (a resumed study,
        another worker) it is rebuilt by ``build(optuna.trial.FixedTrial(best_params))`` and
        loaded from the weights saved under ``checkpoint_dir``; if they were not saved,
        this raises ``RuntimeError``: call :meth:`retrain_best` instead.
        """
        best = self.best_trial
        if self._best_number == best.number:
            return self._best_model
        path = best.user_attrs.get(_WEIGHTS_ATTR)
        if not path or not os.path.isdir(path):
            raise RuntimeError(
                f"The best trial ({best.number}) ran in another process and its weights were "
                f"not saved (pass checkpoint_dir= to search, or use an SQLite storage). Call "
                f"study.retrain_best() to train a model with its parameters again.")
        model = self._build_with(best.params)
        model.load_weights(path)
        self._best_number, self._best_model = best.number, model
        return model

    def _build_with(self, params: dict[str, Any]) -> Any:
        return _checked(self._build(_optuna().trial.FixedTrial(params)))

    def retrain_best(self, epochs: int | None = None, **fit_kwargs: Any) -> Any:
        """Builds a model with the best parameters and trains it as the search did.

        Args:
            epochs: defaults to the search's ``epochs``.
            **fit_kwargs: ``fit`` arguments that replace the search's (e.g. new data
                ``x=``, ``y=``, or ``validation_data=None``).

        Returns:
            The trained :class:`~easyfit.Model`.

        Example:
            >>> model = study.retrain_best(epochs=20)                # doctest: +SKIP
        """
        args = {**self._fit_args, **fit_kwargs}
        if epochs is not None:
            args["epochs"] = epochs
        callbacks = args.pop("callbacks", None)
        if callable(callbacks):
            callbacks = callbacks(_optuna().trial.FixedTrial(self.best_params))
        model = self._build_with(self.best_params)
        model.fit(callbacks=list(callbacks or []), **args)
        return model

    # -- the table ---------------------------------------------------------------------------
    def summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        """A ranked table of the trials: complete ones best first, then pruned, then failed.

        Args:
            print_fn: called with the table (``None``: only return it).

        Returns:
            The table, one line per trial: rank, trial number, state, value (for a pruned
            trial, its last reported value), epochs trained, params.

        Example:
            >>> study.summary()                                      # doctest: +SKIP
            rank  trial  state     val_accuracy  epochs  params
               1      4  complete        0.9723       5  width=128, lr=0.00312
        """
        state = _optuna().trial.TrialState
        sign = -1.0 if self.direction == "maximize" else 1.0
        complete = sorted((t for t in self.trials if t.state == state.COMPLETE),
                          key=lambda t: (sign * t.value, t.number))
        pruned = [t for t in self.trials if t.state == state.PRUNED]
        other = [t for t in self.trials if t.state not in (state.COMPLETE, state.PRUNED)]
        rows = [("rank", "trial", "state", self.objective, "epochs", "params")]
        for rank, trial in enumerate(complete + pruned + other, start=1):
            value = "-" if trial.value is None else f"{trial.value:.6g}"
            epochs = "-" if trial.last_step is None else str(trial.last_step + 1)
            note = trial.user_attrs.get("easyfit_reason", "")
            rows.append((str(rank) if trial.state == state.COMPLETE else "-", str(trial.number),
                         trial.state.name.lower() + (f" ({note})" if note else ""), value,
                         epochs, _format_params(trial.params)))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join([cell.rjust(w) if i != 2 else cell.ljust(w)
                            for i, (cell, w) in enumerate(zip(row[:5], widths))] + [row[5]])
                 for row in rows]
        text = "\n".join(line.rstrip() for line in lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self) -> str:
        return (f"Study({self.optuna.study_name!r}, objective={self.objective!r}, "
                f"direction={self.direction!r}, trials={len(self.trials)})")


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in params.items())


def _checked(model: Any) -> Any:
    from easyfit.model import Model

    if not isinstance(model, Model):
        raise TypeError(f"build(trial) must return an ef.Model; got {type(model).__name__}.")
    if not model._compiled:
        raise ValueError("build(trial) must return a compiled ef.Model (call model.compile).")
    return model


def _default_checkpoint_dir(storage: Any, study_name: str) -> str | None:
    """``<db>-<study>-weights`` next to an SQLite file; ``None`` for other storages."""
    if not isinstance(storage, str) or not storage.startswith("sqlite:///"):
        return None
    path = storage[len("sqlite:///"):].split("?")[0]
    if not path or path == ":memory:":
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", study_name)
    return f"{os.path.splitext(os.path.abspath(path))[0]}-{safe}-weights"


def search(build: Callable[[Any], Any], x: Any, y: Any = None, *,
           validation_data: Any = None, validation_split: float = 0.0,
           objective: str = "val_loss", direction: str | None = None, trials: int = 20,
           epochs: int = 10, batch_size: int | None = None,
           callbacks: Sequence[Callback] | Callable[[Any], Sequence[Callback]] | None = None,
           storage: Any = None, study_name: str | None = None,
           checkpoint_dir: str | os.PathLike | None = None, sampler: Any = None,
           pruner: Any = None, seed: int = 0, verbose: int = 1, **fit_kwargs: Any) -> Study:
    """Searches hyperparameters with optuna: builds, trains and scores ``trials`` models.

    Each trial calls ``build(trial)``, which draws hyperparameters with
    ``trial.suggest_float`` / ``suggest_int`` / ``suggest_categorical`` and returns a
    compiled :class:`~easyfit.Model`; the model is then fitted for ``epochs`` epochs. Each
    epoch's ``logs[objective]`` is reported to optuna, whose pruner stops unpromising trials
    early (``fit`` ends cleanly; the trial is marked pruned). A non-finite objective or
    training loss (a diverged run) prunes the trial too. A trial's value is the objective at
    its last epoch. The best trial's model is kept (see :attr:`Study.best_model`). Trials run
    one after another in this process; several processes (machines) can share one study
    through ``storage``.

    Args:
        build: ``trial -> compiled ef.Model``. Build every model the same way (fixed
            ``nnx.Rngs`` seeds, ``compile(seed=)``) for reproducible searches.
        x: training data, as ``Model.fit``'s ``x``.
        y: training targets for array ``x``.
        validation_data: as ``fit``'s; needed for ``val_*`` objectives (or
            ``validation_split``).
        validation_split: as ``fit``'s.
        objective: the ``logs`` key to optimise, e.g. ``"val_loss"``, ``"val_accuracy"``.
        direction: ``"minimize"``/``"min"`` or ``"maximize"``/``"max"``. Default: minimize
            when the objective's name contains ``loss``, ``error``, ``mse``, ``mae``,
            ``mape``, ``msle`` or ``crossentropy``; maximize otherwise.
        trials: how many trials this call runs (a resumed study runs this many more).
        epochs: epochs per trial (fewer if pruned or stopped by a callback).
        batch_size: as ``fit``'s.
        callbacks: extra callbacks for every trial's ``fit``, or ``trial -> callbacks``
            to give each trial its own (e.g. a ``ModelCheckpoint`` per trial).
        storage: ``None`` (in memory), an optuna storage URL such as
            ``"sqlite:///study.db"`` or ``"postgresql://..."``, or an optuna storage object.
            With a persistent storage an interrupted study resumes where it stopped.
        study_name: the study's name in ``storage`` (loaded if it exists).
        checkpoint_dir: where the best trial's weights are saved (``trial_<n>`` under it;
            a superseded best's are deleted), so that :attr:`Study.best_model` works in a
            later process. Default: ``<db>-<study_name>-weights`` next to an SQLite file;
            not saved for other storages.
        sampler: an optuna sampler. Default ``optuna.samplers.TPESampler(seed=seed + n)``,
            ``n`` being the number of trials already in the study (so a resumed study does
            not repeat its first draws).
        pruner: an optuna pruner. Default ``optuna.pruners.MedianPruner(n_startup_trials=3,
            n_warmup_steps=1)``: from the second epoch on, a trial whose objective is worse
            than the median of the complete trials' at the same epoch stops, once 3 trials
            have completed. Pass ``optuna.pruners.NopPruner()`` to never prune.
        seed: the default sampler's seed.
        verbose: 0 silent; 1 one line per trial and the ranked table at the end; 2 also
            each trial's per-epoch ``fit`` lines.
        **fit_kwargs: more ``Model.fit`` arguments (``shuffle``, ``class_weight``, ...).

    Returns:
        A :class:`Study`.

    Raises:
        ImportError: optuna is not installed (``pip install 'easyfit[tune]'``).

    Example:
        >>> study = ef.tune.search(build, x_train, y_train,          # doctest: +SKIP
        ...                        validation_data=(x_val, y_val), objective="val_accuracy",
        ...                        trials=20, epochs=10, storage="sqlite:///tune.db",
        ...                        study_name="mlp")
        >>> study.best_model.evaluate(x_test, y_test, return_dict=True)  # doctest: +SKIP
    """
    optuna = _optuna()
    if not isinstance(trials, int) or trials < 0:
        raise ValueError(f"trials must be a non-negative int; got {trials!r}.")
    if "verbose" in fit_kwargs:
        raise TypeError("search takes verbose= itself (0, 1 or 2); it sets fit's.")
    if objective.startswith("val_") and validation_data is None and not validation_split:
        raise ValueError(f"The objective {objective!r} needs validation data: pass "
                         f"validation_data= or validation_split=, or objective='loss'.")
    direction = _direction(objective, direction)
    old_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            storage=storage, study_name=study_name, direction=direction, load_if_exists=True,
            sampler=sampler or optuna.samplers.TPESampler(seed=seed),
            pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
        if sampler is None and study.trials:  # resumed: do not repeat the first draws
            study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
        if study.direction.name.lower() != direction:
            raise ValueError(f"The stored study {study.study_name!r} has direction "
                             f"{study.direction.name.lower()}; this search asked for "
                             f"{direction}.")
        if checkpoint_dir is None:
            checkpoint_dir = _default_checkpoint_dir(storage, study.study_name)
        fit_args = dict(x=x, y=y, validation_data=validation_data,
                        validation_split=validation_split, epochs=epochs,
                        batch_size=batch_size, callbacks=callbacks,
                        verbose=2 if verbose >= 2 else 0, **fit_kwargs)
        result = Study(study, build, objective, fit_args)
        run = _TrialRunner(result, fit_args, checkpoint_dir, trials, verbose)
        study.optimize(run, n_trials=trials)
    finally:
        optuna.logging.set_verbosity(old_verbosity)
    if verbose and trials:
        print()
        result.summary()
    return result


class _TrialRunner:
    """The optuna objective: builds, fits, reports, keeps the best model."""

    def __init__(self, study: Study, fit_args: dict[str, Any], checkpoint_dir: Any,
                 trials: int, verbose: int):
        self.study, self.fit_args, self.trials, self.verbose = study, fit_args, trials, verbose
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.count = 0

    def __call__(self, trial: Any) -> float:
        self.count += 1
        start = time.perf_counter()
        model = _checked(self.study._build(trial))
        objective = self.study.objective
        pruning = PruningCallback(trial, objective)
        args = dict(self.fit_args)
        callbacks = args.pop("callbacks")
        if callable(callbacks):
            callbacks = callbacks(trial)
        history = model.fit(callbacks=[*(callbacks or []), pruning], **args)
        seconds = time.perf_counter() - start
        if pruning.pruned_at is not None:
            if pruning.reason != "pruned":
                trial.set_user_attr("easyfit_reason", pruning.reason)
            self._say(trial, f"{pruning.reason} at epoch {pruning.pruned_at + 1}", seconds)
            pruning.raise_if_pruned()
        values = history.history.get(objective)
        if not values:
            raise KeyError(f"The objective {objective!r} was never in the epoch logs "
                           f"{sorted(history.history)}.")
        value = float(values[-1])
        self._keep_if_best(trial, model, value)
        self._say(trial, f"{objective}={value:.6g}", seconds)
        return value

    def _keep_if_best(self, trial: Any, model: Any, value: float) -> None:
        study = self.study.optuna
        try:
            previous = study.best_trial
        except ValueError:  # no complete trial yet
            previous = None
        if previous is not None:
            better = (value > previous.value if self.study.direction == "maximize"
                      else value < previous.value)
            if not better:
                return
        self.study._best_number, self.study._best_model = trial.number, model
        if self.checkpoint_dir is not None:
            path = os.path.join(os.path.abspath(self.checkpoint_dir), f"trial_{trial.number}")
            model.save_weights(path)
            trial.set_user_attr(_WEIGHTS_ATTR, path)
            old = None if previous is None else previous.user_attrs.get(_WEIGHTS_ATTR)
            if old and old != path:  # superseded: never the best again
                shutil.rmtree(old, ignore_errors=True)

    def _say(self, trial: Any, outcome: str, seconds: float) -> None:
        if self.verbose:
            params = _format_params(trial.params)
            print(f"Trial {trial.number} ({self.count}/{self.trials}): {params}: {outcome} "
                  f"({seconds:.1f} s)", flush=True)
