"""Memory you can see: per-device estimates of training, from the compiled train step.

An estimate compiles the train step for a batch size, from abstract inputs (shapes, dtypes
and shardings only: no batch is made, nothing runs), and reads XLA's own accounting of the
program, ``compiled.memory_analysis()``. Every figure is **per device**.

- ``estimate_memory`` (``model.estimate_memory``): a ``MemoryEstimate`` for one
  batch size; ``model.summary(batch_size=...)`` prints it under the layer table.
- ``find_batch_size`` (``model.find_batch_size``): the largest batch size whose
  estimate fits a per-device budget, found by compiling candidates, never by running them
  into an out-of-memory error.
- ``check_capacity``: a warning before training when the estimate exceeds the
  device's capacity (called by ``fit``).

Once the model has trained (its state is built), an estimate at the batch size ``fit``
uses costs nothing extra: ``lower(...).compile()`` and the jitted step share JAX's cache of
compiled programs, so whichever comes second reuses the other's compile. An estimate made
before any ``fit`` compiles a step for a throwaway state; ``fit`` compiles its own.

Example:
    >>> model.compile("adamw", "sparse_categorical_crossentropy")    # doctest: +SKIP
    >>> print(model.estimate_memory(256, x_train[:2], y_train[:2]))  # doctest: +SKIP
    >>> model.find_batch_size(x_train[:2], y_train[:2])              # doctest: +SKIP
    4096
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Iterator

import jax
import numpy as np
from flax import nnx

from easyfit.data.adapt import is_arrays
from easyfit.data.adapters import ArrayAdapter, DataAdapter
from easyfit.data.batch import Batch
from easyfit.data.on_device import as_fed, batches_of, table_shapes
from easyfit.training.steps_per_dispatch import trace_chunk
from easyfit.modules.graph import GRAPH
from easyfit.summary import _human

if TYPE_CHECKING:
    from easyfit.model import Model

__all__ = ["CHUNKS_AHEAD", "MemoryEstimate", "MemoryWarning", "check_capacity", "device_capacity",
           "estimate_memory", "find_batch_size"]

# Placeholder length of training for a state built only to be measured: schedule lengths
# given as fractions need one, and no shape depends on it. The optimizer is unbuilt again
# afterwards, so fit resolves the schedule with the real length.
_MEASURE_STEPS = 1000


CHUNKS_AHEAD = 3
"""Input chunks ``fit`` keeps on the device ahead of the running step: two dispatched and
waiting to run (``easyfit.loop.MAX_RUNNING`` is 3, the running one included) and one placed
by the prefetcher (``easyfit.data.prefetch``, ``depth=2``, the other slot held by the loop)."""


class MemoryWarning(UserWarning):
    """Training is estimated to need more memory per device than the device has."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Per-device memory of training at one batch size.

    Three parts: the training state and inputs (what the arrays hold), the compiled train
    step (XLA's ``compiled.memory_analysis()`` of one dispatch, ``steps_per_execution``
    batches), and what ``fit`` keeps on the device beside the step. ``total_bytes``
    adds the step's peak and those; ``fits`` compares it with the device's capacity.

    Attributes:
        batch_size: the global batch size (all devices together).
        steps_per_execution: batches per dispatch of the train step (its input chunk holds
            this many batches).
        devices: devices in the mesh.
        params_bytes: the trainable parameters held by one device.
        optimizer_bytes: the optimizer state held by one device (Adam: about 2x params).
        other_bytes: the rest of the training state: batch statistics, RNG counts, step
            counter and metric sums (RNG keys themselves are not counted: a few bytes).
        input_bytes: one dispatch's input chunk (``steps_per_execution`` batches of x, y,
            weights, mask; row numbers for ``x`` and ``y`` when the arrays are held on the
            devices) on one device.
        dataset_bytes: the training arrays ``fit`` holds on each device (arrays up to
            ``easyfit.data.on_device.DEVICE_DATA_BYTES``, where that pays; known from a
            ``fit`` on them, 0 before it or otherwise); the train step takes them as inputs.
        argument_bytes: the step's inputs: training state + one input chunk (+ the
            dataset held on the device).
        output_bytes: the step's outputs: the new training state.
        alias_bytes: outputs written into donated inputs (the state is donated, so this is
            about the state's size): counted once, not twice.
        temp_bytes: scratch memory of the step: activations kept for the backward pass,
            gradients, optimizer temporaries.
        generated_code_bytes: the compiled program itself (not in the peak).
        module_bytes: the module's own copy of its variables (parameters, batch statistics),
            which stays on the device while the state trains: ``fit`` writes the trained
            state back into the module and trains on from a copy of it.
        prefetch_bytes: input chunks placed on the device ahead of the step that needs them
            (``CHUNKS_AHEAD`` chunks).
        capacity_bytes: what one device can hold (``device.memory_stats()["bytes_limit"]``,
            the smallest over the mesh), or ``None`` where the backend does not say (CPU).
    """

    batch_size: int
    steps_per_execution: int
    devices: int
    params_bytes: int
    optimizer_bytes: int
    other_bytes: int
    input_bytes: int
    dataset_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    generated_code_bytes: int
    module_bytes: int
    prefetch_bytes: int
    capacity_bytes: int | None

    @property
    def peak_bytes(self) -> int:
        """Peak memory of the compiled train step on one device:
        ``argument_bytes + output_bytes - alias_bytes + temp_bytes``.

        Computed here rather than read from ``memory_analysis().peak_memory_in_bytes``,
        which on the CPU backend leaves out the temporaries.
        """
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def total_bytes(self) -> int:
        """What training needs on one device at the step's peak:
        ``peak_bytes + module_bytes + prefetch_bytes``.

        Not counted: the evaluation step of validation (it runs between train steps and
        usually needs less), arrays of your own on the device, and the allocator's
        fragmentation; leave some headroom for them.
        """
        return self.peak_bytes + self.module_bytes + self.prefetch_bytes

    @property
    def fits(self) -> bool | None:
        """``total_bytes <= capacity_bytes``; ``None`` when the capacity is unknown."""
        if self.capacity_bytes is None:
            return None
        return self.total_bytes <= self.capacity_bytes

    def __str__(self) -> str:
        k = self.steps_per_execution
        title = (f"Memory per device: training at batch size {self.batch_size:,} on "
                 f"{self.devices} device{'s' if self.devices > 1 else ''}"
                 f"{'' if k == 1 else f' ({k} batches per dispatch)'}")
        rows = [
            ("Parameters", self.params_bytes),
            ("Optimizer state", self.optimizer_bytes),
            ("Other state (batch stats, RNG, metrics)", self.other_bytes),
            (f"Input chunk ({k} batch{'es' if k > 1 else ''})", self.input_bytes),
            *([("Training arrays held on the device", self.dataset_bytes)]
              if self.dataset_bytes else []),
            ("Train step (compiled):", None),
            ("  arguments (state + inputs)", self.argument_bytes),
            ("  outputs (new state)", self.output_bytes),
            ("  aliased (donated state, counted once)", -self.alias_bytes),
            ("  temporaries (activations, gradients)", self.temp_bytes),
            ("  peak", self.peak_bytes),
            ("Beside the step: the module's variables", self.module_bytes),
            (f"Beside the step: {CHUNKS_AHEAD} input chunks prefetched", self.prefetch_bytes),
            ("Total while training", self.total_bytes),
        ]
        if self.capacity_bytes is None:
            capacity = "unknown on this backend"
        else:
            share = self.total_bytes / self.capacity_bytes if self.capacity_bytes else math.inf
            capacity = (f"{_human(self.capacity_bytes)} (total is {share:.0%}: "
                        f"{'fits' if self.fits else 'DOES NOT FIT'})")
        width = max(len(name) for name, _ in rows)
        size = lambda n: ("-" if n < 0 else "") + _human(abs(n))
        lines = [title, "-" * len(title)]
        lines += [name if value is None else f"{name.ljust(width)}  {size(value):>10}"
                  for name, value in rows]
        lines.append(f"{'Device capacity'.ljust(width)}  {capacity}")
        return "\n".join(lines)


# -- where the input shapes come from ---------------------------------------------------------

# Per model: one row of its training input (a Batch of ShapeDtypeStructs with no batch axis),
# recorded when fit or an estimate sees data, so later estimates need no rows.
_ROW_SPECS: "weakref.WeakKeyDictionary[Any, Batch]" = weakref.WeakKeyDictionary()
# Per model: the shapes of the training arrays its last fit held on the devices
# (``easyfit.data.on_device``), which the train step takes as inputs; absent otherwise.
_TABLES: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _sds(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    # numpy float64 / int64 become float32 / int32 on the device unless x64 is on.
    return jax.ShapeDtypeStruct(tuple(shape), jax.dtypes.canonicalize_dtype(dtype))


def _row_spec(data: DataAdapter) -> Batch:
    """One row of the batches ``data`` yields, as shapes and device dtypes."""
    if isinstance(data, ArrayAdapter):  # from the arrays: no rows gathered
        rows = lambda tree: jax.tree.map(lambda a: _sds(a.shape[1:], a.dtype), tree)
        weight = np.float32 if data.sample_weight is None else \
            np.result_type(np.float32, data.sample_weight.dtype)
        return Batch(rows(data.x), rows(data.y), _sds((), weight), _sds((), np.float32))
    batch = data.sample_batch()
    return jax.tree.map(lambda a: _sds(np.shape(a)[1:], np.asarray(a).dtype), batch)


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
def _measurable(model: "Model", x: Any, y: Any) -> Iterator[Batch]:
    """Makes sure the model has a training state and steps to compile; yields the input row.

    A model that has not trained yet gets them built from ``x``/``y`` for the duration
    and put back as it was afterwards (module, optimizer, RNG streams): the next ``fit``
    starts exactly as it would have, its schedule resolved with the real length.
    """
    model._require_compiled("estimate training memory")
    spec = None
    if x is not None:
        _check_rows(x, y)
        spec = _row_spec(ArrayAdapter(x, y, batch_size=_rows_of(x)))
        _ROW_SPECS[model] = spec
        _TABLES.pop(model, None)  # a few rows say nothing of the dataset fit will hold
    if spec is None:
        spec = _ROW_SPECS.get(model)
    if model._state is not None and model._steps is not None:
        if spec is None:
            raise ValueError(
                "The input shapes of this model are not known yet: pass a few training rows, "
                "e.g. model.estimate_memory(256, x_train[:2], y_train[:2]).")
        yield spec
        return
    if spec is None:
        raise ValueError(
            "This model has not seen any data, so its training state and input shapes are "
            "unknown: pass a few training rows, e.g. model.estimate_memory(256, x_train[:2], "
            "y_train[:2]) or model.find_batch_size(x_train[:2], y_train[:2]), or call fit "
            "first.")
    if x is None:
        x, y = _sample_rows(spec, 1)
    replicas = model._distribution.num_replicas
    rows = -(-_rows_of(x) // replicas) * replicas  # a batch that splits over the devices
    data = ArrayAdapter(x, y, batch_size=rows)

    saved = dict(model.__dict__)
    optimizer = model._optimizer
    saved_optimizer = dict(optimizer.__dict__)  # build() resolves the schedule in place
    saved_train = None if model._steps is None else model._steps.train
    module = model._module
    saved_rest = None if module is None else jax.tree.map(
        lambda a: a, nnx.state(module, nnx.Not(nnx.Param), graph=GRAPH))
    try:
        model._build(data, _MEASURE_STEPS)
        yield spec
    finally:
        if saved_train is not None:
            saved["_steps"].train = saved_train
        model.__dict__.clear()
        model.__dict__.update(saved)
        optimizer.__dict__.clear()
        optimizer.__dict__.update(saved_optimizer)
        if saved_rest is not None:
            nnx.update(module, saved_rest)


def _rows_of(x: Any) -> int:
    return int(np.shape(jax.tree.leaves(x)[0])[0])


# -- measuring ---------------------------------------------------------------------------------


def _device_bytes(leaf: Any) -> int:
    """Bytes of ``leaf`` held by one device (its shard); 0 for RNG keys."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return 0
    shape = leaf.sharding.shard_shape(leaf.shape)
    return math.prod(shape) * np.dtype(leaf.dtype).itemsize


def _tree_bytes(tree: Any) -> int:
    return sum(_device_bytes(leaf) for leaf in jax.tree.leaves(tree))


class _NoAnalysis(RuntimeError):
    pass


def device_capacity(model: "Model") -> int | None:
    """Bytes one device of the model's mesh can hold, or ``None`` where unknown.

    The smallest ``memory_stats()["bytes_limit"]`` over this process's devices of the
    mesh: on GPU, what XLA's allocator may use (by default 75% of the card, see
    ``XLA_PYTHON_CLIENT_MEM_FRACTION``); on TPU, the chip's HBM. The CPU backend reports
    nothing: ``None``. Compiles nothing.

    Example:
        >>> ef.memory.device_capacity(model)   # doctest: +SKIP
        106300440576
    """
    mesh = model._distribution.mesh
    limits = []
    for device in mesh.devices.flat:
        if device.process_index != jax.process_index():
            continue
        try:
            stats = device.memory_stats()
        except Exception:  # some backends do not implement it
            return None
        if not stats or not stats.get("bytes_limit"):
            return None
        limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def _estimate(model: "Model", batch_size: int, spec: Batch,
              capacity: int | None) -> MemoryEstimate:
    """Compiles the train step at ``batch_size`` from abstract inputs and reads its memory."""
    k = model._execution_steps() or 1  # the chunks fit feeds (1 while "auto" measures)
    state = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), model._state)
    sharding = model._distribution.chunk_sharding()
    tables = _TABLES.get(model)
    batch = as_fed(jax.tree.map(lambda s: _sds((batch_size, *s.shape), s.dtype), spec), tables)
    compiled = trace_chunk(model._steps.train, state, batch, k, sharding).lower().compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        raise _NoAnalysis(f"The {jax.default_backend()} backend gives no memory analysis of "
                          "compiled programs, so training memory cannot be estimated here.")
    input_bytes = _tree_bytes(jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((k, *s.shape), s.dtype, sharding=sharding),
        batches_of(batch)))
    return MemoryEstimate(
        batch_size=batch_size, steps_per_execution=k, devices=model._distribution.mesh.size,
        params_bytes=_tree_bytes(state.params), optimizer_bytes=_tree_bytes(state.opt_state),
        other_bytes=_tree_bytes((state.rest, state.step, state.totals)),
        input_bytes=input_bytes, dataset_bytes=0 if tables is None else _tree_bytes(tables),
        argument_bytes=int(analysis.argument_size_in_bytes),
        output_bytes=int(analysis.output_size_in_bytes),
        alias_bytes=int(analysis.alias_size_in_bytes),
        temp_bytes=int(analysis.temp_size_in_bytes),
        generated_code_bytes=int(analysis.generated_code_size_in_bytes),
        module_bytes=_tree_bytes((state.params, state.rest)),
        prefetch_bytes=CHUNKS_AHEAD * input_bytes,
        capacity_bytes=capacity)


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
            batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    return int(batch_size)


# -- the public functions --------------------------------------------------------------------


def estimate_memory(model: "Model", batch_size: int, x: Any = None,
                    y: Any = None) -> MemoryEstimate:
    """Per-device memory of training ``model`` at ``batch_size``, from the compiled train step.

    Compiles the train step for abstract inputs of that batch size (one compile, nothing
    runs, no batch is made) and reads ``compiled.memory_analysis()``. Before the model has
    seen data, give a few training rows: the state is then built from them for the
    measurement and put back afterwards (weights, RNG streams and optimizer unchanged).
    Later estimates (and ``model.summary(batch_size=...)``) remember the input shapes.

    Args:
        model: a compiled ``ef.Model``.
        batch_size: the global batch size (a multiple of the number of data-parallel
            devices).
        x: a few input rows (numpy arrays or a dict of them); only their shapes and dtypes
            matter. Needed before the model has seen data.
        y: matching targets.

    Returns:
        A ``MemoryEstimate``; ``print`` it for a table.

    Raises:
        ValueError: no state and no rows to build one from, or a batch size that does not
            split over the devices.

    Example:
        >>> est = model.estimate_memory(512, x_train[:2], y_train[:2])   # doctest: +SKIP
        >>> est.total_bytes, est.fits                                     # doctest: +SKIP
        (1834213376, True)
    """
    batch_size = _check_batch_size(batch_size)
    model._distribution.check_batch_size(batch_size)
    with _measurable(model, x, y) as spec:
        return _estimate(model, batch_size, spec, device_capacity(model))


def find_batch_size(model: "Model", x: Any = None, y: Any = None,
                    budget_bytes: int | None = None, max_batch_size: int = 65536) -> int:
    """The largest batch size whose estimated memory fits ``budget_bytes`` per device.

    Searches over multiples of the number of data-parallel devices: doubling until an
    estimate exceeds the budget, then bisecting between the last fit and the first miss.
    Each candidate costs one compile of the train step (no run, no out-of-memory trial);
    a search up to 65536 takes some 20 compiles. The result ``b`` fits and ``2 * b`` does
    not (checked), unless ``b`` is ``max_batch_size``.

    A batch size fits when its ``MemoryEstimate.total_bytes`` (the train step's peak,
    the module's variables and the prefetched inputs) is at most the budget. Not counted:
    the evaluation step, arrays of your own on the device, the allocator's fragmentation;
    pass a ``budget_bytes`` somewhat below the capacity to leave room for them.

    Args:
        model: a compiled ``ef.Model``.
        x: a few input rows, needed before the model has seen data.
        y: matching targets.
        budget_bytes: per-device budget; default: the device's capacity (required where
            the backend does not report one, e.g. CPU).
        max_batch_size: the largest batch size to consider.

    Returns:
        The batch size, a multiple of the number of data-parallel devices.

    Raises:
        ValueError: no budget and no known capacity, or not even the smallest batch fits.

    Example:
        >>> model.find_batch_size(x_train[:2], y_train[:2], budget_bytes=2**33)  # doctest: +SKIP
        2048
    """
    replicas = model._distribution.num_replicas
    top = int(max_batch_size) // replicas  # in units of `replicas` rows
    if top < 1:
        raise ValueError(f"max_batch_size={max_batch_size} is below the {replicas} "
                         "data-parallel devices: one row per device is the smallest batch.")
    if budget_bytes is None:
        budget_bytes = device_capacity(model)
        if budget_bytes is None:
            raise ValueError(f"The {jax.default_backend()} backend does not report how much "
                             "memory a device has: pass budget_bytes=, e.g. "
                             "model.find_batch_size(x[:2], y[:2], budget_bytes=4 * 2**30).")
    budget_bytes = int(budget_bytes)
    with _measurable(model, x, y) as spec:
        capacity = device_capacity(model)
        found: dict[int, MemoryEstimate] = {}

        def fits(units: int) -> bool:
            if units not in found:
                found[units] = _estimate(model, units * replicas, spec, capacity)
            return found[units].total_bytes <= budget_bytes

        if not fits(1):
            raise ValueError(
                f"Even a batch of {replicas} ({'one row per device' if replicas > 1 else 'one row'}"
                f") needs {_human(found[1].total_bytes)} per device, over the budget of "
                f"{_human(budget_bytes)}. Shard the parameters and optimizer state "
                "(ef.distribute.FSDP), use a smaller model, or raise the budget.\n"
                + str(found[1]))
        low, high = 1, None  # in units of `replicas` rows: low fits; high (if set) does not
        while True:
            while high is None and low < top:  # double until a miss (or the maximum)
                candidate = min(2 * low, top)
                low, high = (candidate, None) if fits(candidate) else (low, candidate)
            while high is not None and high - low > 1:  # bisect between a fit and a miss
                middle = (low + high) // 2
                low, high = (middle, high) if fits(middle) else (low, middle)
            # Estimates need not grow smoothly with the batch (XLA picks layouts per shape):
            # make sure twice the answer does not fit, else search on from there.
            if 2 * low > top or not fits(2 * low):
                return low * replicas
            low, high = 2 * low, None


def check_capacity(model: "Model", batch_size: int, data: DataAdapter | None = None,
                   stacklevel: int = 3) -> MemoryEstimate | None:
    """Warns (``MemoryWarning``) when training at ``batch_size`` is estimated to need
    more memory per device than the device has. Called by ``fit`` once the state is built.

    Where the backend reports no capacity (CPU), returns at once, compiling nothing. Else
    it compiles the train step for the batch size (the compile the first step would do
    anyway: the step reuses it) and compares the estimate's
    ``MemoryEstimate.total_bytes`` with the capacity.

    Args:
        model: a compiled ``ef.Model``.
        batch_size: the global batch size about to train.
        data: the training input's adapter; its shapes are remembered for later estimates
            (``model.summary(batch_size=...)`` after fit).
        stacklevel: passed to ``warnings.warn`` (3: the caller of ``fit``).

    Returns:
        The estimate, or ``None`` when the capacity is unknown.

    Example:
        >>> ef.memory.check_capacity(model, 4096)   # doctest: +SKIP
        MemoryWarning: Training at batch size 4096 needs about 97.1 GiB per device ...
    """
    if data is not None:
        _ROW_SPECS[model] = _row_spec(data)
        _TABLES[model] = table_shapes(data, model._distribution, model._one_step_per_call())
    capacity = device_capacity(model)
    if capacity is None or model not in _ROW_SPECS:
        return None
    try:
        estimate = estimate_memory(model, batch_size)
    except _NoAnalysis:
        return None
    if estimate.fits is False:
        warnings.warn(
            f"Training at batch size {batch_size} needs about {_human(estimate.total_bytes)} per "
            f"device (estimated from the compiled train step), but a device holds "
            f"{_human(capacity)}: expect an out-of-memory error. Pick a batch size that fits "
            f"with model.find_batch_size(), or see model.estimate_memory({batch_size}).",
            MemoryWarning, stacklevel=stacklevel)
    return estimate
