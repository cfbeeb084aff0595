"""The learning-rate range test: train briefly while the learning rate grows exponentially.

The loss first barely moves (the rate is too small), then falls, then blows up (too large).
A good rate lies where it falls fastest: the steepest descent of the smoothed loss against
``log(lr)``. The test runs on a copy of the training state, so the model is unchanged.

Examples:
    >>> result = model.find_lr(x_train, y_train, min_lr=1e-6, max_lr=1.0)  # doctest: +SKIP
    >>> result.suggestion                                                 # doctest: +SKIP
    0.0031
    >>> result.plot("lr.png")                                             # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import optax

from easyfit.data.dispatch import adapt
from easyfit.precision import dynamic_loss_scaling
from easyfit.modules.graph import copy_tree, split
from easyfit.training.step import Steps

if TYPE_CHECKING:
    from easyfit.model import Model

__all__ = ["LRFinderResult", "find_lr", "suggest"]


@dataclass(frozen=True)
class LRFinderResult:
    """What `find_lr` measured.

    Attributes:
        lrs: the learning rate of each step taken (increasing).
        losses: the training loss of each step.
        smoothed: ``losses`` smoothed by a bias-corrected exponential moving average.
        suggestion: the rate at the steepest descent of ``smoothed`` (``None`` if the
            sweep was too short to tell).
        diverged: whether the sweep stopped early because the loss blew up.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float | None
    diverged: bool

    def plot(self, path: str | None = None) -> Any:
        """Loss against learning rate (log axis), the suggestion marked; saves a PNG to
        ``path`` if given. Needs matplotlib (``pip install 'easyfit[plots]'``)."""
        from easyfit.plots import plot_lr_finder

        return plot_lr_finder(self, path)


class _Sweep:
    """The part of an optimizer that the train step uses, for the sweep."""

    def __init__(self, transform: optax.GradientTransformation):
        self.transform = transform

    def current_lr(self, opt_state: Any) -> None:
        return None


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> float | None:
    """The rate where the smoothed loss falls fastest against ``log10(lr)``.

    The first 10% of the points (the moving average is still settling) and the last 5%
    (the loss is taking off) are left out. ``None`` with fewer than 10 points.
    """
    if len(lrs) < 10:
        return None
    start, stop = max(1, len(lrs) // 10), len(lrs) - max(1, len(lrs) // 20)
    slope = np.gradient(smoothed, np.log10(lrs))[start:stop]
    return float(lrs[start + int(np.argmin(slope))])


def find_lr(model: "Model", x: Any, y: Any = None, *, min_lr: float = 1e-7,
            max_lr: float = 1.0, steps: int = 100, batch_size: int | None = None,
            smoothing: float = 0.98, diverge_factor: float = 4.0,
            x_key: Any = None, y_key: Any = None) -> LRFinderResult:
    """Runs the learning-rate range test on a copy of the model's training state.

    Args:
        model: a compiled [`Model`][easyfit.Model] (trained or not; it is not changed).
        x: training input, as ``fit`` takes it (arrays, a dataset, an iterable).
        y: targets, with array ``x``.
        min_lr: the first learning rate.
        max_lr: the last learning rate (reached at step ``steps``).
        steps: the number of steps (batches; the data is cycled if it is shorter).
        batch_size: as in ``fit`` (default 32 for arrays).
        smoothing: the moving average's factor (0 = no smoothing).
        diverge_factor: stop once the smoothed loss exceeds this multiple of its minimum.
        x_key: for datasets of dicts, as in ``fit``.
        y_key: for datasets of dicts, as in ``fit``.

    Returns:
        An `LRFinderResult` with the rates, the losses and a suggestion.

    Examples:
        >>> result = find_lr(model, x_train, y_train, steps=100)  # doctest: +SKIP
        >>> model.optimizer.learning_rate = result.suggestion      # doctest: +SKIP
    """
    if not model.compiled:
        raise RuntimeError("You must call `model.compile(optimizer=..., loss=...)` before you "
                           "run the learning-rate finder.")
    if not 0 < min_lr < max_lr:
        raise ValueError(f"Need 0 < min_lr < max_lr; got min_lr={min_lr}, max_lr={max_lr}.")
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}.")
    trainer, options = model.trainer, model.trainer.options
    data = adapt(x, y, batch_size=batch_size, shuffle=True, seed=options.seed,
                 keys=(x_key, y_key))
    trainer.ensure_module(data)
    dist = trainer.distribution
    dist.check_batch_size(data.batch_size)
    ratio = max_lr / min_lr
    rate = lambda step: min_lr * ratio ** (step / (steps - 1))
    optimizer = options.optimizer
    transform, in_state = optimizer.sweep_transform(rate)
    if options.precision == "float16":
        transform = dynamic_loss_scaling(transform)
    sweep = Steps(trainer.steps.graphs, options.loss, [], [], _Sweep(transform), options.augment,
                  options.seed, options.compute_dtype)

    # A copy of the current weights, placed as training places them; the model keeps its own.
    params, rest = split(model.module)
    state, _ = trainer.new_state(transform, sweep, copy_tree(params), copy_tree(rest),
                                 data.sample_batch())

    lrs, losses, smoothed = [], [], []
    average, best, diverged = 0.0, math.inf, False
    epoch = 0
    while len(lrs) < steps and not diverged:
        read = False
        for chunk, _ in data.chunks(epoch, 1):
            read = True
            lr = rate(len(lrs))
            if not in_state:
                state = state.replace(opt_state=jax.device_put(
                    optimizer.with_lr(state.opt_state, lr)))
            state, logs = sweep.train(state, dist.place_chunk(chunk))
            state = state.replace(totals=sweep.zero(state.totals))  # one loss per step
            loss = float(jax.device_get(logs["loss"]))
            lrs.append(lr)
            losses.append(loss)
            average = smoothing * average + (1 - smoothing) * loss
            value = average / (1 - smoothing ** len(lrs))
            smoothed.append(value)
            best = min(best, value)
            if not math.isfinite(value) or (len(lrs) > 1 and value > diverge_factor * best):
                diverged = True
            if diverged or len(lrs) == steps:
                break
        if not read:  # a one-shot iterable ran out: the sweep ends where the data did
            if not lrs:
                raise ValueError("The input is empty: the learning-rate finder read no batch.")
            break
        epoch += 1
    lrs_a, smoothed_a = np.asarray(lrs), np.asarray(smoothed)
    usable = np.isfinite(smoothed_a)
    if usable.sum() < 10:
        warnings.warn(f"find_lr: only {int(usable.sum())} steps with a finite loss (the input "
                      f"{'diverged' if diverged else 'ran out'} after {len(lrs)} of {steps}), "
                      "too few to suggest a rate: suggestion is None. Pass more data (a "
                      "dataset that repeats, or arrays), or a lower max_lr if the loss "
                      "diverged at once.", stacklevel=3)
    return LRFinderResult(lrs=lrs_a, losses=np.asarray(losses), smoothed=smoothed_a,
                          suggestion=suggest(lrs_a[usable], smoothed_a[usable]),
                          diverged=diverged)
