"""The learning rate held in the optimizer state, where callbacks read and set it.

[`scale_by_learning_rate`][easyfit.lr_state.scale_by_learning_rate] is the last link of every
``ef.optimizers`` chain; its state,
[`LearningRateState`][easyfit.lr_state.LearningRateState], holds the schedule's position and a
factor, so the rate can be
read and changed between steps without a recompile.

Examples:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_learning_rate(None, initial=0.5)
    >>> float(scheduled_rate(None, tx.init({"w": jnp.zeros(2)})))
    0.5
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["LearningRateState", "scale_by_learning_rate", "scheduled_rate"]


class LearningRateState(NamedTuple):
    """State of [`scale_by_learning_rate`][easyfit.lr_state.scale_by_learning_rate]: ``lr = schedule(count) * scale``."""

    count: jax.Array
    scale: jax.Array


def scale_by_learning_rate(schedule: optax.Schedule | None,
                           initial: float = 1.0) -> optax.GradientTransformation:
    """Multiplies updates by a learning rate held in the state.

    With ``schedule=None`` the learning rate is ``scale`` itself (starts at ``initial``);
    with a schedule it is ``schedule(count) * scale`` so a callback can rescale the rest
    of the schedule. Updates are not negated: put it after a rule that already descends.

    Args:
        schedule: ``step -> lr`` or ``None`` for a constant rate.
        initial: the starting ``scale``.
    """

    def init(params):
        del params
        return LearningRateState(count=jnp.zeros([], jnp.int32),
                                 scale=jnp.asarray(initial, jnp.float32))

    def update(updates, state, params=None):
        del params
        lr = scheduled_rate(schedule, state)
        updates = jax.tree.map(lambda u: (u * lr).astype(u.dtype), updates)
        return updates, LearningRateState(optax.safe_increment(state.count), state.scale)

    return optax.GradientTransformation(init, update)


def scheduled_rate(schedule: optax.Schedule | None, state: LearningRateState) -> jax.Array:
    """The rate of the next update: ``schedule(count) * scale`` (``scale`` alone without
    a schedule)."""
    if schedule is None:
        return state.scale
    return jnp.asarray(schedule(state.count), jnp.float32) * state.scale
