"""Learning-rate schedules whose lengths may be fractions of training.

A length given as an ``int`` counts optimizer steps; a ``float`` below 1 is a fraction
of the whole run and is resolved by ``Model.fit`` from ``epochs x steps_per_epoch``.
Every schedule here resolves to a plain ``optax`` schedule, so the numbers are optax's.

Examples:
    >>> import easyfit as ef
    >>> sched = ef.schedules.warmup_cosine(peak=1e-3, warmup=0.1)
    >>> fn = sched.resolve(total_steps=100)      # what fit() does for you
    >>> round(float(fn(10)), 6)
    0.001
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import optax

from easyfit.recipes import recorded

__all__ = ["Length", "Schedule", "as_schedule", "constant", "cosine", "exponential", "linear",
           "piecewise", "warmup_cosine"]

Length = int | float
"""Steps (``int``) or a fraction of training (``float`` in ``(0, 1)``)."""


def _steps(length: Length | None, total_steps: int | None, name: str) -> int:
    """Turns a length into a step count, resolving fractions against ``total_steps``."""
    if length is None:
        length = 1.0
    if isinstance(length, float) and length <= 1.0:
        if total_steps is None:
            raise ValueError(
                f"The schedule's `{name}` is a fraction of training ({length}), but the number "
                "of training steps is unknown (an iterable without a length). Pass "
                f"`steps_per_epoch=` to fit, or give `{name}` as a number of steps (int)."
            )
        return max(int(round(length * total_steps)), 0)
    if length < 0:
        raise ValueError(f"The schedule's `{name}` must be >= 0, got {length}.")
    return int(length)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule that may depend on the length of training.

    Attributes:
        build: function ``total_steps -> optax.Schedule``; ``total_steps`` is ``None``
            when the length of training is unknown.
        name: a short description shown in ``repr``.
    """

    build: Callable[[int | None], optax.Schedule]
    name: str

    def resolve(self, total_steps: int | None) -> optax.Schedule:
        """Returns the optax schedule for a run of ``total_steps`` optimizer steps."""
        return self.build(total_steps)

    def __repr__(self) -> str:
        return f"Schedule({self.name})"


def constant(value: float) -> Schedule:
    """A constant learning rate.

    Examples:
        >>> float(constant(0.1).resolve(10)(5))
        0.1
    """
    return Schedule(lambda total: optax.constant_schedule(value), f"constant({value})")


def warmup_cosine(peak: float, warmup: Length = 0.05, end: float = 0.0,
                  init: float = 0.0) -> Schedule:
    """Linear warmup from ``init`` to ``peak``, then cosine decay to ``end`` at the end of training.

    Args:
        peak: the learning rate reached at the end of warmup.
        warmup: warmup length, in steps (int) or as a fraction of training (float).
        end: the learning rate at the last step.
        init: the learning rate at step 0.

    Examples:
        >>> s = warmup_cosine(peak=1.0, warmup=0.5).resolve(total_steps=10)
        >>> float(s(0)), float(s(5)), float(s(10))
        (0.0, 1.0, 0.0)
    """

    def build(total: int | None) -> optax.Schedule:
        warmup_steps = _steps(warmup, total, "warmup")
        decay_steps = _steps(1.0, total, "length of training")
        return optax.warmup_cosine_decay_schedule(
            init_value=init, peak_value=peak, warmup_steps=warmup_steps,
            decay_steps=max(decay_steps, warmup_steps + 1), end_value=end)

    return Schedule(build, f"warmup_cosine(peak={peak}, warmup={warmup}, end={end})")


def cosine(init: float, decay: Length = 1.0, end: float = 0.0) -> Schedule:
    """Cosine decay from ``init`` to ``end`` over ``decay`` (default: all of training).

    Examples:
        >>> s = cosine(1.0).resolve(total_steps=4)
        >>> float(s(0)), float(s(4))
        (1.0, 0.0)
    """

    def build(total: int | None) -> optax.Schedule:
        steps = max(_steps(decay, total, "decay"), 1)
        return optax.cosine_decay_schedule(init, steps, alpha=end / init if init else 0.0)

    return Schedule(build, f"cosine(init={init}, decay={decay}, end={end})")


def linear(init: float, end: float, steps: Length = 1.0, begin: Length = 0) -> Schedule:
    """Linear change from ``init`` to ``end`` over ``steps``, starting at ``begin``.

    Examples:
        >>> float(linear(1.0, 0.0, steps=10).resolve(None)(5))
        0.5
    """

    def build(total: int | None) -> optax.Schedule:
        return optax.linear_schedule(init, end, max(_steps(steps, total, "steps"), 1),
                                     transition_begin=_steps(begin, total, "begin"))

    return Schedule(build, f"linear({init} -> {end}, steps={steps})")


def exponential(init: float, decay_rate: float, decay_steps: Length,
                staircase: bool = False, end: float | None = None) -> Schedule:
    """``init * decay_rate ** (step / decay_steps)``, as Keras's ``ExponentialDecay``.

    Examples:
        >>> float(exponential(1.0, 0.5, decay_steps=10).resolve(None)(10))
        0.5
    """

    def build(total: int | None) -> optax.Schedule:
        return optax.exponential_decay(init, max(_steps(decay_steps, total, "decay_steps"), 1),
                                       decay_rate, staircase=staircase, end_value=end)

    return Schedule(build, f"exponential({init}, rate={decay_rate}, every={decay_steps})")


def piecewise(boundaries: Sequence[Length], values: Sequence[float]) -> Schedule:
    """Keras's ``PiecewiseConstantDecay``: ``values[i]`` until ``boundaries[i]``.

    Args:
        boundaries: increasing step boundaries (ints, or fractions of training).
        values: one more value than boundaries.

    Examples:
        >>> s = piecewise([5], [1.0, 0.1]).resolve(None)
        >>> round(float(s(4)), 6), round(float(s(5)), 6)
        (1.0, 0.1)
    """
    if len(values) != len(boundaries) + 1:
        raise ValueError(f"piecewise needs one more value than boundaries; got "
                         f"{len(boundaries)} boundaries and {len(values)} values.")

    def build(total: int | None) -> optax.Schedule:
        steps = [_steps(b, total, "boundaries") for b in boundaries]

        def schedule(count):
            import jax.numpy as jnp
            index = jnp.searchsorted(jnp.asarray(steps), count, side="right")
            return jnp.asarray(values, jnp.float32)[index]

        return schedule

    return Schedule(build, f"piecewise({list(boundaries)}, {list(values)})")


# Each schedule remembers its arguments (its recipe), so Model.save can store it.
constant, warmup_cosine, cosine, linear, exponential, piecewise = map(
    recorded, (constant, warmup_cosine, cosine, linear, exponential, piecewise))


def as_schedule(learning_rate: float | Schedule | optax.Schedule) -> Schedule:
    """Accepts a float, an easyfit ``Schedule`` or a plain ``step -> lr`` function."""
    if isinstance(learning_rate, Schedule):
        return learning_rate
    if callable(learning_rate):
        return Schedule(lambda total: learning_rate, getattr(learning_rate, "__name__", "fn"))
    if isinstance(learning_rate, (int, float)):
        return constant(float(learning_rate))
    raise TypeError(f"learning_rate must be a number, an ef.schedules schedule or a "
                    f"function step -> lr; got {type(learning_rate).__name__}.")
