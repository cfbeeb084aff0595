"""Save a whole model and load it back: ``model.save(path)`` and [`load_model`][easyfit.saving.load_model].

``model.save(path)`` writes everything needed to continue training or to serve: the weights
(parameters, batch statistics, dropout RNG streams), the optimizer state and step counter
(once ``fit`` has run), and the ``compile`` configuration (optimizer, loss and metrics by
name and settings). [`load_model`][easyfit.saving.load_model] rebuilds the model from your
module code and that
directory; a ``fit`` after loading continues exactly as the saved model would have (bit for
bit on the same machine).

The Python code of the model is not stored (as with Keras's custom layers): pass the module
again when loading, as an instance built as before or a function that builds it. A loss,
metric, optimizer or ``augment`` that is your own Python code is not stored either; the
saved configuration says so in a ``note``, and [`load_model`][easyfit.saving.load_model] asks
for it in
``custom_objects`` (or load with ``compile=False`` and call ``model.compile`` yourself).

For serving without any of this code, see [`easyfit.export`][easyfit.export].

Examples:
    >>> model.save("runs/mnist-model")                                       # doctest: +SKIP
    >>> model = ef.load_model("runs/mnist-model", module=CNN(rngs=nnx.Rngs(0)))  # doctest: +SKIP
    >>> model.fit(x, y, epochs=5)          # continues where the saved model stopped  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from easyfit import saved_model
from easyfit.distribute import Distribution
from easyfit.model import Model

__all__ = ["load_model", "save_model"]


def save_model(model: Model, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Writes the whole model to the directory ``path``; the same as ``model.save(path)``.

    Args:
        model: the model to save (compiled or not; a model never compiled saves its weights
            and loads uncompiled).
        path: a directory, created (with its parents) if missing.
        overwrite: replace a model saved at ``path`` before (default ``True``, as Keras 3).
            A path that exists and is not an easyfit saved model (a non-empty directory, a
            file) is never replaced: ``FileExistsError``.

    Raises:
        FileExistsError: ``path`` holds something else, or a saved model and
            ``overwrite=False``.
        RuntimeError: a Linen model not initialised yet (nothing to save).

    Examples:
        >>> ef.saving.save_model(model, "runs/model")   # doctest: +SKIP
    """
    saved_model.write(model, path, overwrite)


def load_model(path: str | os.PathLike, module: Any, compile: bool = True,
               custom_objects: dict[str, Any] | None = None, sample_input: Any = None,
               distribution: Distribution | None = None) -> Model:
    """Loads a model written by ``model.save(path)``.

    Args:
        path: the directory ``model.save`` wrote.
        module: the model's code: an ``nnx.Module`` built as the saved one was (its weights
            are replaced by the saved ones), or a function of no arguments that builds it
            (as ``ef.Model`` accepts). A ``flax.linen`` module needs ``sample_input``.
        compile: compile the model as it was saved, with its optimizer state, so ``fit``
            continues the saved training; ``False``: weights only, an uncompiled model (for
            ``predict``, or to ``compile`` anew).
        custom_objects: the parts of the compile configuration that are Python code, which
            a save cannot store: ``{name: object}``, by the name the error (and the saved
            ``easyfit_model.json``) gives, e.g. a loss function's name or a metric's log
            name; or by role: ``"optimizer"``, ``"loss"``, ``"augment"``.
        sample_input: an example input batch, for a Linen module.
        distribution: where arrays live (as ``ef.Model``'s argument); default: data
            parallel over all devices.

    Returns:
        The model, with the saved weights (and, if compiled, the saved training state).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an easyfit saved model; ``module`` does not match the
            saved weights (the mismatching paths are listed); or the model was compiled
            with Python code that is not stored and ``custom_objects`` lacks it.

    Examples:
        >>> model = ef.load_model("runs/model", module=lambda: MLP(rngs=nnx.Rngs(0)))  # doctest: +SKIP
        >>> model = ef.load_model("runs/model", module=MLP(rngs=nnx.Rngs(0)),          # doctest: +SKIP
        ...                       custom_objects={"my_loss": my_loss})
    """
    config = saved_model.read_config(path)  # before building anything
    if module is None:
        raise TypeError("load_model needs module=: the model's code is not saved. Pass the "
                        "module built as before, e.g. module=MLP(rngs=nnx.Rngs(0)), or a "
                        "function that builds it.")
    model = Model(module, sample_input=sample_input, distribution=distribution)
    saved_model.restore(model, path, config, compile, custom_objects)
    return model
