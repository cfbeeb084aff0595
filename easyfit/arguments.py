"""Arguments checked at the door: one clear error naming the argument, the value given and
what is accepted, before ``fit``, ``evaluate``, ``predict`` or ``compile`` does any work.

``Model`` calls these first, so a wrong argument creates no file, compiles nothing and
leaves the module as it was. Where Keras has an established behaviour for a value it is
kept: ``epochs=0`` trains nothing, a single callback is accepted as a list of one (Keras 3
flattens ``callbacks``), ``batch_size`` with an input that batches itself is ignored (with
a warning here when it differs from the input's own batches), ``shuffle="batch"`` shuffles.

Examples:
    >>> check_callbacks(None), len(check_callbacks(Callback()))  # one callback, as Keras
    ([], 1)
    >>> check_batch_size("batch_size", 0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: batch_size must be a positive int (rows per step), or None for the default ...
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from easyfit import callbacks as callbacks_lib
from easyfit.callbacks.base import Callback
from easyfit.data.adapters import ArrayAdapter, DataAdapter
from easyfit.data.dispatch import is_arrays
from easyfit.distribute import Distribution
from easyfit.precision import PRECISIONS

__all__ = ["check_batch_size", "check_callbacks", "check_class_weight", "check_compile",
           "check_distribution", "check_evaluate", "check_fit", "check_inputs",
           "check_predict", "check_sample_weight", "check_verbose"]

_SPARSE = "sparse_categorical_crossentropy"
_noted: set[str] = set()  # one-time notes already given in this process


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _positive(name: str, value: Any, default: str = "None", extra: str = "") -> None:
    """``value`` is ``None`` or an int >= 1."""
    if value is None:
        return
    what = f"{name} must be a positive int{extra}, or {default}"
    if not _is_int(value):
        raise TypeError(f"{what}; got {value!r} ({type(value).__name__}).")
    if value < 1:
        raise ValueError(f"{what}; got {value!r}.")


def check_batch_size(name: str, value: Any) -> None:
    """``batch_size`` (or ``validation_batch_size``, the ``name`` given): ``None`` or a
    positive int; ``TypeError`` for a non-int (a bool included), ``ValueError`` below 1."""
    _positive(name, value, "None for the default 32", " (rows per step)")


def _non_negative_int(name: str, value: Any, meaning: str) -> None:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int ({meaning}); got {value!r} "
                        f"({type(value).__name__}).")
    if value < 0:
        raise ValueError(f"{name} must be 0 or more ({meaning}); got {value!r}.")


def check_verbose(value: Any) -> None:
    """``verbose``: ``"auto"``, 0, 1 or 2 (``True``/``False`` count as 1/0, as in Keras);
    ``ValueError`` for any other value."""
    if not (value == "auto" or (isinstance(value, (numbers.Integral, np.bool_))
                                and value in (0, 1, 2))):
        raise ValueError(f"verbose must be 'auto', 0 (silent), 1 (progress bar) or 2 (one line "
                         f"per epoch); got {value!r}.")


def check_callbacks(callbacks: Any) -> list[Callback]:
    """``callbacks`` as a flat list: ``None``, one callback, or a (nested) list or tuple of
    them, as Keras 3 accepts (it flattens the argument).

    Returns:
        The callbacks, in order.

    Raises:
        TypeError: an item is not an ``ef.callbacks.Callback`` instance (the message says
            what it is: a function, a class, a Keras callback, a value).
    """
    if callbacks is None:
        return []
    flat, stack = [], [callbacks]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    for index, callback in enumerate(flat):
        if not isinstance(callback, Callback):
            what, fix = _not_a_callback(callback)
            raise TypeError(f"callbacks[{index}] is {what}, not an ef.callbacks.Callback "
                            f"instance; {fix}.")
    return flat


def _not_a_callback(value: Any) -> tuple[str, str]:
    """What ``value`` is, and how to pass it as a callback."""
    kind = type(value)
    library = kind.__module__.split(".")[0]
    if isinstance(value, type):
        return (f"the class {value.__name__}",
                f"pass an instance, {value.__name__}(...), rather than the class")
    if callable(value):
        return (f"the function {getattr(value, '__name__', kind.__name__)}",
                "wrap a function in ef.callbacks.LambdaCallback(on_epoch_end=fn)")
    if library in ("keras", "tf_keras", "tensorflow"):
        fix = (f"use ef.callbacks.{kind.__name__}" if hasattr(callbacks_lib, kind.__name__)
               else "subclass ef.callbacks.Callback")
        return f"a Keras {kind.__name__}", f"{fix} (Keras callbacks do not run here)"
    what = (f"the value {value!r:.40}" if library == "builtins" else
            f"an object of class {kind.__name__}")
    return what, "subclass ef.callbacks.Callback"


def check_distribution(distribution: Any) -> None:
    """``ef.Model(distribution=...)``: ``None`` or an ``ef.distribute`` strategy instance;
    ``TypeError`` for anything else (a strategy class not called included)."""
    if distribution is None or isinstance(distribution, Distribution):
        return
    if isinstance(distribution, type) and issubclass(distribution, Distribution):
        raise TypeError(f"distribution must be an instance: pass "
                        f"ef.distribute.{distribution.__name__}(), not the class.")
    raise TypeError(f"distribution must be an ef.distribute strategy (DataParallel(), FSDP(), "
                    f"ModelParallel(...)) or None; got {distribution!r:.60} "
                    f"({type(distribution).__name__}).")


def check_compile(args: Mapping[str, Any]) -> None:
    """``compile``'s ``steps_per_execution``, ``precision``, ``remat``, ``seed``,
    ``gradient_accumulation_steps`` and ``ema_momentum``. (Names of optimizers, losses,
    metrics and remat policies are checked where they are resolved.)

    Args:
        args: ``compile``'s ``locals()``.

    Raises:
        TypeError, ValueError: the first argument outside what it accepts, named with the
            value given.
    """
    spe = args.get("steps_per_execution", "auto")
    if not (isinstance(spe, str) and spe == "auto") and not (_is_int(spe) and spe >= 1):
        raise ValueError(f"steps_per_execution must be 'auto' or a positive int (train steps "
                         f"per dispatch; 'auto' picks from the step's cost); got {spe!r:.60}.")
    _positive("gradient_accumulation_steps", args.get("gradient_accumulation_steps", 1),
              "1 (no accumulation)", " (batches per optimizer update)")
    precision = args.get("precision", "float32")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        name = getattr(precision, "__name__", None) or getattr(precision, "name", None)
        keras = str(precision).removeprefix("mixed_")
        hint = (f"; Keras's {precision!r} policy is precision={keras!r} here"
                if isinstance(precision, str) and keras in PRECISIONS else
                f"; pass the name, precision={name!r}" if name in PRECISIONS else "")
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}; got "
                         f"{precision!r:.60}{hint}.")
    remat = args.get("remat", False)
    if not isinstance(remat, (bool, str)):
        raise TypeError(f"remat must be True, False or a jax.checkpoint_policies name such as "
                        f"'dots_saveable'; got {remat!r:.60} ({type(remat).__name__}).")
    if not _is_int(args.get("seed", 0)):
        raise TypeError(f"seed must be an int; got {args['seed']!r:.60}.")
    momentum = args.get("ema_momentum")
    if momentum is not None and not (isinstance(momentum, numbers.Real)
                                     and 0.0 <= momentum < 1.0):
        raise ValueError(f"ema_momentum must be a float in [0, 1) (e.g. 0.99), or None for no "
                         f"moving average; got {momentum!r:.60}.")


def _shuffle(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value == "batch":  # Keras's HDF5-era mode: shuffle whole batches; we shuffle rows
        _note("shuffle", "shuffle='batch' shuffles rows here, as shuffle=True does.")
        return True
    raise TypeError(f"shuffle must be True or False; got {value!r:.60} "
                    f"({type(value).__name__}).")


def _validation(args: Mapping[str, Any]) -> None:
    split, data = args.get("validation_split", 0.0), args.get("validation_data")
    if not isinstance(split, numbers.Real) or isinstance(split, bool):
        raise TypeError(f"validation_split must be a float in [0, 1) (the fraction of the "
                        f"arrays held out); got {split!r:.60} ({type(split).__name__}).")
    if not 0.0 <= split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1) (the fraction of the arrays held "
                         f"out, e.g. 0.2); got {split!r}.")
    if isinstance(data, dict) and ("y" in data or "y_val" in data):
        raise ValueError(f"validation_data must be (x_val, y_val) or (x_val, y_val, "
                         f"sample_weight_val), a tuple; got a dict with keys {sorted(data)}. "
                         f"Pass (x_val, y_val); a dict of arrays is read as x alone.")
    plain = isinstance(data, list) and data and all(  # [x_val, y_val] as Keras, not batches
        is_arrays(d) and not isinstance(d, tuple) for d in data)
    if (plain or isinstance(data, tuple) and data and is_arrays(data[0])) \
            and not 2 <= len(data) <= 3:
        raise ValueError(f"validation_data must be (x_val, y_val) or (x_val, y_val, "
                         f"sample_weight_val); got a {type(data).__name__} of {len(data)} "
                         f"item{'s' * (len(data) != 1)}. Pass a dataset or generator "
                         f"itself for batched validation input.")
    _positive("validation_steps", args.get("validation_steps"), "None for the whole input",
              " (batches per validation pass)")
    check_batch_size("validation_batch_size", args.get("validation_batch_size"))
    freq = args.get("validation_freq", 1)
    listed = isinstance(freq, (list, tuple, range, set)) and all(map(_is_int, freq)) and freq
    if _is_int(freq):
        _positive("validation_freq", freq, "a list of epochs", " (validate every N epochs)")
    elif not listed or min(freq) < 1:
        raise (ValueError if listed else TypeError)(
            f"validation_freq must be a positive int (validate every N epochs) or a list of "
            f"1-based epoch numbers such as [1, 5, 10]; got {freq!r:.60}.")


def check_class_weight(class_weight: Any, y: Any) -> dict[int, float] | None:
    """``class_weight`` checked against the labels, its keys as ints (Keras's ``int(key)``:
    ``"0"`` is class 0); Keras's ``ValueError`` for what it refuses."""
    if class_weight is None:
        return None
    if not isinstance(class_weight, Mapping):
        raise ValueError(f"class_weight must be a dict {{class index: weight}}, e.g. "
                         f"{{0: 1.0, 1: 5.0}}; got {type(class_weight).__name__}.")
    cleaned = {}
    for key, weight in class_weight.items():
        try:
            cls = int(key)
        except (TypeError, ValueError):
            cls = None
        if cls is None or isinstance(key, bool) or (isinstance(key, float) and key != cls):
            raise ValueError(f"class_weight keys must be class indices (ints), as the labels "
                             f"y hold them; got the key {key!r:.40}.")
        if not isinstance(weight, numbers.Real) or isinstance(weight, bool):
            raise ValueError(f"class_weight values must be numbers; class {key} has "
                             f"{weight!r:.40} ({type(weight).__name__}).")
        if not weight >= 0 or not np.isfinite(weight):
            raise ValueError(f"class_weight values must be finite and 0 or more; class {key} "
                             f"has {weight!r}.")
        cleaned[cls] = float(weight)
    if cleaned and isinstance(y, (np.ndarray, list)) and np.asarray(y).dtype.kind in "biuf":
        labels = np.asarray(y)
        if labels.ndim > 1 and labels.shape[-1] > 1:  # one-hot: the classes are the columns
            classes = set(range(labels.shape[-1]))
        else:
            classes = {int(v) for v in np.unique(np.round(labels))}
        unknown = sorted(k for k in cleaned if k not in classes)
        if unknown:  # Keras ignores them: a weight that would never apply is a mistake
            shown = sorted(classes)[:20]
            raise ValueError(f"class_weight has key(s) {unknown} that are not classes of y "
                             f"(classes found: {shown}{' ...' * (len(classes) > 20)}). Key "
                             f"class_weight by the class indices that y holds.")
    return cleaned


def check_sample_weight(weight: Any) -> None:
    """The values of ``sample_weight`` (its shape is the adapter's to check)."""
    if weight is None or not isinstance(weight, (np.ndarray, list)):
        return
    values = np.asarray(weight)
    if values.dtype.kind not in "biuf" or values.size == 0:
        return  # the adapter names what is wrong with it
    if not np.isfinite(values).all() or (values < 0).any():
        bad = int(np.flatnonzero(~(np.isfinite(values.ravel()) & (values.ravel() >= 0)))[0])
        raise ValueError(f"sample_weight must be finite and 0 or more; row {bad} has "
                         f"{float(values.ravel()[bad])}.")
    if not values.any():
        raise ValueError("sample_weight is 0 for every row, so no row would count in the loss; "
                         "give the rows to learn from a weight above 0.")


def check_fit(args: Mapping[str, Any]) -> tuple[list[Callback], bool, dict[int, float] | None]:
    """Checks ``fit``'s arguments: batch sizes, epochs, steps, the validation arguments,
    ``class_weight`` against ``y``, ``sample_weight``'s values, ``verbose``, ``callbacks``
    and ``shuffle``.

    Args:
        args: ``fit``'s ``locals()``.

    Returns:
        The callbacks as a flat list, ``shuffle`` as a bool and ``class_weight`` keyed by
        int class indices.

    Raises:
        TypeError, ValueError: the first argument outside what it accepts, named with the
            value given.
    """
    check_batch_size("batch_size", args.get("batch_size"))
    _non_negative_int("epochs", args.get("epochs", 1),
                      "the index of the last epoch; 0 trains nothing, as in Keras")
    _non_negative_int("initial_epoch", args.get("initial_epoch", 0),
                      "the epoch to start from")
    epochs, initial = args.get("epochs", 1), args.get("initial_epoch", 0)
    if epochs > 0 and initial >= epochs:
        warnings.warn(f"fit(epochs={epochs}, initial_epoch={initial}) trains nothing: epochs is "
                      f"the index of the last epoch (Keras), so pass epochs={initial} + the "
                      f"number of epochs to train.", UserWarning, stacklevel=3)
    _positive("steps_per_epoch", args.get("steps_per_epoch"),
              "None for a whole pass over the data", " (batches per epoch)")
    _validation(args)
    class_weight = check_class_weight(args.get("class_weight"), args.get("y"))
    check_sample_weight(args.get("sample_weight"))
    check_verbose(args.get("verbose", "auto"))
    return (check_callbacks(args.get("callbacks")), _shuffle(args.get("shuffle", True)),
            class_weight)


def check_evaluate(args: Mapping[str, Any]) -> list[Callback]:
    """Checks ``evaluate``'s arguments (``args``: its ``locals()``) as `check_fit`
    checks those of the same names; returns the callbacks as a flat list."""
    check_batch_size("batch_size", args.get("batch_size"))
    _positive("steps", args.get("steps"), "None for the whole input", " (batches to run)")
    check_sample_weight(args.get("sample_weight"))
    check_verbose(args.get("verbose", "auto"))
    return check_callbacks(args.get("callbacks"))


def check_predict(args: Mapping[str, Any]) -> list[Callback]:
    """Checks ``predict``'s arguments (``args``: its ``locals()``) as `check_evaluate`
    does; returns the callbacks as a flat list."""
    if hasattr(args.get("batch_size"), "shape"):  # predict(x, y), as evaluate is called
        raise TypeError(f"predict takes x only: its second argument is batch_size, which got "
                        f"an array of shape {args['batch_size'].shape}. Call model.predict(x), "
                        f"or model.evaluate(x, y) for the loss and metrics.")
    return check_evaluate({k: v for k, v in args.items() if k not in ("y", "sample_weight")})


def check_inputs(loss: Any, batch_size: int | None, *inputs: DataAdapter | None) -> None:
    """Checks the inputs once adapted: ``batch_size`` that an input which batches itself
    ignores (a warning, as Keras ignores it too), and labels that ``loss`` cannot take.

    Args:
        loss: the compiled loss (``None`` for ``predict``).
        batch_size: the ``batch_size`` argument.
        *inputs: the adapted ``x`` and, for ``fit``, ``validation_data`` (or ``None``).

    Raises:
        ValueError: fractional class ids given to ``sparse_categorical_crossentropy``
            (integral floats get a one-time note: the loss casts them).
    """
    for data, name in zip(inputs, ("x", "validation_data")):
        if data is None:
            continue
        # one batch smaller than batch_size: maybe a small unbatched input, batched with it
        whole = bool(batch_size) and data.steps == 1 and data.batch_size < batch_size
        if name == "x" and batch_size is not None and not isinstance(data, ArrayAdapter) \
                and data.batch_size != batch_size and not whole:
            warnings.warn(f"batch_size={batch_size} is ignored: the input yields batches of "
                          f"its own ({data.batch_size} rows in the first). As in Keras, "
                          f"batch_size applies to arrays and unbatched datasets; batch the "
                          f"dataset with {batch_size}, or leave batch_size out.", stacklevel=3)
        if getattr(loss, "name", None) == _SPARSE:
            labels = data.y if isinstance(data, ArrayAdapter) else data.sample_batch().y
            _sparse_labels(labels, "y" if name == "x" else "validation_data's y")


def _sparse_labels(labels: Any, name: str) -> None:
    if not isinstance(labels, np.ndarray):
        return
    if labels.ndim >= 2 and labels.shape[-1] > 1 and np.isin(labels, (0, 1)).all() \
            and (labels.sum(-1) == 1).all():
        raise ValueError(f"{name} looks one-hot (shape {labels.shape}), but loss='{_SPARSE}' "
                         f"takes class ids: use loss='categorical_crossentropy', or pass "
                         f"y.argmax(-1).")
    if labels.dtype.kind != "f":
        return
    fractional = labels[np.isfinite(labels) & (labels != np.round(labels))]
    if fractional.size:
        raise ValueError(f"loss='{_SPARSE}' takes integer class ids, but {name} holds "
                         f"fractional values such as {fractional.flat[0]:g} ({labels.dtype}). "
                         f"Pass class ids (y.astype(int)), or for one-hot or soft labels of "
                         f"shape (batch, classes) use loss='categorical_crossentropy'.")
    _note("sparse-float", f"{name} holds class ids as {labels.dtype}; {_SPARSE} casts them to "
                          f"int32. Pass integer labels (y.astype(int)) to silence this note.")


def _note(key: str, message: str) -> None:
    """A warning given once per process for ``key`` (pointing at the user's call of
    ``fit``/``evaluate``, three calls up)."""
    if key not in _noted:
        _noted.add(key)
        warnings.warn(message, UserWarning, stacklevel=5)
