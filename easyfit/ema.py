"""Exponential moving average (EMA) of the weights, kept in the optimizer state.

Keras's ``use_ema``: after every training step the optimizer updates an average of the
weights, ``average = momentum * average + (1 - momentum) * weights``. As in Keras the first
step copies the weights (its momentum is 0) and there is no bias correction. The average
lives in the optax state ([`EmaState`][easyfit.ema.EmaState], made by
[`weight_ema`][easyfit.ema.weight_ema]), so the jitted,
donated train step updates it on the device, and checkpoints and exact resume
(``BackupAndRestore``) hold it with the rest of the optimizer state.

Turn it on with ``ef.optimizers.sgd(..., use_ema=True, ema_momentum=0.99)`` (any
``ef.optimizers`` function) or ``model.compile(..., ema_momentum=0.999)`` (any optimizer,
an optax one included). At the end of ``fit`` the weights are overwritten by their average
(Keras's ``finalize_variable_values``); ``ef.callbacks.SwapEMAWeights`` evaluates (and
checkpoints) with the average during training.

Examples:
    >>> import optax, jax.numpy as jnp
    >>> tx = weight_ema(optax.sgd(1.0), momentum=0.5)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...     updates, state = tx.update({"w": -jnp.ones(2)}, state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> params["w"], find(state).average["w"]      # weights 1 then 2: 1, then 0.5 * 1 + 0.5 * 2
    (Array([2., 2.], dtype=float32), Array([1.5, 1.5], dtype=float32))
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["EMA", "EmaState", "find", "weight_ema", "with_average"]


@dataclasses.dataclass(frozen=True)
class EMA:
    """How the weights are averaged (Keras's ``ema_momentum``, ``ema_overwrite_frequency``).

    Attributes:
        momentum: ``average = momentum * average + (1 - momentum) * weights``, in ``[0, 1]``.
        overwrite_frequency: every this many steps the weights are overwritten by their
            average during training; ``None``: only at the end of ``fit``.
    """

    momentum: float = 0.99
    overwrite_frequency: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"`ema_momentum` must be in the range [0, 1]. "
                             f"Received: ema_momentum={self.momentum}")
        frequency = self.overwrite_frequency
        if frequency is not None and (isinstance(frequency, bool)
                                      or not isinstance(frequency, int) or frequency < 1):
            raise ValueError(f"`ema_overwrite_frequency` must be an integer >= 1 or None. "
                             f"Received: ema_overwrite_frequency={frequency}")

    @classmethod
    def from_keras(cls, use_ema: bool, ema_momentum: float = 0.99,
                   ema_overwrite_frequency: int | None = None) -> "EMA | None":
        """Keras's three optimizer arguments as one setting (``None`` without ``use_ema``)."""
        return cls(ema_momentum, ema_overwrite_frequency) if use_ema else None


class EmaState(NamedTuple):
    """State of [`weight_ema`][easyfit.ema.weight_ema].

    Attributes:
        count: steps taken (Keras's ``optimizer.iterations``); the first step copies.
        average: the moving average, a tree like the params (zeros before the first step).
        swapped: 1 while the weights and the average are exchanged (``SwapEMAWeights``:
            the weights hold the average, ``average`` the training weights), else 0.
        inner: the averaged optimizer's own state.
    """

    count: jax.Array
    average: Any
    swapped: jax.Array
    inner: Any


def weight_ema(inner: optax.GradientTransformation, momentum: float = 0.99,
               overwrite_frequency: int | None = None) -> optax.GradientTransformation:
    """Wraps ``inner`` so that its state also holds a moving average of the updated weights.

    Each update computes the weights ``inner``'s updates lead to and folds them into the
    average, as Keras (``momentum`` is 0 on the first step, so the average starts from the
    weights after it). With ``overwrite_frequency``, every that many steps the updates lead
    to the average instead (up to float rounding: ``params + (average - params)``).

    Args:
        inner: the optimizer whose weights are averaged; ``update`` needs ``params``.
        momentum: the weight of the old average.
        overwrite_frequency: steps between overwrites of the weights by the average.

    Returns:
        An optax transformation whose state is [`EmaState`][easyfit.ema.EmaState].
    """
    EMA(momentum, overwrite_frequency)  # validates

    def init(params: Any) -> EmaState:
        return EmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params),
                        jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates: Any, state: EmaState, params: Any = None) -> tuple[Any, EmaState]:
        if params is None:
            raise ValueError("weight_ema needs the params in update(updates, state, params).")
        updates, new_inner = inner.update(updates, state.inner, params)
        new_params = optax.apply_updates(params, updates)
        rate = jnp.where(state.count == 0, 0.0, momentum).astype(jnp.float32)
        average = jax.tree.map(
            lambda avg, p: (rate.astype(avg.dtype) * avg
                            + (1 - rate).astype(avg.dtype) * p).astype(avg.dtype),
            state.average, new_params)
        if overwrite_frequency:
            overwrite = (state.count + 1) % overwrite_frequency == 0
            updates = jax.tree.map(
                lambda u, avg, p: jnp.where(overwrite, (avg - p).astype(u.dtype), u),
                updates, average, params)
        return updates, EmaState(optax.safe_increment(state.count), average, state.swapped,
                                 new_inner)

    return optax.GradientTransformation(init, update)


def _is_ema(node: Any) -> bool:
    return isinstance(node, EmaState)


def find(opt_state: Any) -> EmaState | None:
    """The [`EmaState`][easyfit.ema.EmaState] inside an optimizer state, or ``None`` (no EMA)."""
    for node in jax.tree.leaves(opt_state, is_leaf=_is_ema):
        if isinstance(node, EmaState):
            return node
    return None


def with_average(opt_state: Any, average: Any, swapped: jax.Array) -> Any:
    """``opt_state`` with the moving average replaced by ``average`` (a tree like it) and
    the ``swapped`` flag by ``swapped``."""
    return jax.tree.map(
        lambda node: node._replace(average=average, swapped=swapped) if _is_ema(node) else node,
        opt_state, is_leaf=_is_ema)
