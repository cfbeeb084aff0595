"""A Flax NNX module split for training: static graphs and state pytrees.

A module is split once into a static graph (one for train mode, one for eval mode) and two
state pytrees: the trainable ``nnx.Param`` leaves and everything else (batch statistics,
dropout RNG streams).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["GRAPH", "ModuleGraphs", "copy_tree", "path_names", "reseed", "split"]

# Passed explicitly everywhere: NNX's defaults for these are scheduled to change.
GRAPH = True


class ModuleGraphs:
    """The static halves of a module in train and eval mode.

    Args:
        module: the NNX module.
        edit: ``edit(view, train)`` may change a view of the module before it is split (set
            layers' compute ``dtype``, wrap layers in ``nnx.remat``); the module itself and
            its variables are untouched.
    """

    def __init__(self, module: nnx.Module,
                 edit: Callable[[nnx.Module, bool], None] | None = None):
        self.train = self._graphdef(module, train=True, edit=edit)
        self.eval = self._graphdef(module, train=False, edit=edit)

    @staticmethod
    def _graphdef(module: nnx.Module, train: bool, edit):
        view = nnx.view(module, deterministic=not train, use_running_average=not train,
                        raise_if_not_found=False, graph=GRAPH)
        if edit is not None:
            edit(view, train)
        return nnx.split(view, nnx.Param, ..., graph=GRAPH)[0]


def path_names(path: Any) -> tuple[str, ...]:
    """``("l1", "kernel")`` for a pytree path into an ``nnx.State`` or a restored dict (a
    Variable's trailing ``.value`` dropped), so the two kinds of path compare equal."""
    names = tuple(str(next((getattr(key, attr) for attr in ("key", "name", "idx")
                            if hasattr(key, attr)), key)) for key in path)
    return names[:-1] if names and names[-1] == "value" else names


def split(module: nnx.Module) -> tuple[Any, Any]:
    """``(params, rest)`` of a module: its ``nnx.Param`` leaves and all other variables."""
    _, params, rest = nnx.split(module, nnx.Param, ..., graph=GRAPH)
    return params, rest


def reseed(rest: Any, seed: int) -> Any:
    """Replaces every RNG stream in ``rest`` by one derived from ``seed`` (count reset to 0)."""
    flat = nnx.to_flat_state(rest)
    updated = []
    for index, (path, variable) in enumerate(flat):
        if isinstance(variable, nnx.RngKey):
            key = jax.random.fold_in(jax.random.key(seed), index)
            variable = variable.replace(value=key)
        elif isinstance(variable, nnx.RngCount):
            variable = variable.replace(value=jnp.zeros_like(variable[...]))
        updated.append((path, variable))
    return nnx.from_flat_state(updated)


def copy_tree(tree: Any) -> Any:
    """A device copy of every array, so donating one tree never deletes the other's buffers."""
    # device_put copies without compiling a program per shape and sharding
    return jax.tree.map(lambda a: jax.device_put(a, a.sharding, may_alias=False)
                        if isinstance(a, jax.Array) else a, tree)
