"""easyfit: Keras-style compile / fit / evaluate / predict for Flax modules on JAX.

Examples:
    >>> import easyfit as ef
    >>> model = ef.Model(module)                                      # doctest: +SKIP
    >>> model.compile("adamw", "sparse_categorical_crossentropy", ["accuracy"])  # doctest: +SKIP
    >>> model.fit(x, y, epochs=10, validation_split=0.1)              # doctest: +SKIP
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from easyfit import config  # at import: it reads EASYFIT_CACHE_DIR
from easyfit.export import load_exported

if TYPE_CHECKING:  # the rest loads on first use (__getattr__ below), so a serving process's
    # `from easyfit.export import load_exported` loads no Flax model or training code
    from easyfit import (augment, callbacks, data, distribute, losses, metrics, optimizers,
                         plots, saving, schedules, tune)
    from easyfit.callbacks import History
    from easyfit.model import Model
    from easyfit.saving import load_model
else:  # bound by __getattr__ on first use; declared here for readers and checkers
    History: type
    Model: type
    load_model: Any

# public name -> the module that defines it, imported when the name is first read
_LAZY = {"History": "easyfit.callbacks", "Model": "easyfit.model",
         "load_model": "easyfit.saving"}


def __getattr__(name: str) -> Any:
    """``ef.Model``, ``ef.callbacks``, ...: imported on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = ["History", "Model", "augment", "callbacks", "config", "data", "distribute",
           "load_exported", "load_model", "losses", "metrics", "optimizers", "plots", "saving",
           "schedules", "tune", "__version__"]
