"""Several processes (hosts) training one model: start-up, and the few host-side agreements.

Each process runs the same script. ``initialize`` connects them through
``jax.distributed``; from then on ``jax.devices()`` lists the devices of every process, the
mesh spans them all, and each process feeds its own rows of every global batch.

Examples:
    >>> import easyfit as ef
    >>> ef.distribute.initialize()   # SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS etc.  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

__all__ = ["any_process", "barrier", "fetch", "initialize", "is_chief", "is_initialized"]

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
        "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None, **kwargs: Any) -> None:
    """Connects this process to the others (a wrapper of ``jax.distributed.initialize``).

    Call it once per process, before anything touches a device. Arguments not given are
    read from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` when
    set, else detected by JAX from the cluster (SLURM, Open MPI, Kubernetes / GKE, Cloud TPU).
    Calling it again once connected does nothing.

    Args:
        coordinator_address: ``"host:port"`` of process 0, reachable by every process.
        num_processes: how many processes take part.
        process_id: this process's index, ``0 <= process_id < num_processes``.
        local_device_ids: the local devices this process uses (default: all).
        **kwargs: passed on to ``jax.distributed.initialize``.

    Examples:
        >>> ef.distribute.initialize("10.0.0.1:1234", num_processes=4, process_id=rank)  # doctest: +SKIP
    """
    if is_initialized():
        return
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    for name, variable in _ENV.items():
        if given[name] is None and os.environ.get(variable):
            value = os.environ[variable]
            given[name] = value if name == "coordinator_address" else int(value)
    if given["process_id"] is not None and given["num_processes"] is not None and \
            not 0 <= given["process_id"] < given["num_processes"]:
        raise ValueError(f"process_id={given['process_id']} must be in "
                         f"[0, num_processes={given['num_processes']}).")
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None},
                               local_device_ids=local_device_ids, **kwargs)


def is_initialized() -> bool:
    """Whether ``jax.distributed`` is connected in this process."""
    return jax.distributed.is_initialized()


def is_chief() -> bool:
    """Whether this is process 0, the one that prints progress and writes logs."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """``True`` on every process if ``flag`` is true on any (a no-op with one process)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (a no-op with one
    process): e.g. until process 0 has finished writing files the others will read."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def fetch(tree: Any) -> Any:
    """Global arrays as numpy on every process (gathering rows held by other processes)."""
    if jax.process_count() == 1 or all(leaf.is_fully_addressable or leaf.is_fully_replicated
                                       for leaf in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
