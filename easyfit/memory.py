"""Memory you can see: per-device estimates of training from the compiled train step.

(Being written: ``MemoryEstimate``, ``estimate_memory``, ``find_batch_size``.)
"""

from __future__ import annotations

from typing import Any


class MemoryEstimate:  # placeholder until the implementation lands
    pass


def estimate_memory(model: Any, batch_size: int, x: Any = None, y: Any = None) -> MemoryEstimate:
    raise NotImplementedError


def find_batch_size(model: Any, x: Any = None, y: Any = None, budget_bytes: int | None = None,
                    max_batch_size: int = 65536) -> int:
    raise NotImplementedError
