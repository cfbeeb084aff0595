"""Memory you can see: per-device estimates of training, from the compiled train step.

An estimate compiles the train step for a batch size, from abstract inputs (shapes, dtypes
and shardings only: no batch is made, nothing runs), and reads XLA's own accounting of the
program, ``compiled.memory_analysis()``. Every figure is **per device**.

- ``estimate_memory`` (``model.estimate_memory``): a ``MemoryEstimate`` for one
  batch size; ``model.summary(batch_size=...)`` prints it under the layer table.
- ``find_batch_size`` (``model.find_batch_size``): the largest batch size whose
  estimate fits a per-device budget, found by compiling candidates, never by running them
  into an out-of-memory error.
- ``check_capacity``: a warning before training when the estimate exceeds the
  device's capacity (called by ``fit``).

The modules: [`easyfit.memory.estimate`][easyfit.memory.estimate] (the estimate, the capacity
check),
[`easyfit.memory.batch_size`][easyfit.memory.batch_size] (the search),
[`easyfit.memory.subject`][easyfit.memory.subject] (the input
shapes and the training state an estimate compiles for) and
[`easyfit.memory.host`][easyfit.memory.host]
(host memory: handing what the compiler freed back to the OS).

Examples:
    >>> model.compile("adamw", "sparse_categorical_crossentropy")    # doctest: +SKIP
    >>> print(model.estimate_memory(256, x_train[:2], y_train[:2]))  # doctest: +SKIP
    >>> model.find_batch_size(x_train[:2], y_train[:2])              # doctest: +SKIP
    4096
"""

from easyfit.memory.batch_size import find_batch_size
from easyfit.memory.estimate import (CHUNKS_AHEAD, MemoryEstimate, MemoryWarning, check_capacity,
                                     device_capacity, estimate_memory)

__all__ = ["CHUNKS_AHEAD", "MemoryEstimate", "MemoryWarning", "check_capacity", "device_capacity",
           "estimate_memory", "find_batch_size"]
