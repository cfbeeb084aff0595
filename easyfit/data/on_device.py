"""Small array datasets held on the devices for a ``fit``: chunks carry row numbers only.

Up to ``DEVICE_DATA_BYTES``, the training arrays are copied to every device once per
``fit``; each chunk then holds int32 row numbers, and a small jitted gather makes the rows
on the device: no host gather, stack and transfer of the rows per chunk. The train step is
unchanged (it receives the same chunks as from the host path), so it never depends on the
dataset's size; only the gather compiles once per dataset size.

Example:
    >>> rows = device_rows(adapter, distribution)   # doctest: +SKIP
    >>> chunk = rows(index_chunk)                   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import jax

from easyfit.data.adapters import DataAdapter
from easyfit.data.batch import Batch, gather_rows

DEVICE_DATA_BYTES = 32 * 2**20


class DeviceRows:
    """The training arrays on the devices, and the jitted gather of a chunk's rows."""

    def __init__(self, tables: Any, distribution: Any):
        self.tables = distribution.replicate(tables)
        self.gather = jax.jit(gather_rows, out_shardings=distribution.chunk_sharding())

    def __call__(self, chunk: Batch) -> Batch:
        return self.gather(self.tables, chunk)


def device_rows(data: DataAdapter, distribution: Any) -> DeviceRows | None:
    """A :class:`DeviceRows` for ``data`` if it is arrays small enough, else ``None``."""
    tables = data.device_tables(DEVICE_DATA_BYTES)
    return None if tables is None else DeviceRows(tables, distribution)
