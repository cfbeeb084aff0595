"""Errors in the user's terms: a module, loss or metric that cannot take the data (a loss
that diverges is watched by `easyfit.training.divergence`).

The steps apply the user's module, loss and metrics inside `explained` (only while
they are traced: it costs nothing once compiled). When JAX or Flax refuses the shapes, the
error raised instead names the call (``model.fit``), the shapes and dtypes the module
received, and the likely cause (features that do not match the first layer, an example
without its batch axis, images without a channel axis), with JAX's own text as a last
"Details" line; the original stays chained (``raise ... from``). Errors raised by easyfit's
own checks or by the user's code pass through as they are.

Examples:
    >>> with explained("module", x=x, module=module):   # doctest: +SKIP
    ...     module(x)   # ModuleInputError: model.fit: x has 5 features where the first ...
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import math
import types
from typing import Any, Iterator

import jax
import flax.errors
import numpy as np
from flax import nnx

from easyfit.modules.graph import GRAPH

__all__ = ["DivergenceWarning", "LossInputError", "ModuleInputError", "ModuleOutputError",
           "call_name", "describe", "explained", "label", "user_stacklevel"]

# The calls a user makes, as the headline names them (the outermost one on the stack).
_CALLS = ("fit", "evaluate", "predict", "train_on_batch", "test_on_batch", "predict_on_batch",
          "find_lr", "estimate_memory", "find_batch_size", "summary", "export")
# Errors from these packages are explained; any other error is the user's own (or easyfit's).
_LIBRARIES = ("jax", "jaxlib", "flax", "numpy", "optax", "chex", "einops")
_DETAILS = 300  # characters of the original message kept in the "Details" line


class ModuleInputError(ValueError):
    """The module cannot be applied to the batch it was given (shapes or dtypes)."""


class LossInputError(ValueError):
    """A loss or metric cannot compare the labels with the module's outputs."""


class ModuleOutputError(TypeError):
    """The module returned something that is not arrays (``None``, a string, ...)."""


class DivergenceWarning(RuntimeWarning):
    """The training loss became NaN or infinite (reported once per ``fit``)."""


def call_name() -> str:
    """``model.fit`` (or the other public call running now); ``model.fit (validation_data)``
    when ``fit`` is validating; ``easyfit`` outside any."""
    frame, name, validating = inspect.currentframe(), None, False
    while frame is not None:
        code = frame.f_code.co_name if _ours(frame) else ""
        name = code if code in _CALLS else name
        validating = validating or code == "evaluate_loop"
        frame = frame.f_back
    if name is None:
        return "easyfit"
    return f"model.{name}" + (" (validation_data)" if validating and name == "fit" else "")


def _spec(leaf: Any) -> str:
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    if shape is None:
        return type(leaf).__name__
    return f"{np.dtype(dtype).name if dtype is not None else '?'} {tuple(shape)}"


def describe(tree: Any, name: str = "x", limit: int = 5) -> str:
    """``x float32 (8, 5)``, or ``x['a'] float32 (8, 5), x['b'] int32 (8,)`` for a dict.

    Examples:
        >>> describe({"a": np.zeros((8, 5), np.float32)})
        "x['a'] float32 (8, 5)"
    """
    if tree is None:
        return f"{name} None"
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    parts = [f"{name}{jax.tree_util.keystr(path)} {_spec(leaf)}" for path, leaf in leaves[:limit]]
    if len(leaves) > limit:
        parts.append(f"... ({len(leaves) - limit} more)")
    return ", ".join(parts) or f"{name} (empty {type(tree).__name__})"


def _details(error: BaseException) -> str:
    text = " ".join(str(error).split("\n")[0].split())
    if len(text) > _DETAILS:
        text = text[:_DETAILS - 3] + "..."
    return f"Details: {type(error).__name__}: {text}"


def _frames(error: BaseException) -> list[types.FrameType]:
    """The traceback's frames, innermost first."""
    frames, tb = [], error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames[::-1]


def _ours(frame: types.FrameType) -> bool:
    return frame.f_globals.get("__name__", "").partition(".")[0] == "easyfit"


def _from_library(frame: types.FrameType) -> bool:
    return frame.f_globals.get("__name__", "").split(".")[0] in _LIBRARIES


def _is_library_error(error: BaseException) -> bool:
    """Whether JAX or numpy refused a shape or dtype in ``error``: not a deliberate ``raise``
    of Flax, easyfit or the user's code (those say what they mean), nor JAX's tracing errors.

    JAX removes its own frames from a traceback that crosses its API (and says so in a note),
    so an error raised inside ``x @ w`` may end in the user's frame: the note tells it apart.
    """
    if isinstance(error, flax.errors.ScopeParamShapeError):  # Linen's kernel of other shape
        return True
    if not isinstance(error, (TypeError, ValueError, IndexError)) or isinstance(error, (
            ModuleInputError, LossInputError, ModuleOutputError,  # explained already
            jax.errors.JAXTypeError, jax.errors.JAXIndexError)):  # tracing: JAX explains those
        return False
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    top = "" if tb is None else tb.tb_frame.f_globals.get("__name__", "").split(".")[0]
    if top in ("jax", "jaxlib", "numpy"):
        return True
    line = "" if tb is None else linecache.getline(tb.tb_frame.f_code.co_filename,
                                                   tb.tb_lineno).strip()
    if line.startswith("raise"):  # a deliberate error, e.g. Flax's Dropout without rngs
        return False
    return top in _LIBRARIES or any("JAX" in note for note in getattr(error, "__notes__", ()))


# -- the module could not be applied -------------------------------------------------------


def _failing_layer(error: BaseException) -> tuple[Any, Any] | None:
    """``(layer, its input)``: the innermost Flax layer on the traceback, if any."""
    for frame in _frames(error):
        layer = frame.f_locals.get("self")
        value = frame.f_locals.get("inputs", frame.f_locals.get("x"))
        if isinstance(layer, nnx.Module) and _from_library(frame) and hasattr(value, "shape"):
            return layer, value
    return None


def _path_of(root: Any, layer: Any) -> str:
    for path, node in nnx.iter_graph(root, graph=GRAPH):
        if node is layer:
            return ".".join(str(p) for p in path) or "the module itself"
    return type(layer).__name__


def _fed_x(value: Any, x: Any) -> tuple[str, Any] | None:
    """``(name, leaf)``: the leaf of ``x`` that ``value`` is (or is a reshape of, as Conv adds
    a batch axis to an input without one), or ``None``: then the layer is not the first."""
    shape = tuple(getattr(value, "shape", ()))
    for path, leaf in jax.tree_util.tree_leaves_with_path(x):
        own = tuple(getattr(leaf, "shape", ()))
        if leaf is value or (own and len(shape) >= len(own) and shape[len(shape) - len(own):]
                             == own and all(size == 1 for size in shape[:len(shape) - len(own)])):
            return "x" + jax.tree_util.keystr(path), leaf
    return None


def _input_hint(layer: Any, x: str, leaf: Any, where: str) -> str | None:
    """The headline's cause when the first layer, ``where``, refused ``leaf``, named ``x``."""
    expects = getattr(layer, "in_features", None)
    shape = tuple(getattr(leaf, "shape", ()))
    if expects is None or not shape:
        return None
    kernel = getattr(layer, "kernel_size", None)
    got = shape[-1]
    if kernel is None:  # Linear-like: features on the last axis
        if len(shape) == 1:
            return (f"{x} reached the module with one axis only: the first axis is always "
                    f"the batch, so each example is a single number, but {where} expects "
                    f"{expects} features. If you passed one example ({expects} values), add "
                    f"its batch axis: {x}[None] (shape (1, {expects})) or {x}.reshape(1, -1).")
        if len(shape) > 2 and math.prod(shape[1:]) == expects:
            return (f"{x} has shape {shape}, but {where} expects {expects} features per "
                    f"example: flatten each example first, {x}.reshape(len({x}), -1) (or in the "
                    f"module's __call__).")
        return None if got == expects else (
            f"{x} has {got} features where {where} expects {expects}. Build the module for "
            f"{got} input features, or pass the {expects} columns it was built for.")
    spatial = len(kernel)
    if len(shape) == spatial + 1 and expects in (1, 3) and got != expects:
        return (f"the images in {x} have no channel axis: shape {shape}, where {where} "
                f"expects (batch, {', '.join(map(str, shape[1:]))}, {expects}), channels last. "
                f"Add the axis: {x}[..., None]" + (" (or repeat it to 3 channels)."
                                                if expects == 3 else "."))
    if len(shape) == spatial + 2 and shape[1] == expects and got != expects:
        order = (0, *range(2, spatial + 2), 1)
        return (f"{x} of shape {shape} looks channels-first, but Flax's Conv takes channels "
                f"last: (batch, ..., {expects}). Transpose it: {x}.transpose{order}.")
    return None if got == expects else (
        f"{x} has {got} channels (its last axis, shape {shape}) where {where} expects "
        f"{expects}. Pass images with {expects} channels, channels last.")


def _module_error(error: BaseException, call: str, module: Any, x: Any) -> ModuleInputError:
    received = describe(x)
    found = _failing_layer(error)
    if found is not None:
        layer, value = found
        path, kind = _path_of(module, layer), type(layer).__name__
        fed = _fed_x(value, x)
        hint = None if fed is None else _input_hint(layer, *fed,
                                                    f"the first layer (`{path}`, {kind})")
        if hint is not None:
            return ModuleInputError(f"{call}: {hint} The module received {received}.\n\n"
                                    f"{_details(error)}")
        expects = getattr(layer, "in_features", None)
        what = f", built for {expects} input features" if expects is not None else ""
        cause = (f"x does not have the shape `{path}` was built for" if fed is not None else
                 f"the layers before `{path}` give it another shape than it was built for: "
                 "check the sizes in the module's __init__ against its __call__")
        return ModuleInputError(
            f"{call}: the module's layer `{path}` ({kind}{what}) cannot take its input of "
            f"shape {_spec(value)}. The module received {received}. Likely cause: {cause}."
            f"\n\n{_details(error)}")
    return ModuleInputError(
        f"{call}: the module cannot be applied to the first batch: it received {received}. "
        "Check that x matches what the module expects: the batch on the first axis (one "
        "example needs x[None]), features on the last, images channels last (batch, height, "
        f"width, channels).\n\n{_details(error)}")


# -- a loss or a metric could not compare labels and outputs ----------------------------------


def label(kind: str, fn: Any) -> str:
    """How a message names a loss or metric: ``loss `mse```, ``metric `accuracy```.

    Examples:
        >>> label("loss", lambda y_true, y_pred: y_pred)
        'loss (your function)'
    """
    name = getattr(fn, "name", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>":
        return f"{kind} (your function)"
    return f"{kind} `{name}`"


def _loss_hint(y: Any, y_pred: Any) -> str:
    y_leaves, p_leaves = jax.tree.leaves(y), jax.tree.leaves(y_pred)
    if len(y_leaves) != 1 or len(p_leaves) != 1:
        return ("Give one label array per output, each shaped as its output (or as class "
                "ids for a sparse loss).")
    labels, out = y_leaves[0], p_leaves[0]
    ys, ps = tuple(labels.shape), tuple(out.shape)
    if ys[:1] != ps[:1]:
        return (f"y has {ys[0] if ys else 0} rows per batch where the outputs have "
                f"{ps[0] if ps else 0}: the module must keep the batch on the first axis.")
    integral = np.issubdtype(np.dtype(labels.dtype), np.integer)
    if len(ys) == len(ps) - 1 and integral and ps:
        return (f"y holds class ids where the outputs have {ps[-1]} columns: use "
                f"loss='sparse_categorical_crossentropy', or one-hot y to {ps[-1]} classes.")
    if ys and len(ys) == len(ps) and ys[-1] != ps[-1]:
        return (f"y has {ys[-1]} values per example where the module outputs {ps[-1]}: make "
                f"its last layer output {ys[-1]}, or pass labels of shape {ps}.")
    if ys and len(ys) == len(ps) + 1 and ys[-1] == 1:
        return "y has an extra axis of size 1: pass y.squeeze(-1) (or y[..., 0])."
    return f"Pass labels shaped as the outputs, {ps}, or a loss that takes y's shape {ys}."


def _loss_error(error: BaseException, call: str, what: str, y: Any, y_pred: Any) -> LossInputError:
    return LossInputError(
        f"{call}: the {what} cannot compare the labels with the module's outputs: "
        f"{describe(y, 'y')}; {describe(y_pred, 'outputs')}. {_loss_hint(y, y_pred)}\n\n"
        f"{_details(error)}")


@contextlib.contextmanager
def explained(stage: str, x: Any = None, module: Any = None, y: Any = None,
              y_pred: Any = None, what: str = "loss") -> Iterator[None]:
    """Explains a shape or dtype error of JAX or Flax raised inside the block.

    Args:
        stage: ``"module"`` (the module applied to ``x``) or ``"loss"`` (a loss or metric,
            named by ``what``, applied to labels ``y`` and outputs ``y_pred``).
        x: the input as the module receives it.
        module: the module being applied (its layers are named in the message).
        y: the labels.
        y_pred: the module's outputs.
        what: the loss or metric, as the message names it (``"loss `mse`"``).

    Raises:
        ModuleInputError: the module cannot take ``x``.
        LossInputError: the loss or metric cannot take ``y`` and ``y_pred``.
    """
    try:
        yield
    except Exception as error:
        if stage == "module" and isinstance(error, KeyError) and isinstance(x, dict) \
                and error.args and error.args[0] not in x:
            error.add_note(f"({call_name()}: the module read x[{error.args[0]!r}], but x has "
                           f"the keys {sorted(map(str, x))}. Pass x with that key, or name "
                           "the dataset's columns with x_key=.)")
        if not _is_library_error(error):
            raise
        call = call_name()
        if stage == "module":
            raise _module_error(error, call, module, x) from error
        raise _loss_error(error, call, what, y, y_pred) from error


def user_stacklevel() -> int:
    """``stacklevel`` for a warning about the user's call: the first frame outside easyfit
    and the libraries it calls through (JAX's tracing, ``contextlib``)."""
    frame, level = inspect.currentframe(), 0
    while frame is not None and (_ours(frame) or _from_library(frame) or
                                 frame.f_globals.get("__name__") in ("contextlib", "functools")):
        frame, level = frame.f_back, level + 1
    return max(level, 1)
