"""``Study``: the result of [`easyfit.tune.search`][easyfit.tune.search], optuna's study plus the best model,
and its ranked table of trials; ``TrialRunner``, the optuna objective that fills it."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable

from easyfit.tune._optuna import import_optuna
from easyfit.tune.pruning import PruningCallback

__all__ = ["Study", "TrialRunner"]

_WEIGHTS_ATTR = "easyfit_weights"    # trial user attribute: where its weights were saved


class Study:
    """The result of `search`: optuna's study plus the best model.

    Attributes:
        optuna: the ``optuna.study.Study`` (its storage holds every trial).

    Examples:
        >>> study = ef.tune.search(build, x, y, validation_split=0.2, trials=10)  # doctest: +SKIP
        >>> study.best_params                                        # doctest: +SKIP
        {'width': 128, 'lr': 0.003}
        >>> text = study.summary()                                   # doctest: +SKIP
    """

    def __init__(self, study: Any, build: Callable[[Any], Any], objective: str,
                 fit_args: dict[str, Any]):
        self.optuna = study
        self.objective = objective
        self._build_fn, self._fit_args = build, fit_args
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
        """The best trial's [`Model`][easyfit.Model], with the weights it ended that trial with.

        Kept in memory when the best trial ran in this process. Otherwise (a resumed study,
        another worker) it is rebuilt by ``build(optuna.trial.FixedTrial(best_params))`` and
        loaded from the weights saved under ``checkpoint_dir``; if they were not saved,
        this raises ``RuntimeError``: call
        [`retrain_best`][easyfit.tune.study.Study.retrain_best] instead.
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
        return _checked(self._build_fn(import_optuna().trial.FixedTrial(params)))

    def retrain_best(self, epochs: int | None = None, **fit_kwargs: Any) -> Any:
        """Builds a model with the best parameters and trains it as the search did.

        Args:
            epochs: defaults to the search's ``epochs``.
            **fit_kwargs: ``fit`` arguments that replace the search's (e.g. new data
                ``x=``, ``y=``, or ``validation_data=None``).

        Returns:
            The trained [`Model`][easyfit.Model].

        Examples:
            >>> model = study.retrain_best(epochs=20)                # doctest: +SKIP
        """
        args = {**self._fit_args, **fit_kwargs}
        if epochs is not None:
            args["epochs"] = epochs
        callbacks = args.pop("callbacks", None)
        if callable(callbacks):
            callbacks = callbacks(import_optuna().trial.FixedTrial(self.best_params))
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

        Examples:
            >>> study.summary()                                      # doctest: +SKIP
            rank  trial  state     val_accuracy  epochs  params
               1      4  complete        0.9723       5  width=128, lr=0.00312
        """
        state = import_optuna().trial.TrialState
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
    if not model.compiled:
        raise ValueError("build(trial) must return a compiled ef.Model (call model.compile).")
    return model


class TrialRunner:
    """The optuna objective that fills a [`Study`][easyfit.tune.study.Study]: builds, fits, reports, keeps the best
    model."""

    def __init__(self, study: Study, fit_args: dict[str, Any], checkpoint_dir: Any,
                 trials: int, verbose: int):
        self.study, self.fit_args, self.trials, self.verbose = study, fit_args, trials, verbose
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.count = 0

    def __call__(self, trial: Any) -> float:
        self.count += 1
        start = time.perf_counter()
        model = _checked(self.study._build_fn(trial))
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
