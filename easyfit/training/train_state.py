"""The training state: one pytree that decides the future of training.

Params and the module's other variables (from `easyfit.modules.graph`), the optimizer
state, the step counter and the metric sums form `TrainState`, the only thing the
jitted step reads and returns.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from flax import struct
from jax.extend.core import Literal

__all__ = ["HOST_INIT_BYTES", "TrainState", "init_optimizer_state"]


@struct.dataclass
class TrainState:
    """Everything that decides the future of training, as one pytree.

    Attributes:
        params: trainable parameters (``nnx.Param`` leaves).
        rest: other module variables: batch statistics, RNG keys and counts.
        opt_state: the optax state.
        step: optimizer steps taken.
        totals: metric sums since the last reset (see ``easyfit.metrics``).
    """

    params: Any
    rest: Any
    opt_state: Any
    step: jax.Array
    totals: Any


# Larger optimizer states are made on the devices, each shard where it lives.
HOST_INIT_BYTES = 64 * 2**20


def init_optimizer_state(init: Callable[[Any], Any], params: Any, shardings: Any) -> Any:
    """``init(params)``, placed with ``shardings``.

    Most optimizers' ``init`` only fills arrays with constants (optax's zeros, step counts,
    hyperparameters). Such an ``init``, for a state of at most ``HOST_INIT_BYTES``, is read
    from its jaxpr, made with numpy and placed: no program to compile (~50 ms of a first
    ``fit`` on CPU). Any other runs jitted, with its outputs created where they live.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        >>> state = init_optimizer_state(optax.adam(1e-3).init, {"w": jnp.ones(3)}, one)
        >>> state[0].mu["w"]
        Array([0., 0., 0.], dtype=float32)
    """
    closed, shapes = jax.make_jaxpr(init, return_shape=True)(params)
    size = sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes))
    values = _constant_outputs(closed) if size <= HOST_INIT_BYTES else None
    if values is None:
        return jax.jit(init, out_shardings=shardings)(params)
    state = jax.tree.unflatten(jax.tree.structure(shapes), values)
    return jax.device_put(state, shardings, may_alias=False)


def _constant_outputs(closed: Any) -> list[np.ndarray] | None:
    """The outputs of a jaxpr made only of constants broadcast to shapes (numpy arrays), or
    ``None`` if it computes anything else (or makes what numpy cannot hold: PRNG keys)."""
    jaxpr = closed.jaxpr
    if any(jax.dtypes.issubdtype(var.aval.dtype, jax.dtypes.extended) for var in jaxpr.outvars):
        return None
    values = dict(zip(jaxpr.constvars, closed.consts))

    def read(var: Any) -> Any:
        return var.val if isinstance(var, Literal) else values.get(var)

    for eqn in jaxpr.eqns:
        operand = read(eqn.invars[0]) if len(eqn.invars) == 1 else None
        if eqn.primitive.name != "broadcast_in_dim" or operand is None or np.ndim(operand):
            return None
        aval = eqn.outvars[0].aval
        values[eqn.outvars[0]] = np.full(aval.shape, operand, aval.dtype)
    outputs = [read(var) for var in jaxpr.outvars]
    if any(value is None for value in outputs):  # an output that is an input
        return None
    return [np.asarray(value, var.aval.dtype) for value, var in zip(outputs, jaxpr.outvars)]
