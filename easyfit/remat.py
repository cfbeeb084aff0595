"""Rematerialisation: recompute each layer's activations in the backward pass.

Each top-level layer of the module (the children of the root; the items of an
``nnx.List`` / ``nnx.Dict`` / ``nnx.Sequential``) is wrapped in ``nnx.remat`` in a view
used by the train step (your module is unchanged). The backward pass then keeps only each
layer's input and recomputes what is inside, trading compute for peak memory; gradients are
the same. A policy name from ``jax.checkpoint_policies`` saves some values (e.g.
``"dots_with_no_batch_dims_saveable"`` keeps matmul results).

Examples:
    >>> model.compile("adamw", "mse", remat=True)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from easyfit.modules.graph import GRAPH

__all__ = ["policy", "rematerialise"]


def policy(remat: bool | str) -> Any:
    """The ``jax.checkpoint`` policy for ``compile(remat=...)`` (``None``: save nothing)."""
    if remat is True:
        return None
    found = getattr(jax.checkpoint_policies, str(remat), None)
    if not isinstance(remat, str) or found is None or remat.startswith("_"):
        names = sorted(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
        raise ValueError(f"remat must be True, False or a policy name of "
                         f"jax.checkpoint_policies; got {remat!r}. Names: {', '.join(names)}.")
    if remat in ("save_only_these_names", "save_any_names_but_these", "save_from_both_policies",
                 "save_and_offload_only_these_names"):
        raise ValueError(f"The remat policy {remat!r} needs arguments; build it yourself and "
                         "wrap your layers with nnx.remat(..., policy=...).")
    return found


def _layers(module: nnx.Module) -> list[nnx.Module]:
    """The children of ``module``, looking through containers (lists, dicts, Sequential)."""
    out = []
    for path, child in nnx.iter_children(module, graph=GRAPH):
        if isinstance(child, nnx.Sequential) or not callable(child):
            out.extend(_layers(child))
        elif isinstance(child, nnx.Module):
            out.append(child)
    return out


def rematerialise(view: nnx.Module, remat: bool | str) -> None:
    """Wraps the ``__call__`` of each top-level layer of ``view`` in ``nnx.remat``."""
    chosen = policy(remat)
    for layer in _layers(view):
        cls = type(layer)
        layer.__class__ = type(f"Remat{cls.__name__}", (cls,), {
            "__call__": _rematerialised(cls.__call__, chosen), "__module__": cls.__module__})


def _rematerialised(call: Any, chosen: Any) -> Any:
    def remat_call(self, *args, **kwargs):
        # keyword arguments are static here (flags such as train=True), closed over
        inner = lambda module, *arrays: call(module, *arrays, **kwargs)
        return nnx.remat(inner, policy=chosen, graph=GRAPH)(self, *args)

    return remat_call
