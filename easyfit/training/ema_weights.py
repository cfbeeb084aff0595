"""The moving average of the weights (``use_ema``) put into the live weights, through the
trainer's public surface.

The average lives in the optimizer state ([`easyfit.ema`][easyfit.ema]).
[`show_average`][easyfit.training.ema_weights.show_average]
exchanges it with the weights, so that evaluation, prediction, checkpoints and the module
see it (Keras's ``SwapEMAWeights``), and exchanges them back; the state remembers the
exchange (``EmaState.swapped``), so checkpoints and resumed runs know it too.
[`finalize_average`][easyfit.training.ema_weights.finalize_average] makes the average the
weights for good (Keras's
``finalize_variable_values``, which ``fit`` runs at its end). Arrays are exchanged on the
device; nothing goes to the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from easyfit import ema as ema_lib
from easyfit.distribute.strategies import put
from easyfit.modules.graph import copy_tree

if TYPE_CHECKING:
    from easyfit.training.trainer import Trainer

__all__ = ["NO_EMA", "average_shown", "finalize_average", "has_average", "show_average"]

NO_EMA = ("SwapEMAWeights must be used when `use_ema=True` is set on the optimizer (e.g. "
          "ef.optimizers.adamw(use_ema=True, ema_momentum=0.99)) or when compile is given "
          "`ema_momentum=`. Received: use_ema=False")


def has_average(trainer: "Trainer") -> bool:
    """Whether the training state exists and its optimizer keeps a moving average."""
    state = trainer.state
    return state is not None and ema_lib.find(state.opt_state) is not None


def _node(trainer: "Trainer") -> ema_lib.EmaState | None:
    """The average's state; ``None`` before the first ``fit`` of a compile that keeps one.
    Raises the Keras error if the optimizer keeps none."""
    state = trainer.state
    node = None if state is None else ema_lib.find(state.opt_state)
    if node is None and (state is not None or trainer.options.ema is None):
        raise ValueError(NO_EMA)
    return node


def average_shown(trainer: "Trainer") -> bool:
    """Whether the weights hold the average now (exchanged by [`show_average`][easyfit.training.ema_weights.show_average]).

    Raises:
        ValueError: the optimizer keeps no moving average of the weights.
    """
    node = _node(trainer)
    return node is not None and bool(node.swapped)


def show_average(trainer: "Trainer", shown: bool) -> None:
    """Exchanges the weights and their moving average, if needed, so that the weights hold
    the average (``shown``) or the training weights (``not shown``). Before the first step
    the average is the weights themselves: nothing changes.

    Raises:
        ValueError: the optimizer keeps no moving average of the weights.
    """
    node = _node(trainer)
    if node is None or bool(node.swapped) == shown or int(node.count) == 0:
        return
    live, own = _live(trainer)
    params = jax.tree.map(lambda avg, p: put(avg, p.sharding), node.average, live["params"])
    trainer.load_checkpoint({"params": params, "rest": own(live["rest"])}, None)
    _set_average(trainer, own(live["params"]), node, shown)


def finalize_average(trainer: "Trainer") -> None:
    """Makes the moving average the weights, and keeps it as the average (Keras's
    ``finalize_variable_values``); training weights that were exchanged away are dropped.

    Raises:
        ValueError: the optimizer keeps no moving average of the weights.
    """
    node = _node(trainer)
    if node is None or int(node.count) == 0:
        return
    live, own = _live(trainer)
    if bool(node.swapped):  # the weights hold the average already: the average gets a copy
        trainer.load_checkpoint({"params": own(live["params"]), "rest": own(live["rest"])},
                                None)
        _set_average(trainer, copy_tree(live["params"]), node, False)
        return
    params = jax.tree.map(lambda avg, p: put(avg, p.sharding), node.average, live["params"])
    trainer.load_checkpoint({"params": copy_tree(params), "rest": own(live["rest"])}, None)


def _live(trainer: "Trainer") -> tuple[dict[str, Any], Any]:
    """The live weights (the module's, if edited since the last step) and ``own``: a tree
    with copies of the arrays that are not the state's own (the module's, which donating
    the state must not delete)."""
    state = trainer.state
    kept = {id(leaf) for leaf in jax.tree.leaves((state.params, state.rest))}

    def own(tree: Any) -> Any:
        return jax.tree.map(lambda a: a if id(a) in kept else copy_tree(a), tree)

    return trainer.weights(), own


def _set_average(trainer: "Trainer", average: Any, node: ema_lib.EmaState,
                 swapped: bool) -> None:
    placed = jax.tree.map(lambda p, avg: put(p, avg.sharding), average, node.average)
    flag = put(np.asarray(int(swapped), np.int32), node.swapped.sharding)
    state = trainer.state
    trainer.state = state.replace(opt_state=ema_lib.with_average(state.opt_state, placed, flag))
