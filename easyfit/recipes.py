"""Factories that remember how they were called, so what they made can be made again.

``Model.save`` stores an optimizer (and its learning-rate schedule) as the name of the
``ef.optimizers`` / ``ef.schedules`` function that built it and the arguments it was given:
its *recipe*. [`recorded`][easyfit.recipes.recorded] wraps such a function so that every object
it returns
carries a ``recipe`` attribute; [`recipe_of`][easyfit.recipes.recipe_of] reads it (``None`` for
objects made
any other way, such as a bare ``optax`` transformation).

Examples:
    >>> import easyfit as ef
    >>> recipe_of(ef.optimizers.sgd(0.1, momentum=0.0))["factory"]
    'easyfit.optimizers.sgd'
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

__all__ = ["recipe_of", "recorded"]

Factory = TypeVar("Factory", bound=Callable[..., Any])


def recorded(factory: Factory) -> Factory:
    """``factory``, with every object it returns carrying ``recipe``:
    ``{"factory": "<module>.<name>", "args": {argument: value, ...}}`` (defaults filled in).

    Examples:
        >>> @recorded
        ... def make(rate: float = 0.1):
        ...     return type("Made", (), {})()
        >>> make(0.5).recipe["args"]
        {'rate': 0.5}
    """
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Any:
        made = factory(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        recipe = {"factory": f"{factory.__module__}.{factory.__name__}",
                  "args": dict(bound.arguments)}
        object.__setattr__(made, "recipe", recipe)  # frozen dataclasses too
        return made

    return build  # type: ignore[return-value]


def recipe_of(obj: Any) -> dict[str, Any] | None:
    """The recipe of an object made by a [`recorded`][easyfit.recipes.recorded] factory, else ``None``."""
    recipe = getattr(obj, "recipe", None)
    return recipe if isinstance(recipe, dict) and "factory" in recipe else None
