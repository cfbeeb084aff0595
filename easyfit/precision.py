"""Mixed precision: compute in bfloat16 or float16 while weights stay float32.

Flax layers take a ``dtype`` (the computation's type) apart from ``param_dtype`` (the
stored weights'). easyfit sets ``dtype`` on the layers of a *view* of your module used by
the jitted steps (your module is not changed): matmuls and convolutions run in the low
type, reading float32 weights; normalisation layers stay in float32; the model's output is
cast to float32 before the loss; parameters, gradients and optimizer state stay float32.
float16 also needs loss scaling (its range is small): `dynamic_loss_scaling`.

Examples:
    >>> model.compile("adamw", "sparse_categorical_crossentropy", precision="bfloat16")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from easyfit.modules.graph import GRAPH

__all__ = ["FLOAT32_LAYERS", "LossScaleState", "PRECISIONS", "cast_floating", "compute_dtype",
           "dynamic_loss_scaling", "loss_scale", "set_compute_dtype"]

PRECISIONS = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

FLOAT32_LAYERS: tuple[type, ...] = (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)
"""Layers kept in float32 by default: normalisations, whose sums of squares need range."""


def compute_dtype(precision: str) -> Any:
    """The computation dtype of a precision name (``None`` for float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {sorted(PRECISIONS)}.")
    return PRECISIONS[precision]


def set_compute_dtype(view: nnx.Module, dtype: Any,
                      float32_layers: Sequence[type] = FLOAT32_LAYERS) -> None:
    """Sets ``dtype`` on every layer of ``view`` that has one, except ``float32_layers``."""
    keep = tuple(float32_layers)
    for _, layer in nnx.iter_modules(view, graph=GRAPH):
        if hasattr(layer, "dtype") and not isinstance(layer, keep):
            layer.dtype = dtype


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Casts the floating-point arrays of ``tree`` to ``dtype`` (integers are untouched)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype)
                        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)


class LossScaleState(NamedTuple):
    """State of `dynamic_loss_scaling`."""

    scale: jax.Array       # the loss is multiplied by this before differentiating
    good_steps: jax.Array  # finite steps since the scale last changed
    inner: Any             # the wrapped optimizer's state


def dynamic_loss_scaling(inner: optax.GradientTransformation, initial_scale: float = 2.0 ** 15,
                         growth_interval: int = 2000,
                         factor: float = 2.0) -> optax.GradientTransformation:
    """Wraps an optimizer for float16 training with a dynamic loss scale.

    The train step multiplies the loss by ``scale`` (read from this state) so small
    gradients survive float16; ``update`` divides the gradients back. A step whose gradients
    are not finite is skipped (no update, inner state kept) and halves the scale; after
    ``growth_interval`` finite steps in a row the scale doubles.

    Examples:
        >>> tx = dynamic_loss_scaling(optax.adam(1e-3))
        >>> float(tx.init({"w": jnp.zeros(2)}).scale)
        32768.0
    """

    def init(params):
        return LossScaleState(jnp.asarray(initial_scale, jnp.float32),
                              jnp.zeros([], jnp.int32), inner.init(params))

    def update(grads, state, params=None):
        grads = jax.tree.map(lambda g: (g / state.scale).astype(g.dtype), grads)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, new_inner = inner.update(grads, state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        new_inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                 new_inner, state.inner)
        grow = finite & (state.good_steps + 1 >= growth_interval)
        scale = jnp.where(finite, jnp.where(grow, state.scale * factor, state.scale),
                          jnp.maximum(state.scale / factor, 1.0))
        good = jnp.where(finite & ~grow, state.good_steps + 1, 0)
        return updates, LossScaleState(scale, good, new_inner)

    return optax.GradientTransformation(init, update)


def loss_scale(opt_state: Any) -> jax.Array | None:
    """The current loss scale inside an optimizer state, or ``None`` without scaling."""
    for node in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, LossScaleState)):
        if isinstance(node, LossScaleState):
            return node.scale
    return None
