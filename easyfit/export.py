"""Run an exported model: [`load_exported`][easyfit.export.load_exported] reads what ``model.export(path)`` wrote.

An export is a directory holding the model's inference function (eval mode: dropout off,
BatchNorm on its running statistics) serialized with `jax.export`, with a symbolic
batch dimension, so any batch size runs without recompiling Python code, and its weights:

- ``easyfit_export.json``: the format and version, the inputs' and outputs' shapes
  (``"batch"`` for the batch dimension) and dtypes, and the module's class (for reference);
- ``function.jax``: the serialized ``jax.export.Exported``;
- ``weights.npz``: the weights, as numpy arrays, in the order the function takes them.

This module imports only ``jax``, ``numpy`` and the standard library: the process that
serves the model needs neither the model's Python code nor Flax modules nor easyfit's
training code.

Examples:
    >>> model.export("runs/served", sample_input=x_test[:1])   # doctest: +SKIP
    >>> serve = ef.load_exported("runs/served")                # doctest: +SKIP
    >>> serve(x_test).shape                                    # doctest: +SKIP
    (360, 10)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["EXPORT_FILE", "EXPORT_FORMAT", "EXPORT_VERSION", "ExportedModel", "FUNCTION_FILE",
           "WEIGHTS_FILE", "load_exported"]

EXPORT_FILE = "easyfit_export.json"
FUNCTION_FILE = "function.jax"
WEIGHTS_FILE = "weights.npz"
EXPORT_FORMAT = "easyfit.export"
EXPORT_VERSION = 1


class ExportedModel:
    """A callable over an exported model: ``outputs = exported(x)``.

    Args:
        exported: the deserialized ``jax.export.Exported`` (``f(weights, x)``).
        weights: the weights, in the order ``exported`` takes them.
        config: the contents of ``easyfit_export.json``.

    Attributes:
        exported: the ``jax.export.Exported``: its ``in_avals`` / ``out_avals`` show the
            symbolic batch dimension.
        config: the export's description (input and output shapes and dtypes).
    """

    def __init__(self, exported: Any, weights: list[Any], config: dict[str, Any]):
        self.exported, self.config = exported, config
        self._weights = jax.device_put(weights)  # once, not at every call
        self._call = jax.jit(exported.call)

    def __call__(self, x: Any) -> Any:
        """Runs the model on a batch ``x`` (numpy or JAX arrays, shaped as the export's
        inputs with any batch size); returns numpy arrays."""
        x = jax.tree.map(np.asarray, x)
        self._check(x)
        return jax.tree.map(np.asarray, self._call(self._weights, x))

    def _check(self, x: Any) -> None:
        """Refuses ``x`` unlike the export's inputs, naming the input and both shapes."""
        specs = self.config["inputs"]
        leaves = jax.tree_util.tree_leaves_with_path(
            specs, is_leaf=lambda d: isinstance(d, dict) and "shape" in d)
        given = jax.tree.leaves(x)
        expected = ", ".join(f"x{jax.tree_util.keystr(p)} ({', '.join(map(str, s['shape']))}) "
                             f"{s['dtype']}" for p, s in leaves)
        if len(given) != len(leaves):
            raise ValueError(f"This export takes {expected}; got {len(given)} arrays.")
        for (path, spec), array in zip(leaves, given):
            shape = spec["shape"]
            batch_ok = isinstance(shape[0], str) or array.shape[:1] == (shape[0],)
            if array.ndim != len(shape) or list(array.shape[1:]) != shape[1:] or not batch_ok \
                    or np.dtype(spec["dtype"]).kind != array.dtype.kind:
                raise ValueError(
                    f"This export takes {expected}; got "
                    f"x{jax.tree_util.keystr(path)} {array.dtype} {tuple(array.shape)}. Pass "
                    f"arrays shaped and typed as the sample_input it was exported with.")

    def __repr__(self) -> str:
        return f"ExportedModel(inputs={self.config['inputs']}, outputs={self.config['outputs']})"


def load_exported(path: str | Path) -> ExportedModel:
    """Loads an export written by ``model.export(path)``: a callable ``x -> outputs``.

    Args:
        path: the export directory.

    Returns:
        An [`ExportedModel`][easyfit.export.ExportedModel]: call it on numpy arrays of any batch
        size.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an easyfit export (or one from a newer easyfit).

    Examples:
        >>> serve = load_exported("runs/served")    # doctest: +SKIP
        >>> probabilities = serve(images)           # doctest: +SKIP
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"No export at {str(root)!r} (the path does not exist). Pass "
                                "the directory that model.export(path, ...) wrote.")
    config_file = root / EXPORT_FILE
    if not config_file.is_file():
        raise ValueError(f"{str(root)!r} is not an easyfit export (it has no {EXPORT_FILE}); "
                         "write one with model.export(path, sample_input=...).")
    config = json.loads(config_file.read_text())
    if config.get("format") != EXPORT_FORMAT or config.get("version", 0) > EXPORT_VERSION:
        raise ValueError(f"{config_file} is format {config.get('format')!r} version "
                         f"{config.get('version')}; this easyfit reads {EXPORT_FORMAT!r} up "
                         f"to version {EXPORT_VERSION}. Upgrade easyfit to load it.")
    exported = jax.export.deserialize(bytearray((root / FUNCTION_FILE).read_bytes()))
    with np.load(root / WEIGHTS_FILE) as stored:  # RNG keys are stored as their key data
        weights = [stored[str(i)] for i in range(len(stored.files))]
    return ExportedModel(exported, weights, config)
