"""Optimizers: optax chains whose learning rate is readable and settable while training.

Every easyfit optimizer is ``clip -> update rule -> weight decay -> learning rate``, the last
link being [`scale_by_learning_rate`][easyfit.optimizers.scale_by_learning_rate], which keeps
the learning rate in the optimizer
state. Callbacks can therefore read and change it between steps without a recompile, and
``fit`` logs it as ``lr``. Any ``optax.GradientTransformation`` works too; its learning rate
is visible only when it was built with ``optax.inject_hyperparams``.

Examples:
    >>> import easyfit as ef
    >>> opt = ef.optimizers.adamw(learning_rate=ef.schedules.warmup_cosine(1e-3, warmup=0.1),
    ...                           weight_decay=1e-4, clipnorm=1.0)
    >>> opt.name
    'adamw'
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from easyfit.ema import EMA, weight_ema
from easyfit.lr_state import LearningRateState, scale_by_learning_rate, scheduled_rate
from easyfit.precision import dynamic_loss_scaling
from easyfit.recipes import recorded
from easyfit.schedules import Schedule, as_schedule

__all__ = ["LearningRateState", "OPTIMIZERS", "Optimizer", "adagrad", "adam", "adamw", "get",
           "lion", "rmsprop", "scale_by_learning_rate", "sgd"]


# optax 0.2.8's inject_hyperparams returns the "stateful" state class; older ones the other.
_INJECTED = tuple(getattr(optax, name) for name in
                  ("InjectStatefulHyperparamsState", "InjectHyperparamsState") if hasattr(optax, name))


def _is_lr_node(node: Any) -> bool:
    return isinstance(node, (LearningRateState, *_INJECTED))


class Optimizer:
    """An optax transformation plus what easyfit needs to know about its learning rate.

    Build one with [`sgd`][easyfit.optimizers.sgd], [`adam`][easyfit.optimizers.adam],
    [`adamw`][easyfit.optimizers.adamw], ... or wrap any optax
    transformation with [`from_optax`][easyfit.optimizers.Optimizer.from_optax]. It builds the
    optax transformation and knows
    where the learning rate sits in its state; after ``model.compile``,
    ``model.optimizer.learning_rate`` reads and writes the rate in the live training state,
    as in Keras.

    Examples:
        >>> opt = sgd(learning_rate=0.1, momentum=0.9)
        >>> opt.learning_rate
        0.1
    """

    def __init__(self, name: str, rule: optax.GradientTransformation | None,
                 learning_rate: float | Schedule | Callable | None,
                 clipnorm: float | None = None, clipvalue: float | None = None,
                 transform: optax.GradientTransformation | None = None, ema: EMA | None = None):
        self.name = name
        self.ema = ema  # Keras's use_ema / ema_momentum / ema_overwrite_frequency
        self._rule = rule
        self._schedule = None if learning_rate is None else as_schedule(learning_rate)
        self._constant = isinstance(learning_rate, (int, float))
        self._initial_lr = float(learning_rate) if self._constant else None
        self._clip = [t for t in (
            optax.clip_by_global_norm(clipnorm) if clipnorm is not None else None,
            optax.clip(clipvalue) if clipvalue is not None else None) if t is not None]
        self._base = transform  # a user's optax transformation, used as built
        self._transform: optax.GradientTransformation | None = None
        self._lr_fn: optax.Schedule | None = None

    @classmethod
    def from_optax(cls, transform: optax.GradientTransformation) -> "Optimizer":
        """Wraps a ready optax transformation; its learning rate is used as built."""
        return cls("optax", None, None, transform=transform)

    # -- building ---------------------------------------------------------------------------
    def build(self, total_steps: int | None, accumulation_steps: int = 1,
              loss_scaling: bool = False, ema: EMA | None = None) -> optax.GradientTransformation:
        """Returns the optax transformation, built on first call.

        Args:
            total_steps: batches in the whole run (resolves schedule fractions), or ``None``.
            accumulation_steps: average the gradients of this many batches per update
                (``optax.MultiSteps``); schedules then count updates, not batches.
            loss_scaling: wrap in `easyfit.precision.dynamic_loss_scaling` (float16).
            ema: keep a moving average of the weights
                ([`easyfit.ema.weight_ema`][easyfit.ema.weight_ema],
                updated every batch, as Keras); ``compile`` passes this optimizer's own
                [`ema`][easyfit.ema] unless it was given ``ema_momentum``.
        """
        if self._transform is None:
            transform = self._base
            if transform is None:
                if not self._constant:
                    updates = None if total_steps is None else -(-total_steps // accumulation_steps)
                    self._lr_fn = self._schedule.resolve(updates)
                transform = self._with_schedule(self._lr_fn,
                                                self._initial_lr if self._constant else 1.0)
            if accumulation_steps > 1:
                transform = optax.MultiSteps(transform, every_k_schedule=accumulation_steps
                                             ).gradient_transformation()
            if ema is not None:
                transform = weight_ema(transform, ema.momentum, ema.overwrite_frequency)
            if loss_scaling:
                transform = dynamic_loss_scaling(transform)
            self._transform = transform
        return self._transform

    def _with_schedule(self, schedule: optax.Schedule | None,
                       initial: float = 1.0) -> optax.GradientTransformation:
        """This optimizer's clipping and update rule, then the learning rate ``schedule``
        (``None``: a constant rate, ``initial``). For optimizers easyfit builds only (an
        optax transformation passed in has its own rate)."""
        return optax.chain(*self._clip, self._rule, scale_by_learning_rate(schedule, initial))

    def reset(self) -> None:
        """Forgets the built transformation, so the next [`build`][easyfit.optimizers.Optimizer.build] resolves anew (a new
        ``compile`` may ask for other accumulation or loss scaling, a new run length)."""
        self._transform, self._lr_fn = None, None

    @property
    def built(self) -> bool:
        return self._transform is not None

    @property
    def use_ema(self) -> bool:
        """Whether it keeps a moving average of the weights ([`ema`][easyfit.ema]), as Keras's."""
        return self.ema is not None

    @property
    def transform(self) -> optax.GradientTransformation:
        """The optax transformation (after [`build`][easyfit.optimizers.Optimizer.build])."""
        if self._transform is None:
            raise RuntimeError("The optimizer is built by fit(); it has no transformation yet.")
        return self._transform

    # -- the learning rate, inside and outside jit ------------------------------------------
    def current_lr(self, opt_state: Any) -> jax.Array | None:
        """The learning rate the next update will use (``None`` if it cannot be seen)."""
        for node in jax.tree.leaves(opt_state, is_leaf=_is_lr_node):
            if isinstance(node, LearningRateState):
                return scheduled_rate(self._lr_fn, node)
            if isinstance(node, _INJECTED) and "learning_rate" in node.hyperparams:
                return jnp.asarray(node.hyperparams["learning_rate"], jnp.float32)
        return None

    def with_lr(self, opt_state: Any, value: float) -> Any:
        """Returns ``opt_state`` with the learning rate for the next update set to ``value``."""
        found = False

        def set_lr(node):
            nonlocal found
            if isinstance(node, LearningRateState) and not found:
                found = True
                if self._lr_fn is None:
                    return node._replace(scale=jnp.asarray(value, jnp.float32))
                base = float(self._lr_fn(node.count))
                if base == 0.0:
                    raise ValueError("The scheduled learning rate is 0 at this step, so it cannot "
                                     "be rescaled to a new value; set it at a later step.")
                return node._replace(scale=jnp.asarray(value / base, jnp.float32))
            if isinstance(node, _INJECTED) and not found and \
                    "learning_rate" in node.hyperparams:
                found = True
                hyper = dict(node.hyperparams, learning_rate=jnp.asarray(
                    value, jnp.asarray(node.hyperparams["learning_rate"]).dtype))
                return node._replace(hyperparams=hyper)
            return node

        new_state = jax.tree.map(set_lr, opt_state, is_leaf=_is_lr_node)
        if not found:
            raise self._no_lr_error()
        return new_state

    def _no_lr_error(self) -> Exception:
        return AttributeError(
            "This optax optimizer does not expose its learning rate. Build it with "
            "`optax.inject_hyperparams(optax.adamw)(learning_rate=...)`, or use "
            "`ef.optimizers.adamw(...)` (or another ef.optimizers function).")

    def learning_rate_in(self, opt_state: Any) -> float:
        """The learning rate of the next update in ``opt_state``, as a float."""
        lr = self.current_lr(opt_state)
        if lr is None:
            raise self._no_lr_error()
        return float(lr)

    def sweep_transform(self, schedule: optax.Schedule) -> tuple[optax.GradientTransformation,
                                                                 bool]:
        """``(transform, lr_in_state)``: this optimizer with ``schedule`` as its learning rate
        (for the learning-rate finder).

        An easyfit optimizer is rebuilt with the schedule (``lr_in_state`` is ``True``: the
        whole sweep runs on the device); an optax optimizer built with ``inject_hyperparams``
        keeps its own transformation, and each rate is set with
        [`with_lr`][easyfit.optimizers.Optimizer.with_lr] between steps.
        """
        if self._rule is not None:
            return self._with_schedule(schedule), True
        if self.current_lr(self._base.init({"w": jnp.zeros(())})) is None:
            raise self._no_lr_error()
        return self._base, False

    @property
    def learning_rate(self) -> float:
        """The learning rate before training: the constant, or a schedule's first value.
        (``model.optimizer.learning_rate`` reads the live rate once ``fit`` has started.)"""
        if self._constant:
            return self._initial_lr
        if self._schedule is not None:  # before fit: the rate at step 0 (of a long run)
            return float((self._lr_fn or self._schedule.resolve(1_000_000))(0))
        raise AttributeError("The learning rate of an optax optimizer is read from its state, "
                             "which exists once fit has started (read it from a callback).")

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        if self._constant and not self.built:
            self._initial_lr = float(value)
        else:
            raise ValueError("Set a scheduled learning rate after training has started "
                             "(e.g. from a callback), or pass a new schedule to compile.")

    def __repr__(self) -> str:
        lr = self._initial_lr if self._constant else self._schedule
        return f"Optimizer({self.name}, learning_rate={lr})"


def _with_decay(rule: list[optax.GradientTransformation], weight_decay: float,
                weight_decay_mask: Any) -> optax.GradientTransformation:
    """``rule -> decoupled weight decay -> negate``: the descent direction at lr 1."""
    decay = [optax.add_decayed_weights(weight_decay, weight_decay_mask)] if weight_decay else []
    return optax.chain(*rule, *decay, optax.scale(-1.0))


def sgd(learning_rate: float | Schedule = 0.01, momentum: float = 0.9, nesterov: bool = False,
        weight_decay: float = 0.0, clipnorm: float | None = None,
        clipvalue: float | None = None, use_ema: bool = False, ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None) -> Optimizer:
    """Stochastic gradient descent with (Nesterov) momentum and decoupled weight decay.

    Defaults: learning rate 0.01 and momentum 0.9, a known-good start for most models.

    Args:
        learning_rate: a float or an ``ef.schedules`` schedule.
        momentum: momentum coefficient (0 for plain SGD).
        nesterov: Nesterov momentum.
        weight_decay: decoupled weight decay (``p -= lr * weight_decay * p``).
        clipnorm: clip gradients to this global norm.
        clipvalue: clip each gradient element to ``[-clipvalue, clipvalue]``.
        use_ema: keep an exponential moving average of the weights (as Keras; every
            ``ef.optimizers`` function takes these three arguments): ``fit`` ends with the
            weights set to it, ``ef.callbacks.SwapEMAWeights`` evaluates with it.
        ema_momentum: ``average = ema_momentum * average + (1 - ema_momentum) * weights``.
        ema_overwrite_frequency: overwrite the weights with the average every this many
            steps during training (``None``: only at the end of ``fit``).

    Examples:
        >>> opt = sgd(0.1, momentum=0.0)
    """
    rule = [optax.trace(decay=momentum, nesterov=nesterov)] if momentum else []
    return Optimizer("sgd", _with_decay(rule, weight_decay, None), learning_rate,
                     clipnorm, clipvalue,
                     ema=EMA.from_keras(use_ema, ema_momentum, ema_overwrite_frequency))


def adam(learning_rate: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, weight_decay: float = 0.0, clipnorm: float | None = None,
         clipvalue: float | None = None, use_ema: bool = False, ema_momentum: float = 0.99,
         ema_overwrite_frequency: int | None = None) -> Optimizer:
    """Adam (decoupled weight decay if ``weight_decay`` is set, as Keras).

    Examples:
        >>> opt = adam(3e-4)
    """
    rule = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
    return Optimizer("adam", _with_decay(rule, weight_decay, None), learning_rate,
                     clipnorm, clipvalue,
                     ema=EMA.from_keras(use_ema, ema_momentum, ema_overwrite_frequency))


def adamw(learning_rate: float | Schedule = 1e-3, weight_decay: float = 1e-4, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8, weight_decay_mask: Any = None,
          clipnorm: float | None = None, clipvalue: float | None = None,
          use_ema: bool = False, ema_momentum: float = 0.99,
          ema_overwrite_frequency: int | None = None) -> Optimizer:
    """AdamW: Adam with decoupled weight decay, the same update as ``optax.adamw``.

    Defaults (learning rate 1e-3, weight decay 1e-4) are a known-good start.

    Args:
        learning_rate: a float or an ``ef.schedules`` schedule.
        weight_decay: decoupled weight decay, multiplied by the learning rate as in optax.
        b1: first-moment decay.
        b2: second-moment decay.
        eps: added to the denominator.
        weight_decay_mask: optax mask (pytree or ``params -> pytree`` of bools) of what decays.
        clipnorm: clip gradients to this global norm.
        clipvalue: clip each gradient element.
        use_ema: keep an exponential moving average of the weights (see
            [`sgd`][easyfit.optimizers.sgd]).
        ema_momentum: the average's momentum.
        ema_overwrite_frequency: steps between overwrites of the weights by the average.

    Examples:
        >>> opt = adamw(ef.schedules.warmup_cosine(peak=1e-3, warmup=0.05), clipnorm=1.0)  # doctest: +SKIP
    """
    rule = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
    return Optimizer("adamw", _with_decay(rule, weight_decay, weight_decay_mask), learning_rate,
                     clipnorm, clipvalue,
                     ema=EMA.from_keras(use_ema, ema_momentum, ema_overwrite_frequency))


def rmsprop(learning_rate: float | Schedule = 1e-3, rho: float = 0.9, momentum: float = 0.0,
            eps: float = 1e-7, weight_decay: float = 0.0, clipnorm: float | None = None,
            clipvalue: float | None = None,
            use_ema: bool = False, ema_momentum: float = 0.99,
            ema_overwrite_frequency: int | None = None) -> Optimizer:
    """RMSprop with Keras's defaults.

    Examples:
        >>> opt = rmsprop()
    """
    rule = [optax.scale_by_rms(decay=rho, eps=eps)]
    if momentum:
        rule.append(optax.trace(decay=momentum))
    return Optimizer("rmsprop", _with_decay(rule, weight_decay, None), learning_rate,
                     clipnorm, clipvalue,
                     ema=EMA.from_keras(use_ema, ema_momentum, ema_overwrite_frequency))


def adagrad(learning_rate: float | Schedule = 1e-3, initial_accumulator_value: float = 0.1,
            eps: float = 1e-7, weight_decay: float = 0.0, clipnorm: float | None = None,
            clipvalue: float | None = None,
            use_ema: bool = False, ema_momentum: float = 0.99,
            ema_overwrite_frequency: int | None = None) -> Optimizer:
    """Adagrad with Keras's defaults.

    Examples:
        >>> opt = adagrad(0.01)
    """
    rule = [optax.scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps)]
    return Optimizer("adagrad", _with_decay(rule, weight_decay, None), learning_rate,
                     clipnorm, clipvalue,
                     ema=EMA.from_keras(use_ema, ema_momentum, ema_overwrite_frequency))


def lion(learning_rate: float | Schedule = 1e-3, b1: float = 0.9, b2: float = 0.99,
         weight_decay: float = 0.0, clipnorm: float | None = None,
         clipvalue: float | None = None,
         use_ema: bool = False, ema_momentum: float = 0.99,
         ema_overwrite_frequency: int | None = None) -> Optimizer:
    """Lion (sign of the interpolated momentum), Keras's defaults.

    Examples:
        >>> opt = lion(1e-4, weight_decay=1e-2)
    """
    rule = [optax.scale_by_lion(b1=b1, b2=b2)]
    return Optimizer("lion", _with_decay(rule, weight_decay, None), learning_rate,
                     clipnorm, clipvalue,
                     ema=EMA.from_keras(use_ema, ema_momentum, ema_overwrite_frequency))


# Each optimizer remembers its arguments (its recipe), so Model.save can store it.
sgd, adam, adamw, rmsprop, adagrad, lion = map(
    recorded, (sgd, adam, adamw, rmsprop, adagrad, lion))

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": sgd, "adam": adam, "adamw": adamw, "rmsprop": rmsprop, "adagrad": adagrad,
    "lion": lion,
}


def get(optimizer: str | Optimizer | optax.GradientTransformation) -> Optimizer:
    """Resolves what ``compile(optimizer=...)`` accepts into an [`Optimizer`][easyfit.optimizers.Optimizer].

    Examples:
        >>> get("adamw").name
        'adamw'
    """
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer!r}. Valid names: "
                             f"{', '.join(sorted(OPTIMIZERS))}; or pass ef.optimizers.<name>(...) "
                             "or any optax.GradientTransformation.")
        return OPTIMIZERS[key]()
    if isinstance(optimizer, optax.GradientTransformation):
        return Optimizer.from_optax(optimizer)
    raise TypeError(f"optimizer must be a name, an ef.optimizers optimizer or an "
                    f"optax.GradientTransformation; got {type(optimizer).__name__}.")
