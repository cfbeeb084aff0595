"""What the module is called with and gives back, checked at the first trace of a step:
a ``__call__`` that cannot take ``x`` as its one argument, outputs that are not arrays or
not one row per example, labels that cannot meet a module's one output. Each is refused
with one error in the user's terms (the ``easyfit.errors`` types), at no cost once the
step is compiled.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import numpy as np

from easyfit.errors import (LossInputError, ModuleInputError, ModuleOutputError, call_name,
                            describe)

__all__ = ["check_call", "check_labels", "check_outputs"]


def check_call(module: Any, x: Any) -> None:
    """Refuses a module whose ``__call__`` cannot take ``x`` as its one argument.

    Raises:
        ModuleInputError: naming the parameters and how to pass several inputs.
    """
    try:
        signature = inspect.signature(module)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(x)
    except TypeError:
        name = type(module).__name__
        params = ", ".join(signature.parameters)
        raise ModuleInputError(
            f"{call_name()}: {name}.__call__({params}) needs more than one argument, but "
            "easyfit calls the module with x alone. Take several inputs as one: "
            f"def __call__(self, inputs): {params} = inputs, and pass x as a tuple of "
            "arrays (or a dict of them, read by key).") from None


def check_outputs(y_pred: Any, rows: int | None = None) -> None:
    """Refuses module outputs that are not arrays (``None``, a string, an object), or whose
    first axis is not the batch of ``rows`` rows.

    Raises:
        ModuleOutputError: naming the call and what was returned.
    """
    leaves = jax.tree_util.tree_leaves_with_path(y_pred)
    if not leaves and y_pred is None:
        raise ModuleOutputError(
            f"{call_name()}: the module returned None, so there is nothing to compute the "
            "loss on or to predict. Likely cause: its __call__ has no `return` (end it with "
            "e.g. `return self.out(x)`).")
    for path, leaf in leaves:
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, bool, int, float, complex)):
            where = f"output {jax.tree_util.keystr(path)}" if path else "output"
            shown = repr(leaf)[:40]
            raise ModuleOutputError(
                f"{call_name()}: the module's {where} is a {type(leaf).__name__} ({shown}), "
                "not an array: return an array, or a dict or tuple of arrays (one per "
                "output).")
        shape = tuple(getattr(leaf, "shape", ()))
        if rows is not None and (not shape or shape[0] != rows):
            where = f"output {jax.tree_util.keystr(path)}" if path else "output"
            raise ModuleOutputError(
                f"{call_name()}: the module's {where} has shape {shape} for a batch of {rows} "
                f"rows, but its first axis must be the batch (one row of outputs per "
                "example). Likely cause: the examples reached the module without their batch "
                "axis (a list or iterable of single examples: stack them, np.stack(x), or "
                "pass arrays), or the module reduces over the batch (a mean or sum over "
                "axis 0).")


def check_labels(y: Any, y_pred: Any) -> None:
    """Refuses labels that cannot meet a module's one output: none at all, or a dict, tuple
    or list of label arrays.

    Raises:
        LossInputError: naming the call, the labels' structure and the fix.
    """
    if y is None:
        raise LossInputError(
            f"{call_name()}: the batches hold no labels, so there is no loss to compute. "
            "Yield (x, y) pairs from the input (or pass y with arrays); for outputs only, "
            "use model.predict.")
    if isinstance(y, (dict, tuple, list)):
        kind = (f"a dict with keys {sorted(map(str, y))}" if isinstance(y, dict) else
                f"a {type(y).__name__} of {len(y)}")
        raise LossInputError(
            f"{call_name()}: y is {kind}, but the module returns one output "
            f"({describe(y_pred, 'outputs')}). Pass y as one array; or, for several outputs, "
            "return a dict (or tuple) from the module's __call__ with one entry per label.")
