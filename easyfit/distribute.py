"""Where arrays live: a mesh over all devices, the batch axis sharded on ``"data"``.

Sharding is a property of arrays, not of code: the same jitted step runs on one CPU or many
devices; only the placement of the state (replicated) and of each chunk (batch axis split
over ``"data"``) changes. Nothing here touches a device until a model first needs one.

Example:
    >>> dist = DataParallel()       # doctest: +SKIP
    >>> dist.mesh.shape             # doctest: +SKIP
    {'data': 8}
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


class DataParallel:
    """Parameters replicated on every device, each batch split over all of them.

    Args:
        devices: the devices to use (default: all devices of all processes).
    """

    def __init__(self, devices: list | None = None):
        self._devices = devices
        self._mesh: Mesh | None = None

    @property
    def mesh(self) -> Mesh:
        if self._mesh is None:
            devices = np.asarray(self._devices or jax.devices())
            self._mesh = Mesh(devices.reshape(-1), ("data",), axis_types=(AxisType.Auto,))
        return self._mesh

    @property
    def num_replicas(self) -> int:
        return self.mesh.shape["data"]

    def check_batch_size(self, batch_size: int) -> None:
        """Refuses a batch that does not split evenly over the ``"data"`` axis."""
        n = self.num_replicas
        if batch_size % n:
            raise ValueError(f"batch_size={batch_size} does not split over {n} devices; use a "
                             f"multiple of {n} (e.g. {max(n, batch_size // n * n)} or "
                             f"{(batch_size // n + 1) * n}).")

    def replicate(self, tree: Any) -> Any:
        """Places a pytree whole on every device."""
        return jax.device_put(tree, NamedSharding(self.mesh, P()))

    def place_chunk(self, chunk: Any) -> Any:
        """Places a chunk of stacked batches with the batch axis (axis 1) split over devices."""
        return jax.device_put(chunk, NamedSharding(self.mesh, P(None, "data")))
