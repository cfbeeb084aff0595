"""Host batches of fixed shape: real rows, then padding rows that carry zero weight."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

__all__ = ["Batch", "aligned_empty", "check_sample_weight", "count_rows", "make_batch", "pad_rows",
           "sample_weights", "scale_rows", "stack", "take_rows"]


# XLA:CPU uses a numpy array in place when its data starts on this boundary: placing a chunk
# on a CPU device is then free instead of a copy (~0.4 ms for 3 MiB on a 2-core machine).
_ALIGN = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose data starts on an ``_ALIGN``-byte boundary."""
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start:start + size].view(dtype).reshape(shape)


def take_rows(array: Any, index: np.ndarray) -> np.ndarray:
    """``np.take(array, index, axis=0)``, made in an aligned array (see ``_ALIGN``)."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        return np.take(array, index, axis=0)
    out = aligned_empty((len(index), *array.shape[1:]), array.dtype)
    return np.take(array, index, axis=0, out=out, mode="clip")  # "raise" would copy twice


def _stack(leaves: Sequence[Any]) -> np.ndarray:
    """``np.stack(leaves)``, made in an aligned array (see ``_ALIGN``)."""
    first = np.asarray(leaves[0])
    if first.dtype.hasobject:
        return np.stack(leaves)
    out = aligned_empty((len(leaves), *first.shape), np.result_type(*leaves))
    return np.stack(leaves, out=out)


class Batch(NamedTuple):
    """One batch (or a chunk of ``k`` stacked batches) as numpy pytrees.

    Attributes:
        x: model input (an array or a pytree of arrays, e.g. a dict for several inputs).
        y: targets, or ``None`` when predicting.
        weight: loss weight per row, or per token (``(rows, T)``, a padding mask): sample
            weight x class weight, 0 on padding rows.
        mask: 1.0 on real rows, 0.0 on padding rows.
    """

    x: Any
    y: Any
    weight: np.ndarray
    mask: np.ndarray


def pad_rows(tree: Any, size: int, batch_size: int) -> Any:
    """Pads every leaf from ``size`` to ``batch_size`` rows by repeating real rows.

    Repeating real rows (not zeros) keeps padded rows in the range of the data, so
    nothing downstream sees values it never sees otherwise; their weight is 0.
    """
    if size == batch_size:
        return tree
    index = np.arange(batch_size) % size
    return jax.tree.map(lambda a: take_rows(a, index), tree)


def sample_weights(weight: Any) -> np.ndarray:
    """Sample weights as float32, per example ``(rows,)`` or per token ``(rows, T, ...)``;
    trailing axes of size 1 are dropped (Keras takes ``(rows, 1)`` too).

    Examples:
        >>> sample_weights([[1], [0]]).shape
        (2,)
    """
    if isinstance(weight, dict):
        raise ValueError(f"sample_weight is a dict (keys {sorted(weight, key=str)}): sample "
                         "weights per output are not supported. Pass one weight per example "
                         "(it weights every output's loss).")
    weight = np.asarray(weight, np.float32)
    while weight.ndim > 1 and weight.shape[-1] == 1:
        weight = weight[..., 0]
    return weight


def check_sample_weight(weight: np.ndarray, rows: int, y: Any) -> None:
    """Refuses sample weights that are neither per example nor per token of ``y``."""
    if weight.shape[0] != rows:
        raise ValueError(f"sample_weight has {weight.shape[0]} rows but x has {rows}; pass one "
                         "weight per example (or one per token: shape (rows, time)).")
    labels = jax.tree.leaves(y)
    if weight.ndim > 1 and len(labels) == 1 and \
            labels[0].shape[1:weight.ndim] != weight.shape[1:]:
        raise ValueError(
            f"sample_weight has shape {weight.shape}, y has shape {labels[0].shape}: pass one "
            f"weight per example, shape ({rows},), or one per token of y, shape "
            f"{labels[0].shape[:2]} (0 on padding tokens).")


def scale_rows(per_row: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``weight`` (per row or per token) times one factor per row (``per_row``'s shape is
    ``weight``'s leading axes).

    Examples:
        >>> scale_rows(np.array([1.0, 0.0]), np.ones((2, 3))).tolist()
        [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    return per_row.reshape(per_row.shape + (1,) * (weight.ndim - per_row.ndim)) * weight


def make_batch(x: Any, y: Any, sample_weight: np.ndarray | None, size: int,
               batch_size: int) -> Batch:
    """Builds a padded [`Batch`][easyfit.data.batch.Batch] from ``size`` real rows."""
    mask = np.zeros(batch_size, np.float32)
    mask[:size] = 1.0
    weight = mask.copy()
    if sample_weight is not None:
        weight = scale_rows(mask, pad_rows(sample_weights(sample_weight), size, batch_size))
    return Batch(pad_rows(x, size, batch_size), pad_rows(y, size, batch_size), weight, mask)


def stack(batches: Sequence[Batch], length: int) -> Batch:
    """Stacks batches into a chunk of ``length``, filling up with fully masked batches.

    The filler batches copy the last batch's data with zero weight and mask; the step skips
    them, so a short last chunk does not change the shapes (and never recompiles).
    """
    batches = list(batches)
    filler = batches[-1]._replace(weight=np.zeros_like(batches[-1].weight),
                                  mask=np.zeros_like(batches[-1].mask))
    batches += [filler] * (length - len(batches))
    return jax.tree.map(lambda *leaves: _stack(leaves), *batches)


def count_rows(tree: Any, name: str = "x") -> int:
    """The rows of ``tree``'s arrays (the first one's first axis); a clear error for a
    single value (a 0-d array), named as ``name`` and its key.

    Examples:
        >>> count_rows({"a": np.zeros((3, 2))})
        3
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if not leaves:
        raise ValueError("The input holds no arrays.")
    for path, leaf in leaves:
        if leaf.ndim == 0:
            raise ValueError(f"{name}{jax.tree_util.keystr(path)} is a single value (a 0-d "
                             "array): every array needs the batch on its first axis, one "
                             "value (or row) per example.")
    return leaves[0][1].shape[0]
