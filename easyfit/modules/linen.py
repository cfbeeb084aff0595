"""What a user may pass as a module, made an NNX module: Linen through ``flax.nnx.bridge``.

A Linen module's train flag (``train``, ``training``, ``is_training`` or ``deterministic``)
is switched by NNX's ``deterministic`` like ``nnx.Dropout``; a function of no arguments
builds an NNX module in its shardings (``ef.distribute``).
"""

from __future__ import annotations

import inspect
from typing import Any

from flax import linen, nnx

__all__ = ["LinenModule", "as_nnx", "is_factory"]


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
    """Whether ``module`` is a function of no arguments (that builds a module).

    Raises:
        TypeError: ``module`` is a Linen module class, or an NNX one whose constructor
            needs arguments (the class was passed where an instance was meant).
    """
    if not callable(module) or isinstance(module, (nnx.Module, linen.Module)):
        return False
    is_class = isinstance(module, type) and issubclass(module, (nnx.Module, linen.Module))
    try:  # a class's own __init__: NNX's metaclass hides it behind (*args, **kwargs)
        required = [p.name for p in inspect.signature(
            module.__init__ if is_class else module).parameters.values()
            if p.default is p.empty and p.name != "self"
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    if is_class and (required or issubclass(module, linen.Module)):
        name, given = module.__name__, ", ".join(f"{p}=..." for p in required)
        fix = (f"ef.Model({name}({given}), sample_input=x[:1])"
               if issubclass(module, linen.Module) else
               f"ef.Model({name}({given})), or pass a function that builds it, "
               f"ef.Model(lambda: {name}({given}))")
        raise TypeError(f"ef.Model got the class {name}, not a module: build it first, {fix}.")
    return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                   for p in inspect.signature(module).parameters.values())


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
