"""Small array datasets held on the devices for a ``fit``: chunks carry row numbers only.

Up to ``DEVICE_DATA_BYTES``, and when each chunk is one batch (where a transfer per chunk
costs most), the training arrays are copied to every device once per ``fit``; each chunk
then holds int32 row numbers, and a small jitted gather makes the rows on the device: no
host gather, stack and transfer of the rows per chunk. The train step is
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
    """The training arrays on the devices, and the jitted gather of a chunk's rows.

    A chunk of row numbers goes into the gather as numpy: the jitted call places it (split
    over the batch axis) on its fast path, several times cheaper per chunk than a
    ``device_put`` first, which is what one step per dispatch pays for every batch.
    """

    def __init__(self, tables: Any, distribution: Any):
        self.tables = distribution.replicate(tables)
        placed = jax.tree.map(lambda table: table.sharding, self.tables)
        chunks = distribution.chunk_sharding()
        self.gather = jax.jit(gather_rows, in_shardings=(placed, chunks), out_shardings=chunks)

    def __call__(self, chunk: Batch) -> Batch:
        """The rows of ``chunk``, a chunk of row numbers on the host, on the devices."""
        return self.gather(self.tables, chunk)


def device_rows(data: DataAdapter, distribution: Any) -> DeviceRows | None:
    """A :class:`DeviceRows` for ``data`` if it is arrays small enough, else ``None``."""
    tables = data.device_tables(DEVICE_DATA_BYTES)
    return None if tables is None else DeviceRows(tables, distribution)
