"""Per-device memory of training at one batch size, read from the compiled train step.

An estimate compiles the train step for a batch size, from abstract inputs (shapes, dtypes
and shardings only: no batch is made, nothing runs), and reads XLA's own accounting of the
program, ``compiled.memory_analysis()``. Every figure is **per device**.

- [`estimate_memory`][easyfit.memory.estimate.estimate_memory] (``model.estimate_memory``): a
[`MemoryEstimate`][easyfit.memory.estimate.MemoryEstimate] for one
  batch size; ``model.summary(batch_size=...)`` prints it under the layer table.
- [`check_capacity`][easyfit.memory.estimate.check_capacity]: a warning before training when the
estimate exceeds the
  device's capacity (called by ``fit``).
- [`device_capacity`][easyfit.memory.estimate.device_capacity]: what one device of the model's
mesh can hold.

Once the model has trained (its state is built), an estimate at the batch size ``fit``
uses costs nothing extra: ``lower(...).compile()`` and the jitted step share JAX's cache of
compiled programs, so whichever comes second reuses the other's compile. An estimate made
before any ``fit`` compiles a step for a throwaway state (see
[`easyfit.memory.subject`][easyfit.memory.subject]);
``fit`` compiles its own.

Examples:
    >>> model.compile("adamw", "sparse_categorical_crossentropy")    # doctest: +SKIP
    >>> print(model.estimate_memory(256, x_train[:2], y_train[:2]))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from easyfit.data.adapters import DataAdapter
from easyfit.data.on_device import as_fed, batches_of
from easyfit.memory.subject import (Subject, device_struct, has_shapes, held_tables, measured,
                                    record_data)
from easyfit.summary import human_bytes
from easyfit.training.steps_per_dispatch import trace_chunk

if TYPE_CHECKING:
    from easyfit.model import Model

__all__ = ["CHUNKS_AHEAD", "MemoryEstimate", "MemoryWarning", "check_capacity", "device_capacity",
           "estimate_memory", "measure"]


CHUNKS_AHEAD = 3
"""Input chunks ``fit`` keeps on the device ahead of the running step: two dispatched and
waiting to run (``easyfit.training.loop.MAX_RUNNING`` is 3, the running one included) and one placed
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
            capacity = (f"{human_bytes(self.capacity_bytes)} (total is {share:.0%}: "
                        f"{'fits' if self.fits else 'DOES NOT FIT'})")
        width = max(len(name) for name, _ in rows)
        size = lambda n: ("-" if n < 0 else "") + human_bytes(abs(n))
        lines = [title, "-" * len(title)]
        lines += [name if value is None else f"{name.ljust(width)}  {size(value):>10}"
                  for name, value in rows]
        lines.append(f"{'Device capacity'.ljust(width)}  {capacity}")
        return "\n".join(lines)


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

    Examples:
        >>> ef.memory.device_capacity(model)   # doctest: +SKIP
        106300440576
    """
    mesh = model.trainer.distribution.mesh
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


def measure(model: "Model", subject: Subject, batch_size: int,
            capacity: int | None) -> MemoryEstimate:
    """Compiles the train step of ``subject`` at ``batch_size`` from abstract inputs and
    reads its memory (``capacity``: the figure to compare with, or ``None``).

    Raises:
        RuntimeError: the backend gives no memory analysis of compiled programs.
    """
    k = model.trainer.dispatch.steps() or 1  # the chunks fit feeds (1 while "auto" measures)
    trainer = subject.trainer
    distribution = trainer.distribution
    state = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), trainer.state)
    sharding = distribution.chunk_sharding()
    tables = held_tables(model)
    batch = as_fed(jax.tree.map(lambda s: device_struct((batch_size, *s.shape), s.dtype),
                                subject.spec), tables)
    compiled = trace_chunk(trainer.steps.train, state, batch, k, sharding).lower().compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        raise _NoAnalysis(f"The {jax.default_backend()} backend gives no memory analysis of "
                          "compiled programs, so training memory cannot be estimated here.")
    input_bytes = _tree_bytes(jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((k, *s.shape), s.dtype, sharding=sharding),
        batches_of(batch)))
    return MemoryEstimate(
        batch_size=batch_size, steps_per_execution=k, devices=distribution.mesh.size,
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

    Examples:
        >>> est = model.estimate_memory(512, x_train[:2], y_train[:2])   # doctest: +SKIP
        >>> est.total_bytes, est.fits                                     # doctest: +SKIP
        (1834213376, True)
    """
    batch_size = _check_batch_size(batch_size)
    model.trainer.distribution.check_batch_size(batch_size)
    with measured(model, x, y) as subject:
        return measure(model, subject, batch_size, device_capacity(model))


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

    Examples:
        >>> ef.memory.check_capacity(model, 4096)   # doctest: +SKIP
        MemoryWarning: Training at batch size 4096 needs about 97.1 GiB per device ...
    """
    if data is not None:
        record_data(model, data)
    capacity = device_capacity(model)
    if capacity is None or not has_shapes(model):
        return None
    try:
        estimate = estimate_memory(model, batch_size)
    except _NoAnalysis:
        return None
    if estimate.fits is False:
        warnings.warn(
            f"Training at batch size {batch_size} needs about "
            f"{human_bytes(estimate.total_bytes)} per device (estimated from the compiled "
            f"train step), but a device holds {human_bytes(capacity)}: expect an "
            f"out-of-memory error. Pick a batch size that fits with model.find_batch_size(), "
            f"or see model.estimate_memory({batch_size}).",
            MemoryWarning, stacklevel=stacklevel)
    return estimate
