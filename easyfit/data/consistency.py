"""Batches of a stream that keep the first batch's shapes: a batch that changes them is
refused with an error naming it, the part and both shapes.

A generator, a tf.data pipeline or a grain loader may yield anything; the step is compiled
for the first batch's shapes and dtypes. A later batch that differs (more features, another
sequence length, a new dict key, labels turned float) would otherwise fail in numpy's
stacking or compile the step again. Only the number of rows may shrink (the last batch is
padded up).

Examples:
    >>> spec = StreamSpec((np.zeros((4, 3)), np.zeros(4), None))
    >>> spec.check((np.zeros((4, 2)), np.zeros(4), None), 2, 0, 4)  # doctest: +SKIP
    ValueError: Batch 2 (counting from 0) of epoch 1 changed shape: `x` has shape (4, 2) ...
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["StreamSpec"]

_PARTS = ("x", "y", "sample_weight")


def _canonical(dtype: Any) -> np.dtype:
    """The dtype an array of ``dtype`` gets on the devices (float64 -> float32 without x64)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _spec(array: np.ndarray) -> str:
    return f"{tuple(array.shape)} {array.dtype}"


def _structure(tree: Any) -> str:
    if isinstance(tree, dict):
        return f"a dict with keys {sorted(tree, key=str)}"
    if isinstance(tree, (tuple, list)):
        return f"a {type(tree).__name__} of {len(tree)}"
    return "an array"


class StreamSpec:
    """The first batch's structure, shapes after the batch axis and dtypes, to check the
    batches after it against.

    Args:
        first: the first batch as ``(x, y, sample_weight)`` numpy trees (``y`` and
            ``sample_weight`` may be ``None``).
        role: the argument the input came from (``"x"``, ``"validation_data"``).
    """

    def __init__(self, first: tuple[Any, Any, Any], role: str = "x"):
        self.first, self.role = first, role
        leaves, self.treedef = jax.tree.flatten(first)
        self.specs = [(leaf.shape[1:], leaf.dtype) for leaf in leaves]

    def check(self, parts: tuple[Any, Any, Any], batch: int, epoch: int,
              batch_size: int) -> None:
        """Refuses ``parts`` (one batch, as ``first``) unless it matches the first batch.

        Args:
            parts: the batch's ``(x, y, sample_weight)``.
            batch: its number in the epoch, from 0.
            epoch: the epoch, from 0.
            batch_size: the first batch's rows, which no batch may exceed.

        Raises:
            ValueError: naming the batch, the part (and its key) and both shapes and dtypes.
        """
        leaves, treedef = jax.tree.flatten(parts)
        rows = leaves[0].shape[0] if leaves else 0
        if rows > batch_size:
            raise ValueError(f"{self._where(batch, epoch)} has {rows} rows, more than the "
                             f"first batch's {batch_size}. Yield batches of at most the first "
                             "size (only the last may be smaller).")
        if treedef == self.treedef:
            if all(leaf.shape[1:] == shape and leaf.shape[0] == rows and (
                    leaf.dtype == dtype or _canonical(leaf.dtype) == _canonical(dtype))
                   for leaf, (shape, dtype) in zip(leaves, self.specs)):
                return
        raise ValueError(self._explain(parts, batch, epoch))

    def _where(self, batch: int, epoch: int) -> str:
        return (f"Batch {batch} (counting from 0) of epoch {epoch + 1}" if self.role == "x"
                else f"Batch {batch} (counting from 0) of `{self.role}`")

    def _explain(self, parts: tuple[Any, Any, Any], batch: int, epoch: int) -> str:
        where = self._where(batch, epoch)
        rule = ("Every batch must have the structure, shapes and dtypes of the first: the "
                "step is compiled for them, and only the last batch may have fewer rows.")
        for name, now, first in zip(_PARTS, parts, self.first):
            if (now is None) != (first is None):
                had = "has no" if now is None else "has a"
                was = "had one" if now is None else "had none"
                return (f"{where} {had} `{name}` where the first batch {was}. Yield the same "
                        f"parts in every batch: (x, y) or (x, y, sample_weight). {rule}")
            if jax.tree.structure(now) != jax.tree.structure(first):
                return (f"{where} changed structure: `{name}` is {_structure(now)} where the "
                        f"first batch's was {_structure(first)}. {rule}")
        rows = jax.tree.leaves(parts)[0].shape[0]  # x's rows (x comes first)
        for name, now, first in zip(_PARTS, parts, self.first):
            pairs = zip(jax.tree_util.tree_leaves_with_path(now), jax.tree.leaves(first))
            for (path, leaf), before in pairs:
                label = f"{name}{jax.tree_util.keystr(path)}"
                if leaf.shape[0] != rows:
                    return (f"{where} has {rows} rows in x but {leaf.shape[0]} in `{label}`: "
                            "every part of a batch needs one row per example.")
                if leaf.shape[1:] != before.shape[1:]:
                    return (f"{where} changed shape: `{label}` has shape {_spec(leaf)} where "
                            f"the first batch's was {_spec(before)}. {rule} Pad or crop to one "
                            "size (e.g. tf.data's padded_batch(..., padded_shapes=...) with a "
                            "fixed length), or resize in the pipeline.")
                if _canonical(leaf.dtype) != _canonical(before.dtype):
                    return (f"{where} changed dtype: `{label}` is {_spec(leaf)} where the first "
                            f"batch's was {_spec(before)}. {rule} Cast in the pipeline, e.g. "
                            f"to {before.dtype}.")
        return f"{where} does not match the first batch. {rule}"  # not reached
