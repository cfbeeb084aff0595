"""``search``: sets up an optuna study (direction, sampler, pruner, storage, where the best
weights go) and runs its trials."""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

from easyfit.callbacks.base import Callback
from easyfit.tune._optuna import import_optuna
from easyfit.tune.study import Study, TrialRunner

__all__ = ["search"]

_MINIMIZED = ("loss", "error", "mse", "mae", "mape", "msle", "crossentropy")


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
    compiled [`Model`][easyfit.Model]; the model is then fitted for ``epochs`` epochs. Each
    epoch's ``logs[objective]`` is reported to optuna, whose pruner stops unpromising trials
    early (``fit`` ends cleanly; the trial is marked pruned). A non-finite objective or
    training loss (a diverged run) prunes the trial too. A trial's value is the objective at
    its last epoch. The best trial's model is kept (see
    [`best_model`][easyfit.tune.Study.best_model]). Trials run
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
            a superseded best's are deleted), so that
            [`best_model`][easyfit.tune.Study.best_model] works in a
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
        A [`Study`][easyfit.tune.trials.Study].

    Raises:
        ImportError: optuna is not installed (``pip install 'easyfit[tune]'``).

    Examples:
        >>> study = ef.tune.search(build, x_train, y_train,          # doctest: +SKIP
        ...                        validation_data=(x_val, y_val), objective="val_accuracy",
        ...                        trials=20, epochs=10, storage="sqlite:///tune.db",
        ...                        study_name="mlp")
        >>> study.best_model.evaluate(x_test, y_test, return_dict=True)  # doctest: +SKIP
    """
    optuna = import_optuna()
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
        run = TrialRunner(result, fit_args, checkpoint_dir, trials, verbose)
        study.optimize(run, n_trials=trials)
    finally:
        optuna.logging.set_verbosity(old_verbosity)
    if verbose and trials:
        print()
        result.summary()
    return result
