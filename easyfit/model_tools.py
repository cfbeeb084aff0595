"""The tools a ``Model`` offers beside Keras's API: the learning-rate finder, the memory
estimate, the batch-size finder and the summary table (a mixin of [`easyfit.Model`][easyfit.Model])."""

from __future__ import annotations

from typing import Any

from easyfit import memory as memory_lib
from easyfit.summary import summarize_placed
from easyfit.tune import lr_finder

__all__ = ["ModelTools"]


class ModelTools:
    """Methods of [`easyfit.Model`][easyfit.Model] that choose settings or describe the model; they use
    the model's public surface (``trainer``, ``module``, ``distribution``)."""

    # -- choosing the learning rate ------------------------------------------------------------
    def find_lr(self, x: Any, y: Any = None, min_lr: float = 1e-7, max_lr: float = 1.0,
                steps: int = 100, batch_size: int | None = None,
                **options: Any) -> "lr_finder.LRFinderResult":
        """The learning-rate range test (see `easyfit.tune.lr_finder.find_lr`): trains a
        copy of the state for ``steps`` batches while the rate grows from ``min_lr`` to
        ``max_lr``; the model's weights and optimizer are left as they were.

        Examples:
            >>> result = model.find_lr(x_train, y_train)   # doctest: +SKIP
            >>> result.suggestion, result.plot("lr.png")   # doctest: +SKIP
        """
        return lr_finder.find_lr(self, x, y, min_lr=min_lr, max_lr=max_lr, steps=steps,
                                 batch_size=batch_size, **options)

    # -- memory -------------------------------------------------------------------------------
    def estimate_memory(self, batch_size: int, x: Any = None, y: Any = None
                        ) -> "memory_lib.MemoryEstimate":
        """Per-device memory of training at ``batch_size``, from the compiled train step.

        Args:
            batch_size: the global batch size to estimate for.
            x: a few input rows (needed only before the model has seen data).
            y: matching targets.

        Examples:
            >>> print(model.estimate_memory(256, x_train[:2], y_train[:2]))  # doctest: +SKIP
        """
        return memory_lib.estimate_memory(self, batch_size, x, y)

    def find_batch_size(self, x: Any = None, y: Any = None, budget_bytes: int | None = None,
                        max_batch_size: int = 65536) -> int:
        """The largest batch size whose compiled train step fits ``budget_bytes`` per device
        (default: the device's capacity), found from compiled estimates, with no trial runs.

        Examples:
            >>> model.find_batch_size(x_train[:2], y_train[:2], budget_bytes=2 * 2**30)  # doctest: +SKIP
            1024
        """
        return memory_lib.find_batch_size(self, x, y, budget_bytes, max_batch_size)

    def summary(self, print_fn=print, batch_size: int | None = None) -> str:
        """Prints (and returns) a table of the module's layers, parameter shapes and sizes;
        on several devices also the mesh and each sharded parameter's partition spec; with
        ``batch_size``, the per-device memory estimate of training at that batch size
        ([`estimate_memory`][easyfit.model_tools.ModelTools.estimate_memory]; the model must have seen data)."""
        text = summarize_placed(self.module, self.distribution, self.trainer.params_sharding)
        if batch_size is not None:
            text += "\n" + str(self.estimate_memory(batch_size))
        if print_fn is not None:
            print_fn(text)
        return text
