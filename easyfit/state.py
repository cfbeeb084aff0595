"""The training state pytree, and the bridge between a Flax module and it.

A Flax NNX module is split once into a static graph (one for train mode, one for eval mode)
and two state pytrees: the trainable ``nnx.Param`` leaves and everything else (batch
statistics, dropout RNG streams). Those pytrees, the optimizer state, the step counter and
the metric sums form :class:`TrainState`, the only thing the jitted step reads and returns.
A Linen module enters the same path through ``flax.nnx.bridge``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx, struct
from jax.extend.core import Literal

# Passed explicitly everywhere: NNX's defaults for these are scheduled to change.
GRAPH = True


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


def _train_flag(linen_module: linen.Module) -> str | None:
    """Name of the ``__call__`` argument that switches a Linen module between train and eval."""
    params = inspect.signature(type(linen_module).__call__).parameters
    for name in ("train", "training", "is_training", "deterministic"):
        if name in params:
            return name
    return None


class LinenModule(nnx.Module):
    """An NNX module around a Linen module, switched by ``deterministic`` like nnx.Dropout.

    The Linen module's train flag (``train``, ``training``, ``is_training`` or
    ``deterministic`` argument of ``__call__``) is set from the mode, and batch statistics are
    updated in train mode.
    """

    def __init__(self, module: linen.Module, sample_input: Any, seed: int = 0):
        self.flag = _train_flag(module)
        self.deterministic = False
        self.linen = nnx.bridge.ToNNX(module, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
        nnx.bridge.lazy_init(self.linen, sample_input, **self._flag_kwargs(deterministic=True))

    def _flag_kwargs(self, deterministic: bool) -> dict[str, bool]:
        if self.flag is None:
            return {}
        return {self.flag: deterministic if self.flag == "deterministic" else not deterministic}

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view`` to switch train / eval mode."""
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(self, x):
        mutable = False if self.deterministic else ["batch_stats"]
        return self.linen(x, mutable=mutable, **self._flag_kwargs(self.deterministic))


def is_factory(module: Any) -> bool:
    """Whether ``module`` is a function of no arguments (that builds a module)."""
    if not callable(module) or isinstance(module, (nnx.Module, linen.Module)):
        return False
    try:
        return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                           p.POSITIONAL_OR_KEYWORD)
                       for p in inspect.signature(module).parameters.values())
    except (TypeError, ValueError):
        return False


def as_nnx(module: Any, sample_input: Any = None, seed: int = 0) -> nnx.Module | None:
    """Returns an NNX module for ``module``; ``None`` while a Linen module awaits its input."""
    if isinstance(module, nnx.Module):
        return module
    if isinstance(module, linen.Module):
        if sample_input is None:
            return None
        return LinenModule(module, sample_input, seed)
    raise TypeError(f"ef.Model expects a flax.nnx.Module, a flax.linen.Module, or a function "
                    f"of no arguments that builds an nnx.Module; got {type(module).__name__}.")


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


# Larger optimizer states are made on the devices, each shard where it lives.
HOST_INIT_BYTES = 64 * 2**20


def init_optimizer_state(init: Callable[[Any], Any], params: Any, shardings: Any) -> Any:
    """``init(params)``, placed with ``shardings``.

    Most optimizers' ``init`` only fills arrays with constants (optax's zeros, step counts,
    hyperparameters). Such an ``init``, for a state of at most ``HOST_INIT_BYTES``, is read
    from its jaxpr, made with numpy and placed: no program to compile (~50 ms of a first
    ``fit`` on CPU). Any other runs jitted, with its outputs created where they live.

    Example:
        >>> import optax
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
