"""Callback and CallbackList with Keras's hook names and ``logs`` semantics.

Batch hooks receive ``logs`` as a [`LazyLogs`][easyfit.callbacks.base.LazyLogs]: its keys are
known at once, but the
values are pulled from the device only when a callback reads one. A callback that never
looks at batch logs therefore never makes the host wait for the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterator, Sequence

__all__ = ["Callback", "CallbackList", "HOOKS", "LazyLogs"]


class LazyLogs(Mapping):
    """A read-only ``logs`` mapping whose values are fetched on first access.

    Args:
        keys: the names the logs will hold.
        fetch: returns the ``{name: float}`` dict (forces a device sync, once).
    """

    def __init__(self, keys: Sequence[str], fetch: Callable[[], dict[str, float]]):
        self._keys, self._fetch, self._values = list(keys), fetch, None

    def _resolve(self) -> dict[str, float]:
        if self._values is None:
            self._values = self._fetch()
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._resolve()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:  # answers from the keys: no device wait
        return key in self._keys

    def __repr__(self) -> str:
        return repr(self._resolve())


class Callback:
    """Base class for callbacks; override the hooks you need.

    Attributes:
        model: the [`Model`][easyfit.Model] being trained (set by ``fit``).
        params: ``{"epochs", "steps", "verbose", "do_validation", "batch_size"}`` of the
            running ``fit``.
        every_batch: ``True`` (the default) if this callback's train batch hooks must run on
            every batch: ``steps_per_execution="auto"`` then keeps one step per dispatch.
            Set it to ``False`` when once per dispatch is enough (the hooks then get the
            index of the last batch of each dispatch), as the built-in callbacks do.
        observer: ``True`` if this callback only reads ``logs`` (it never changes the model,
            its weights, the optimizer or ``stop_training``, and never reads the weights).
            When every callback with epoch or train batch hooks is an observer, ``fit``
            dispatches the next epoch's first step before it reads an epoch's logs, so the
            device does not wait for the host between epochs.

    Examples:
        >>> class Stopper(Callback):
        ...     def on_epoch_end(self, epoch, logs=None):
        ...         if logs["loss"] < 0.1:
        ...             self.model.stop_training = True
    """

    every_batch = True
    observer = False

    def __init__(self):
        self.model: Any = None
        self.params: dict[str, Any] = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def get_state(self) -> dict[str, Any] | None:
        """What this callback must remember across a crash (saved by BackupAndRestore).

        JSON types and numpy arrays; ``None`` (the default) for stateless callbacks.
        """
        return None

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what [`get_state`][easyfit.callbacks.base.Callback.get_state] returned."""

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)  # Keras's legacy name, called as Keras 3 calls it

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_batch_begin(self, batch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_test_batch_begin(self, batch, logs=None): ...
    def on_test_batch_end(self, batch, logs=None): ...
    def on_predict_begin(self, logs=None): ...
    def on_predict_end(self, logs=None): ...
    def on_predict_batch_begin(self, batch, logs=None): ...
    def on_predict_batch_end(self, batch, logs=None): ...


HOOKS = [name for name in vars(Callback) if name.startswith("on_")]
# Positional arguments of each hook, logs included: (epoch | batch, logs) or (logs,).
_ARITY = {hook: 2 if ("epoch" in hook or "batch" in hook) else 1 for hook in HOOKS}


_LEGACY = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


def _overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` does something in ``hook`` (a subclass method or a set function),
    the legacy ``on_batch_*`` hooks counting as the train batch hooks that call them."""
    method = getattr(callback, hook)
    if getattr(method, "__func__", None) is not getattr(Callback, hook):
        return True
    return hook in _LEGACY and _overrides(callback, _LEGACY[hook])


class CallbackList:
    """Calls a hook on every callback, in order, skipping callbacks that do not override it.

    Examples:
        >>> callbacks = CallbackList([Callback()])
        >>> callbacks.wants("on_train_batch_end")
        False
    """

    def __init__(self, callbacks: Sequence[Callback], model: Any = None,
                 params: dict[str, Any] | None = None):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be ef.callbacks.Callback instances; got "
                                f"{type(callback).__name__}.")
            if model is not None:
                callback.set_model(model)
            if params is not None:
                callback.set_params(params)
        self._hooks = {hook: [c for c in self.callbacks if _overrides(c, hook)] for hook in HOOKS}

    def needs_every_batch(self) -> bool:
        """Whether a callback has train batch hooks that must run on every batch (user
        callbacks); built-ins that work per dispatch say ``every_batch = False``."""
        return any(getattr(c, "every_batch", True) for hook in
                   ("on_train_batch_begin", "on_train_batch_end") for c in self._hooks[hook])

    def observers_only(self) -> bool:
        """Whether every callback with epoch or train batch hooks only reads logs."""
        hooks = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end")
        return all(c.observer for hook in hooks for c in self._hooks[hook])

    def may_stop(self, hooks: Sequence[str]) -> bool:
        """Whether a callback that is not an observer overrides one of ``hooks``: only such
        a callback can set ``stop_training`` (or ``stop_evaluating``) there."""
        return any(not c.observer for hook in hooks for c in self._hooks[hook])

    def wants(self, hook: str) -> bool:
        """Whether any callback overrides ``hook`` (so the loop can skip work for it)."""
        return bool(self._hooks[hook])

    def call(self, hook: str, *args: Any) -> None:
        """Calls ``hook`` with Keras's arguments: ``logs`` is always passed (``{}`` if none)."""
        if len(args) < _ARITY[hook]:
            args = (*args, {})
        for callback in self._hooks[hook]:
            try:
                getattr(callback, hook)(*args)
            except Exception as error:
                error.add_note(f"(raised in callback {type(callback).__name__}.{hook})")
                raise

    def _numbered(self) -> list[tuple[int, Callback]]:
        """``(n, callback)``: n counts earlier callbacks of the same class (0 for the first)."""
        seen: dict[str, int] = {}
        out = []
        for callback in self.callbacks:
            name = type(callback).__name__
            out.append((seen.get(name, 0), callback))
            seen[name] = seen.get(name, 0) + 1
        return out

    def states(self) -> list[dict[str, Any] | None]:
        """Each stateful callback's state (``get_state``), keyed by class name and occurrence,
        as a backup saves them."""
        return [None if (state := c.get_state()) is None else
                {"class": type(c).__name__, "nth": nth, "state": state}
                for nth, c in self._numbered()]

    def restore_states(self, states: list[dict[str, Any] | None]) -> None:
        """Gives each callback its state from [`states`][easyfit.callbacks.base.CallbackList.states] of an earlier run (matched by
        class name and occurrence; callbacks not found there keep theirs)."""
        saved = {(entry["class"], entry["nth"]): entry["state"] for entry in states if entry}
        for nth, callback in self._numbered():
            if (type(callback).__name__, nth) in saved:
                callback.set_state(saved[(type(callback).__name__, nth)])

    def close(self) -> None:
        """Lets callbacks that hold files or pending checkpoint writes finish them."""
        for callback in self.callbacks:
            if hasattr(callback, "close"):
                callback.close()

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if hook not in HOOKS:
            raise AttributeError(hook)
        return lambda *args: self.call(hook, *args)
