"""Keras's ``train_on_batch``, ``test_on_batch`` and ``predict_on_batch``: one batch through
the same jitted steps that ``fit``, ``evaluate`` and ``predict`` use.

Each call takes its whole input as one batch (a chunk of one step), so a loop of calls on
batches of one shape compiles each step once. ``train_on_batch`` and ``test_on_batch``
return that batch's loss and metrics (the sums are reset first, as Keras resets its
metrics), without the learning rate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from easyfit import arguments
from easyfit.callbacks.base import CallbackList
from easyfit.data.dispatch import adapt
from easyfit.data.adapters import DataAdapter
from easyfit.distribute import fetch
from easyfit.training.loop import evaluate_loop, predict_loop

if TYPE_CHECKING:
    from easyfit.training.trainer import Trainer

__all__ = ["predict_on_batch", "test_on_batch", "train_on_batch"]


def _one_batch(x: Any, y: Any = None, sample_weight: Any = None,
               class_weight: dict | None = None, with_y: bool = True,
               loss: Any = None) -> DataAdapter:
    """The batch as an adapter, its arguments checked as ``fit`` checks them (``loss``: the
    compiled loss, whose labels are checked too)."""
    if sample_weight is not None and class_weight is not None:
        raise ValueError("Arguments `sample_weight` and `class_weight` cannot be specified at "
                         "the same time: fold the class weights into sample_weight.")
    class_weight = arguments.check_class_weight(class_weight, y)
    arguments.check_sample_weight(sample_weight)
    leaves = jax.tree.leaves(x)
    if not leaves or not hasattr(leaves[0], "shape") or np.ndim(leaves[0]) == 0:
        raise ValueError(f"The *_on_batch methods take one batch of arrays (a numpy or jax "
                         f"array, or a dict/tuple of them, with the batch on the first "
                         f"axis); got x of type {type(x).__name__}.")
    rows = len(leaves[0])
    data = adapt(x, y, batch_size=rows, sample_weight=sample_weight,
                 class_weight=class_weight, with_y=with_y)
    arguments.check_inputs(loss, None, data)
    return data


def train_on_batch(trainer: "Trainer", x: Any, y: Any = None, sample_weight: Any = None,
                   class_weight: dict | None = None) -> dict[str, float]:
    """One optimizer step on ``(x, y)``; that batch's loss and metrics."""
    data = _one_batch(x, y, sample_weight, class_weight, loss=trainer.options.loss)
    trainer.build(data, total_steps=None)
    trainer.reset_totals()
    place = trainer.distribution.place_chunk
    chunk, sizes = next(iter(data.chunks(0, 1)))
    logs = fetch(trainer.train_on_chunk(place(chunk), len(sizes)))
    return {name: float(logs[name]) for name in trainer.steps.log_names(with_lr=False)}


def test_on_batch(trainer: "Trainer", x: Any, y: Any = None,
                  sample_weight: Any = None) -> dict[str, float]:
    """Loss and metrics of ``(x, y)`` in eval mode; nothing is trained."""
    return evaluate_loop(trainer, _one_batch(x, y, sample_weight, loss=trainer.options.loss),
                         CallbackList([]), per_dispatch=1)


def predict_on_batch(trainer: "Trainer", x: Any) -> Any:
    """The model's outputs for ``x`` (one batch), as numpy, in eval mode."""
    return predict_loop(trainer, _one_batch(x, with_y=False), CallbackList([]),
                        per_dispatch=1)
