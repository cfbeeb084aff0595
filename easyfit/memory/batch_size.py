"""The largest batch size that fits a per-device memory budget, found by compiling.

Each candidate batch size is measured by
[`easyfit.memory.estimate.measure`][easyfit.memory.estimate.measure] (one
compile of the train step, nothing runs), never by running it into an out-of-memory error.

Examples:
    >>> model.find_batch_size(x_train[:2], y_train[:2])   # doctest: +SKIP
    4096
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax

from easyfit.memory import estimate as estimate_lib
from easyfit.memory.estimate import MemoryEstimate, measure
from easyfit.memory.subject import measured
from easyfit.summary import human_bytes

if TYPE_CHECKING:
    from easyfit.model import Model

__all__ = ["find_batch_size"]


def find_batch_size(model: "Model", x: Any = None, y: Any = None,
                    budget_bytes: int | None = None, max_batch_size: int = 65536) -> int:
    """The largest batch size whose estimated memory fits ``budget_bytes`` per device.

    Searches over multiples of the number of data-parallel devices: doubling until an
    estimate exceeds the budget, then bisecting between the last fit and the first miss.
    Each candidate costs one compile of the train step (no run, no out-of-memory trial);
    a search up to 65536 takes some 20 compiles. The result ``b`` fits and ``2 * b`` does
    not (checked), unless ``b`` is ``max_batch_size``.

    A batch size fits when its ``MemoryEstimate.total_bytes`` (the train step's peak,
    the module's variables and the prefetched inputs) is at most the budget. Not counted:
    the evaluation step, arrays of your own on the device, the allocator's fragmentation;
    pass a ``budget_bytes`` somewhat below the capacity to leave room for them.

    Args:
        model: a compiled ``ef.Model``.
        x: a few input rows, needed before the model has seen data.
        y: matching targets.
        budget_bytes: per-device budget; default: the device's capacity (required where
            the backend does not report one, e.g. CPU).
        max_batch_size: the largest batch size to consider.

    Returns:
        The batch size, a multiple of the number of data-parallel devices.

    Raises:
        ValueError: no budget and no known capacity, or not even the smallest batch fits.

    Examples:
        >>> model.find_batch_size(x_train[:2], y_train[:2], budget_bytes=2**33)  # doctest: +SKIP
        2048
    """
    replicas = model.trainer.distribution.num_replicas
    top = int(max_batch_size) // replicas  # in units of `replicas` rows
    if top < 1:
        raise ValueError(f"max_batch_size={max_batch_size} is below the {replicas} "
                         "data-parallel devices: one row per device is the smallest batch.")
    if budget_bytes is None:
        budget_bytes = estimate_lib.device_capacity(model)
        if budget_bytes is None:
            raise ValueError(f"The {jax.default_backend()} backend does not report how much "
                             "memory a device has: pass budget_bytes=, e.g. "
                             "model.find_batch_size(x[:2], y[:2], budget_bytes=4 * 2**30).")
    budget_bytes = int(budget_bytes)
    with measured(model, x, y) as subject:
        capacity = estimate_lib.device_capacity(model)
        found: dict[int, MemoryEstimate] = {}

        def fits(units: int) -> bool:
            if units not in found:
                found[units] = measure(model, subject, units * replicas, capacity)
            return found[units].total_bytes <= budget_bytes

        if not fits(1):
            raise ValueError(
                f"Even a batch of {replicas} ({'one row per device' if replicas > 1 else 'one row'}"
                f") needs {human_bytes(found[1].total_bytes)} per device, over the budget of "
                f"{human_bytes(budget_bytes)}. Shard the parameters and optimizer state "
                "(ef.distribute.FSDP), use a smaller model, or raise the budget.\n"
                + str(found[1]))
        low, high = 1, None  # in units of `replicas` rows: low fits; high (if set) does not
        while True:
            while high is None and low < top:  # double until a miss (or the maximum)
                candidate = min(2 * low, top)
                low, high = (candidate, None) if fits(candidate) else (low, candidate)
            while high is not None and high - low > 1:  # bisect between a fit and a miss
                middle = (low + high) // 2
                low, high = (middle, high) if fits(middle) else (low, middle)
            # Estimates need not grow smoothly with the batch (XLA picks layouts per shape):
            # make sure twice the answer does not fit, else search on from there.
            if 2 * low > top or not fits(2 * low):
                return low * replicas
            low, high = 2 * low, None
