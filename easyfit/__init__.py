"""easyfit: Keras-style compile / fit / evaluate / predict for Flax modules on JAX.

Example:
    >>> import easyfit as ef
    >>> model = ef.Model(module)                                      # doctest: +SKIP
    >>> model.compile("adamw", "sparse_categorical_crossentropy", ["accuracy"])  # doctest: +SKIP
    >>> model.fit(x, y, epochs=10, validation_split=0.1)              # doctest: +SKIP
"""

from easyfit import (augment, callbacks, config, data, distribute, losses, metrics, optimizers,
                     plots, schedules, tune)
from easyfit.callbacks import History
from easyfit.model import Model

__version__ = "0.1.0"

__all__ = ["History", "Model", "augment", "callbacks", "config", "data", "distribute", "losses",
           "metrics", "optimizers", "plots", "schedules", "tune", "__version__"]
