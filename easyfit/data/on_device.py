"""Array datasets held on the devices for a ``fit``: chunks carry row numbers only.

Up to ``DEVICE_DATA_BYTES``, and where it pays (below), the training arrays are copied to
every device once per ``fit``, and each chunk holds int32 row numbers
(`IndexedChunk`). The train step gathers each batch's rows inside its loop, so the
rows are read where a batch is used: no host gather, stack and transfer of the rows per
chunk, and no chunk of rows written to memory and read back (on a 2-core CPU that traffic
cost 5-10% of a 784-512-512-10 MLP's speed).

It pays (`gathers_in_step`) on accelerators always; on a CPU with one step per call
(the host path's hand-over per call costs more than the step), or for rows of at least
``WIDE_ROW_BYTES``. XLA:CPU's gather costs ~0.1 us a row whatever its width, on the
cores that compute, while the host gathers narrow rows cheaply on the other core: in-step,
a 64-64-10 MLP's fused steps (260-byte rows) ran about 20% slower.

The train step takes the arrays as inputs, so it compiles per shape of them: their rows
are rounded up (`table_rows`, at most 1/8 more), so that datasets of nearby sizes
(cross-validation folds, a few rows more or less) share one program.

Examples:
    >>> rows = device_rows(adapter, distribution, one_step=False)   # doctest: +SKIP
    >>> state, logs = steps.train(state, rows(chunk_of_row_numbers))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

from easyfit.data.adapters import DataAdapter
from easyfit.data.batch import Batch, aligned_empty

__all__ = ["DEVICE_DATA_BYTES", "DeviceRows", "IndexedChunk", "WIDE_ROW_BYTES", "as_fed",
           "batches_of", "device_rows", "gather_rows", "gathers_in_step", "table_rows",
           "table_shapes"]

# MNIST as float32 (188 MB) fits; on a GPU that is a few percent of its memory.
DEVICE_DATA_BYTES = 256 * 2**20
# Measured on a 2-core CPU at two widths: 260-byte rows ran slower gathered in the step,
# 3,140-byte rows (784 features) faster.
WIDE_ROW_BYTES = 1024


class IndexedChunk(NamedTuple):
    """A chunk whose ``x`` and ``y`` are row numbers into ``tables``, the whole training
    arrays on the devices; the train step gathers each batch's rows as it runs it.

    Attributes:
        rows: the chunk, with int32 row numbers of shape ``(k, batch)`` as ``x`` and ``y``.
        tables: ``(x, y)``, replicated on every device.
    """

    rows: Batch
    tables: tuple[Any, Any]

    @property
    def mask(self) -> Any:
        return self.rows.mask


def batches_of(chunk: Batch | IndexedChunk) -> Batch:
    """The part of a chunk that has one entry per batch (its ``rows``, if indexed)."""
    return chunk.rows if isinstance(chunk, IndexedChunk) else chunk


def gather_rows(tables: tuple[Any, Any], batch: Batch) -> Batch:
    """A batch (or chunk) of row numbers made one of rows, from ``tables = (x, y)``."""
    take = lambda table, rows: jax.tree.map(lambda t: t[rows], table)
    return batch._replace(x=take(tables[0], batch.x), y=take(tables[1], batch.y))


def table_rows(n: int) -> int:
    """Rows of the device copy of an ``n``-row array: ``n`` rounded up to its 4 leading
    binary digits (at most 1/8 more; the extra rows are zeros, never read).

    Examples:
        >>> table_rows(250), table_rows(290), table_rows(300), table_rows(60000)
        (256, 320, 320, 61440)
    """
    unit = 2 ** max(n.bit_length() - 4, 0)
    return -(-n // unit) * unit


def _held_shape(array: Any) -> jax.ShapeDtypeStruct:
    """The shape and dtype of the device copy of ``array``: `table_rows` rows, the
    dtype the device holds (int64 -> int32 unless x64 is on)."""
    return jax.ShapeDtypeStruct((table_rows(len(array)), *array.shape[1:]),
                                jax.dtypes.canonicalize_dtype(array.dtype))


def _padded(array: np.ndarray) -> np.ndarray:
    """``array`` as `_held_shape` says, in an aligned array (placed on a CPU device
    without another copy)."""
    held = _held_shape(array)
    out = aligned_empty(held.shape, np.dtype(held.dtype))
    out[:len(array)] = array
    out[len(array):] = 0
    return out


class DeviceRows:
    """The training arrays on the devices, to pair chunks of row numbers with."""

    def __init__(self, tables: Any, distribution: Any):
        self.tables = distribution.replicate(jax.tree.map(_padded, tables))

    def __call__(self, chunk: Batch) -> IndexedChunk:
        """``chunk``, a chunk of row numbers on the host, paired with the rows. It stays on
        the host: the train step's call places it (``FlatStateJit``)."""
        return IndexedChunk(chunk, self.tables)


def gathers_in_step(tables: Any, one_step: bool, platform: str) -> bool:
    """Whether ``fit`` holds ``tables`` (``(x, y)``, arrays or shapes) on devices of
    ``platform`` (``"cpu"``, ``"gpu"``, ...) and gathers from them in the train step;
    ``one_step``: one step per call for the whole fit (see the module's docstring)."""
    row_bytes = sum(math.prod(a.shape[1:]) * np.dtype(a.dtype).itemsize
                    for a in jax.tree.leaves(tables))
    return one_step or platform != "cpu" or row_bytes >= WIDE_ROW_BYTES


def _held(data: DataAdapter, distribution: Any, one_step: bool) -> Any:
    tables = data.device_tables(DEVICE_DATA_BYTES)
    platform = distribution.mesh.devices.flat[0].platform
    return tables if tables is not None and gathers_in_step(tables, one_step, platform) \
        else None


def device_rows(data: DataAdapter, distribution: Any, one_step: bool) -> DeviceRows | None:
    """A `DeviceRows` for ``data`` if it is arrays that ``fit`` holds on the devices
    (`gathers_in_step`), else ``None``."""
    tables = _held(data, distribution, one_step)
    return None if tables is None else DeviceRows(tables, distribution)


def table_shapes(data: DataAdapter, distribution: Any, one_step: bool) -> Any:
    """The shapes (``jax.ShapeDtypeStruct``) of what `device_rows` would place for
    ``data``, or ``None`` if it would place nothing; nothing is copied."""
    tables = _held(data, distribution, one_step)
    if tables is None:
        return None
    replicated = distribution.replicated_sharding()
    return jax.tree.map(lambda a: _held_shape(a).update(sharding=replicated), tables)


def as_fed(batch: Batch, tables: Any) -> Batch | IndexedChunk:
    """``batch`` (one batch, arrays or shapes) as ``fit`` feeds it to the train step: with
    ``tables`` (`table_shapes`), an `IndexedChunk` of int32 row numbers shaped
    like it; else ``batch`` itself."""
    if tables is None:
        return batch
    index = np.zeros(batch.mask.shape, np.int32)
    return IndexedChunk(batch._replace(x=index, y=index), tables)
