"""``model.optimizer``: the compiled optimizer, its learning rate live in the training state."""

from __future__ import annotations

from typing import Any

from easyfit.optimizers import Optimizer

__all__ = ["LiveOptimizer"]


class LiveOptimizer:
    """The compiled [`Optimizer`][easyfit.optimizers.Optimizer], seen through the trainer.

    ``learning_rate`` reads and sets the rate the next update uses, in the live optimizer
    state once ``fit`` has built it (as Keras's ``model.optimizer.learning_rate``); every
    other attribute is the optimizer's own.

    Args:
        optimizer: the optimizer ``compile`` resolved.
        trainer: what holds the live state; it has a ``learning_rate`` property.
    """

    def __init__(self, optimizer: Optimizer, trainer: Any):
        self.optimizer = optimizer
        self.trainer = trainer

    @property
    def learning_rate(self) -> float:
        return self.trainer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        try:  # a Python, numpy or JAX scalar (a schedule may return any of them)
            rate = None if isinstance(value, (bool, str)) else float(value)
        except (TypeError, ValueError):
            rate = None
        if rate is None or not rate >= 0:
            raise (TypeError if rate is None else ValueError)(
                f"optimizer.learning_rate must be a number, 0 or more (e.g. 1e-3); got "
                f"{value!r:.60}.")
        self.trainer.learning_rate = value

    # Keras's EMA attributes: from compile's ema_momentum as from the optimizer's use_ema
    @property
    def use_ema(self) -> bool:
        """Whether training keeps a moving average of the weights (see [`easyfit.ema`][easyfit.ema])."""
        return self.trainer.options.ema is not None

    @property
    def ema_momentum(self) -> float | None:
        """The average's momentum (``None`` without one)."""
        return None if self.trainer.options.ema is None else self.trainer.options.ema.momentum

    @property
    def ema_overwrite_frequency(self) -> int | None:
        """Steps between overwrites of the weights by the average (``None``: at the end of
        ``fit`` only, or no average)."""
        ema = self.trainer.options.ema
        return None if ema is None else ema.overwrite_frequency

    def __getattr__(self, name: str) -> Any:
        if name == "learning_rate":  # the property raised AttributeError: raise it, not the leaf's
            return LiveOptimizer.learning_rate.fget(self)
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return repr(self.optimizer)
