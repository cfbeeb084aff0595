"""What a memory estimate compiles the train step for: the input's shapes and a training state.

An estimate needs one row of the training input (shapes and device dtypes, no data) and a
training state with its jitted train step. Once the model has trained, both are its own:
the rows ``fit`` saw (recorded by [`record_data`][easyfit.memory.subject.record_data]) and the
trainer's live state. Before
that, a few rows given to the estimate shape a state built on a throwaway
[`Trainer`][easyfit.training.trainer.Trainer] over the same module, and the module and optimizer
are put back as they were: the next ``fit`` starts exactly as it would have.

Examples:
    >>> with measured(model, x_train[:2], y_train[:2]) as subject:   # doctest: +SKIP
    ...     subject.trainer.state.params                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import TYPE_CHECKING, Any, Iterator

import jax
import numpy as np
from flax import nnx

from easyfit.data.dispatch import is_arrays
from easyfit.data.adapters import ArrayAdapter, DataAdapter
from easyfit.data.batch import Batch
from easyfit.data.on_device import table_shapes
from easyfit.modules.graph import GRAPH
from easyfit.training.trainer import Trainer

if TYPE_CHECKING:
    from easyfit.model import Model

__all__ = ["MEASURE_STEPS", "Subject", "device_struct", "forget_shapes", "has_shapes",
           "held_tables", "measured", "record_data"]

MEASURE_STEPS = 1000
"""Placeholder length of training for a state built only to be measured: schedule lengths
given as fractions need one, and no shape depends on it. The optimizer is unbuilt again
afterwards, so ``fit`` resolves the schedule with the real length."""

# Per model: one row of its training input (a Batch of ShapeDtypeStructs with no batch axis),
# recorded when fit or an estimate sees data, so later estimates need no rows.
_ROW_SPECS: "weakref.WeakKeyDictionary[Any, Batch]" = weakref.WeakKeyDictionary()
# Per model: the shapes of the training arrays its last fit held on the devices
# (``easyfit.data.on_device``), which the train step takes as inputs; absent otherwise.
_TABLES: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class Subject:
    """What to compile the train step for.

    Attributes:
        spec: one row of the training input: a ``Batch`` of ``jax.ShapeDtypeStruct`` with
            no batch axis.
        trainer: holds the training state and the jitted steps to compile: the model's own
            once it has trained, else a throwaway one over the same module.
    """

    spec: Batch
    trainer: Trainer


def device_struct(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    """``shape`` with ``dtype`` as placing makes it on the devices (numpy float64 / int64
    become float32 / int32 unless x64 is on)."""
    return jax.ShapeDtypeStruct(tuple(shape), jax.dtypes.canonicalize_dtype(dtype))


def _row_spec(data: DataAdapter) -> Batch:
    """One row of the batches ``data`` yields, as shapes and device dtypes."""
    if isinstance(data, ArrayAdapter):  # from the arrays: no rows gathered
        rows = lambda tree: jax.tree.map(lambda a: device_struct(a.shape[1:], a.dtype), tree)
        weight = np.float32 if data.sample_weight is None else \
            np.result_type(np.float32, data.sample_weight.dtype)
        return Batch(rows(data.x), rows(data.y), device_struct((), weight),
                     device_struct((), np.float32))
    batch = data.sample_batch()
    return jax.tree.map(lambda a: device_struct(np.shape(a)[1:], np.asarray(a).dtype), batch)


# -- what is remembered of a model's input ----------------------------------------------------


def record_data(model: "Model", data: DataAdapter) -> None:
    """Remembers the shapes of ``data`` (the input ``fit`` trains on) for later estimates:
    one row, and the arrays ``fit`` holds on the devices, if any."""
    trainer = model.trainer
    _ROW_SPECS[model] = _row_spec(data)
    _TABLES[model] = table_shapes(data, trainer.distribution,
                                  trainer.dispatch.one_step_per_call())


def has_shapes(model: "Model") -> bool:
    """Whether the shapes of the model's input are known (from ``fit`` or an estimate)."""
    return model in _ROW_SPECS


def held_tables(model: "Model") -> Any:
    """The shapes of the training arrays the model's last ``fit`` held on the devices, or
    ``None``."""
    return _TABLES.get(model)


def forget_shapes(model: "Model") -> None:
    """Forgets what was recorded of the model's input (as if it had seen none)."""
    _ROW_SPECS.pop(model, None)
    _TABLES.pop(model, None)


# -- a state to measure ------------------------------------------------------------------------


def _rows_of(x: Any) -> int:
    return int(np.shape(jax.tree.leaves(x)[0])[0])


def _sample_rows(spec: Batch, rows: int) -> tuple[Any, Any]:
    """Zero-filled ``(x, y)`` arrays of ``rows`` rows shaped as ``spec``."""
    zeros = lambda tree: jax.tree.map(lambda s: np.zeros((rows, *s.shape), s.dtype), tree)
    return zeros(spec.x), zeros(spec.y)


def _check_rows(x: Any, y: Any) -> None:
    if not is_arrays(x):
        raise TypeError(f"Pass a few input rows as numpy arrays (or a dict of arrays), e.g. "
                        f"x_train[:2], y_train[:2]; got x of type {type(x).__name__}.")
    if y is None:
        raise ValueError("Estimating training memory needs targets too: pass y with x, "
                         "e.g. model.estimate_memory(256, x_train[:2], y_train[:2]).")


@contextlib.contextmanager
def _scratch(trainer: Trainer) -> Iterator[Trainer]:
    """A throwaway trainer over ``trainer``'s module and settings, to build a state on.

    Building resolves the optimizer's schedule in place and reseeds the module's RNG
    streams; both are put back afterwards: an optimizer unbuilt before is unbuilt again
    (a built one, which a state-less trainer has only after a failed ``fit``, is reused
    as it is), and the module's variables other than parameters are restored.
    """
    module, options = trainer.module, trainer.options
    optimizer = options.optimizer
    was_built = optimizer.built
    saved_rest = jax.tree.map(lambda a: a, nnx.state(module, nnx.Not(nnx.Param), graph=GRAPH))
    scratch = Trainer(module, trainer.distribution)
    if was_built:
        scratch.options = options  # configure() would forget the built transformation
    else:
        scratch.configure(options)
    try:
        yield scratch
    finally:
        if not was_built:
            optimizer.reset()  # the next fit resolves the schedule with its real length
        nnx.update(module, saved_rest)


@contextlib.contextmanager
def measured(model: "Model", x: Any, y: Any) -> Iterator[Subject]:
    """The input row and a trainer with a state and steps to compile, for the duration.

    A model that has trained is measured as it is. One that has not gets a state built from
    ``x``/``y`` (or, without them, from the rows seen last) on a throwaway trainer, and its
    module and optimizer are put back as they were afterwards (weights, RNG streams, the
    unbuilt optimizer): the next ``fit`` starts exactly as it would have, its schedule
    resolved with the real length. A Linen module waiting for its first input is
    initialised from the rows, as ``fit`` would from its first batch.

    Raises:
        RuntimeError: the model is not compiled.
        ValueError: no rows given and none seen.
    """
    if not model.compiled:
        raise RuntimeError("You must call `model.compile(optimizer=..., loss=...)` before you "
                           "estimate training memory.")
    spec = None
    if x is not None:
        _check_rows(x, y)
        spec = _row_spec(ArrayAdapter(x, y, batch_size=_rows_of(x)))
        _ROW_SPECS[model] = spec
        _TABLES.pop(model, None)  # a few rows say nothing of the dataset fit will hold
    if spec is None:
        spec = _ROW_SPECS.get(model)
    trainer = model.trainer
    if trainer.state is not None and trainer.has_steps:
        if spec is None:
            raise ValueError(
                "The input shapes of this model are not known yet: pass a few training rows, "
                "e.g. model.estimate_memory(256, x_train[:2], y_train[:2]).")
        yield Subject(spec, trainer)
        return
    if spec is None:
        raise ValueError(
            "This model has not seen any data, so its training state and input shapes are "
            "unknown: pass a few training rows, e.g. model.estimate_memory(256, x_train[:2], "
            "y_train[:2]) or model.find_batch_size(x_train[:2], y_train[:2]), or call fit "
            "first.")
    if x is None:
        x, y = _sample_rows(spec, 1)
    replicas = trainer.distribution.num_replicas
    rows = -(-_rows_of(x) // replicas) * replicas  # a batch that splits over the devices
    data = ArrayAdapter(x, y, batch_size=rows)
    trainer.ensure_module(data)
    with _scratch(trainer) as scratch:
        scratch.build(data, MEASURE_STEPS)
        yield Subject(spec, scratch)
