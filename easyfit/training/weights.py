"""Weights in and out of a model: Keras's ``get_weights`` / ``set_weights`` as numpy lists,
``save_weights`` / ``load_weights`` as orbax checkpoint directories."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyfit.checkpoint import Checkpoints, abstract
from easyfit.modules.graph import GRAPH

if TYPE_CHECKING:
    from easyfit.training.trainer import Trainer

__all__ = ["get_weights", "load_weights", "save_weights", "set_weights"]


def _weight_state(module: nnx.Module) -> Any:
    """Every variable but the RNG state."""
    return nnx.state(module, nnx.Not(nnx.RngState), graph=GRAPH)


def get_weights(module: nnx.Module) -> list[np.ndarray]:
    """The module's weights (parameters, batch statistics; not RNG state) as numpy arrays."""
    return [np.asarray(leaf) for leaf in jax.tree.leaves(_weight_state(module))]


def set_weights(module: nnx.Module, weights: Sequence[Any]) -> None:
    """Sets the module's weights from a list shaped as `get_weights` returns."""
    state = _weight_state(module)
    leaves, treedef = jax.tree.flatten(state)
    if len(weights) != len(leaves):
        raise ValueError(f"set_weights got {len(weights)} arrays; the model has "
                         f"{len(leaves)} (as get_weights returns).")
    for index, (new, old) in enumerate(zip(weights, leaves)):
        if np.shape(new) != old.shape:
            path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(state)[0][index][0])
            raise ValueError(f"set_weights: array {index} ({path}) has shape "
                             f"{np.shape(new)}, expected {old.shape}.")
    nnx.update(module, jax.tree.unflatten(treedef, [jnp.asarray(w, o.dtype)
                                                    for w, o in zip(weights, leaves)]))


def save_weights(trainer: "Trainer", path: str) -> None:
    """Writes the trainer's current weights (RNG state included) to a checkpoint directory,
    at its step count (saving again at the same step overwrites, as Keras)."""
    store = Checkpoints(path, keep_latest=1, async_save=False)
    step = trainer.step_count
    store.delete(step)
    store.save(step, trainer.weights(), {"epoch": trainer.position[0]})
    store.close()


def load_weights(trainer: "Trainer", path: str, step: int | None = None) -> None:
    """Loads weights into the trainer's module from a checkpoint directory: ``step``, else
    the best by the monitored value, else the latest."""
    if not trainer.has_module:
        raise RuntimeError("Initialise this Linen model first (sample_input= or a call).")
    store = Checkpoints(path, keep_latest=1, async_save=False)
    chosen = step if step is not None else store.best_step()
    if chosen is None:
        raise FileNotFoundError(f"No checkpoint in {path}.")
    _, weights, _, _ = store.restore(abstract(trainer.weights()), step=chosen)
    store.close()
    nnx.update(trainer.module, weights["params"], weights["rest"])
