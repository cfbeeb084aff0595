"""Hyperparameter search with optuna: ``ef.tune.search`` runs trials, prunes bad ones early,
keeps the best model and prints a ranked table.

Optuna is an optional extra (``pip install 'easyfit[tune]'``); it is imported only when a
function of this package runs, never at ``import easyfit``.

Examples:
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

from easyfit.tune.pruning import PruningCallback
from easyfit.tune.study import Study
from easyfit.tune.trials import search

__all__ = ["PruningCallback", "Study", "search"]
