"""``steps_per_execution="auto"``: how many train steps to fuse into one dispatch.

A dispatch (one call of the jitted step, a loop over ``k`` stacked batches) has a fixed
cost: the host's work to launch it (~0.1-1 ms), and on a CPU also the step's scratch memory,
which XLA:CPU allocates afresh for each call (`call_cost`: a large scratch is mapped
from the OS and faulted in page by page every call, ~0.3 ms per MiB). For a large model the
host's work is nothing next to the step, but its scratch grows with it; for a small one the
host's work is most of the time. ``"auto"`` aims for about ``TARGET_SECONDS`` of work per
dispatch, or longer where the scratch costs more, so that a call's fixed cost stays under
``CALL_SHARE`` of it (at most ``MAX_CALL_SECONDS``), and starts in one of three ways
(`first_size`):

- **Fused from the start**, when the flops of the step say it is cheap and nothing in it is
  known to run slower in a loop body. The train step compiles once, from the training
  state's shapes before the state is made. The first steps are timed, and only a dispatch
  far over the target makes ``k`` smaller (a second compile).
- **One step per dispatch**, decided at once, where a loop body runs slower than the step
  alone (convolutions on XLA:CPU, ~10x) or the caps allow no more.
- **Measured from single steps** otherwise: one step per dispatch, a few steady-state steps
  timed, then the fused size they suggest timed too; the faster per step is kept. Batches
  already read are regrouped on the fly, so nothing is read twice. The train step compiles
  at most twice (one step, and the fused size).

The starting size is compiled ahead, from shapes, so its scratch size is known before the
first step runs. Later fits reuse what was compiled.

Examples:
    >>> choose_steps(step_seconds=0.0005, batch_bytes=8192, steps_per_epoch=1000)
    256
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.extend

from easyfit.data.batch import Batch
from easyfit.data.on_device import IndexedChunk, batches_of

__all__ = ["ASYNC_STEP_SECONDS", "CALL_SHARE", "FRESH_SCRATCH_BYTES", "FRESH_SECONDS_PER_BYTE",
           "MAX_CALL_SECONDS", "MAX_CHUNK_BYTES", "MAX_STEPS", "PEAK_FLOPS", "PROBE_STEPS",
           "SHRINK_FACTOR", "Start", "StepTimer", "TARGET_SECONDS", "batch_bytes", "call_cost",
           "choose_steps", "compile_ahead", "first_size", "step_flops", "trace_chunk"]

TARGET_SECONDS = 0.1           # host work per dispatch is ~0.1-1 ms: this keeps it < ~1%
# Accelerators run a dispatch while the host prepares the next (asynchronous dispatch), so the
# host's work costs nothing once a step outlasts it. A step this long runs one per dispatch:
# fusing it gains nothing and its loop costs (a 12-layer transformer's 67 ms step on an H200
# ran ~5% slower two to a dispatch than alone).
ASYNC_STEP_SECONDS = 0.01
CALL_SHARE = 0.02              # a dispatch's known fixed cost (call_cost) at most this share
MAX_CALL_SECONDS = 10.0        # keeps logs and callbacks reasonably fresh, ...
MAX_STEPS = 1024               # ... as does this
MAX_CHUNK_BYTES = 4 * 2**20    # input bytes of one chunk (a few are in flight at once)
PROBE_STEPS = 16               # steady-state steps timed per size, at least
SHRINK_FACTOR = 4              # a fused start shrinks only if a dispatch is this far over target
# An optimistic speed per platform, in flop/s: a step of f flops takes at least f / this.
PEAK_FLOPS = {"cpu": 1e12, "gpu": 1e15, "tpu": 1e15}
# glibc serves allocations above its largest dynamic mmap threshold (32 MiB) by mapping fresh
# pages from the OS each time; their first touch faults. Measured here (2-core VM): a
# transformer step's 362 MiB scratch took ~93k page faults and ~110 ms per call.
FRESH_SCRATCH_BYTES = 32 * 2**20
FRESH_SECONDS_PER_BYTE = 0.3e-3 / 2**20


def call_cost(scratch_bytes: int, platform: str) -> float:
    """Seconds a dispatch costs, beyond the host's work, that fusing steps amortises: on a CPU,
    mapping the step's scratch (``compiled.memory_analysis().temp_size_in_bytes``) afresh,
    which XLA:CPU allocates for each call (a loop over ``k`` steps reuses it). Accelerators
    keep their scratch in a pooled allocator: 0.

    Examples:
        >>> round(call_cost(362 * 2**20, "cpu"), 3)
        0.109
    """
    if platform != "cpu" or scratch_bytes < FRESH_SCRATCH_BYTES:
        return 0.0
    return scratch_bytes * FRESH_SECONDS_PER_BYTE


def choose_steps(step_seconds: float, batch_bytes: int, steps_per_epoch: int | None,
                 fixed_cost: float = 0.0, asynchronous: bool = False) -> int:
    """Steps per dispatch for a measured time per step (dispatch included).

    A dispatch should last ``TARGET_SECONDS``, or long enough for ``fixed_cost`` (seconds
    each dispatch costs: `call_cost`) to be at most ``CALL_SHARE`` of it, but not over
    ``MAX_CALL_SECONDS``. A power of two, so that nearby timings give the same answer; at
    most ``MAX_STEPS``, the steps of an epoch, and what ``MAX_CHUNK_BYTES`` of input allows.
    """
    target = min(MAX_CALL_SECONDS, max(TARGET_SECONDS, fixed_cost / CALL_SHARE))
    if step_seconds >= target or (asynchronous and step_seconds >= ASYNC_STEP_SECONDS):
        return 1
    k = 2 ** math.ceil(math.log2(target / max(step_seconds, 1e-9)))
    k = min(k, MAX_STEPS, _floor_pow2(MAX_CHUNK_BYTES // max(batch_bytes, 1)))
    if steps_per_epoch:
        k = min(k, steps_per_epoch)
    return max(1, k)


class Start(NamedTuple):
    """Where "auto" starts (`first_size`).

    Attributes:
        k: steps per dispatch to start at.
        lowered: the train step lowered for chunks of ``k`` batches (compile it ahead).
        settled: ``k`` is final (no timing needed): fused starts and measurements are not.
    """

    k: int
    lowered: Any
    settled: bool = False


def first_size(trace: Callable[[int], Any], batch_bytes: int, steps_per_epoch: int | None,
               platform: str) -> Start:
    """Where "auto" starts: a fused size, one step per dispatch for good, or one step per
    dispatch to measure from.

    It traces (does not compile) the step at the largest size the caps allow and counts the
    flops of one step in its jaxpr (`step_flops`). At ``PEAK_FLOPS`` the step takes at least
    ``flops / peak`` seconds; that floor caps the size as a measured time would. It keeps one
    step per dispatch without measuring when the caps allow no more, or when a loop body
    runs slower than the same step alone: XLA:CPU runs convolutions inside a loop ~10x
    slower (11x measured on a residual CNN), or, on an accelerator, when even the floor is
    ``ASYNC_STEP_SECONDS`` or more. It measures when no flops are found, or when even the
    floor makes one step a dispatch.

    Args:
        trace: ``k -> `` the train step traced for chunks of ``k`` batches
            (a ``jax.stages.Traced``).
        batch_bytes: input bytes of one batch.
        steps_per_epoch: known steps per epoch (caps the size), or ``None``.
        platform: the devices' platform (``jax.default_backend()``).
    """
    k = choose_steps(0.0, batch_bytes, steps_per_epoch)
    if k == 1:
        return Start(1, trace(1).lower(), settled=True)
    traced = trace(k)
    flops, convolves = step_flops(traced.jaxpr.jaxpr)
    if platform == "cpu" and convolves:
        return Start(1, trace(1).lower(), settled=True)
    floor = flops / PEAK_FLOPS[platform] if flops and platform in PEAK_FLOPS else None
    if platform != "cpu" and floor is not None and floor >= ASYNC_STEP_SECONDS:
        return Start(1, trace(1).lower(), settled=True)  # even the floor is a long step
    fitted = choose_steps(floor, batch_bytes, steps_per_epoch) if floor is not None else 1
    if fitted == 1:
        return Start(1, trace(1).lower())
    return Start(fitted, (traced if fitted == k else trace(fitted)).lower())


# Primitives that move or relabel data without arithmetic: no flops.
_LAYOUT = frozenset({
    "broadcast_in_dim", "concatenate", "convert_element_type", "copy", "copy_p",
    "dynamic_slice", "dynamic_update_slice", "expand_dims", "gather", "iota", "pad",
    "reshape", "rev", "scatter", "select_n", "slice", "squeeze", "transpose"})


def step_flops(jaxpr: Any) -> tuple[float, bool]:
    """Flops of one run of ``jaxpr``, counted as XLA's cost analysis counts them (a loop
    body once; a dot ``2 * out * contracted``; other arithmetic one per output element),
    and whether it has a convolution.

    Reading them off the jaxpr costs ~1 ms; XLA's cost analysis of the lowered step costs
    ~25 ms of a small model's first ``fit``.

    Examples:
        >>> a = jax.ShapeDtypeStruct((8, 4), "float32")
        >>> b = jax.ShapeDtypeStruct((4, 2), "float32")
        >>> step_flops(jax.make_jaxpr(lambda a, b: a @ b)(a, b).jaxpr)
        (128.0, False)
    """
    flops, convolves = 0.0, False
    for eqn in jaxpr.eqns:
        inner = list(jax.extend.core.jaxprs_in_params(eqn.params))
        if inner:
            counts = [step_flops(sub) for sub in inner]
            # one branch of a cond runs; a call or a loop body runs (is counted) once
            flops += max(c[0] for c in counts) if eqn.primitive.name == "cond" else \
                sum(c[0] for c in counts)
            convolves = convolves or any(c[1] for c in counts)
            continue
        out = sum(math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            flops += 2.0 * out * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            flops += 2.0 * out * math.prod(rhs) / out_features
            convolves = True
        elif name not in _LAYOUT:
            flops += out
    return flops, convolves


def _timed_within(steps: int) -> int:
    """The largest power-of-two size whose untimed first dispatch and timed dispatches (at
    least ``PROBE_STEPS`` steps) fit in ``steps``."""
    k = _floor_pow2(steps // 2)
    while k > 1 and k + max(k, PROBE_STEPS) > steps:
        k //= 2
    return k


def _floor_pow2(n: int) -> int:
    """The largest power of two <= ``n`` (1 for ``n < 2``)."""
    return 2 ** int(math.log2(n)) if n >= 2 else 1


def batch_bytes(chunk: Batch | IndexedChunk) -> int:
    """Input bytes of one batch of a chunk (all of its arrays; row numbers if indexed)."""
    return sum(leaf.nbytes // max(leaf.shape[0], 1)
               for leaf in jax.tree.leaves(batches_of(chunk)))


class StepTimer:
    """Measures one step per dispatch, then the fused size it suggests; keeps the faster.

    Fusing is not always faster: some backends run a loop body slower than the same program
    unrolled (XLA:CPU with convolutions, for one). So the candidate size is timed too, and
    ``k`` falls back to 1 when it does not beat one step per dispatch. After
    `start_fused`, it times that size only, to make it smaller if a dispatch is far
    over its target (see `choose_steps`). After `settle`, it times nothing.

    Args:
        steps_per_epoch: known steps per epoch (caps ``k``), or ``None``.
        fixed_cost: seconds each dispatch costs beyond its steps (`call_cost`),
            weighed when choosing ``k``.
        asynchronous: the device runs a dispatch while the host prepares the next (an
            accelerator): a step of ``ASYNC_STEP_SECONDS`` or more runs one per dispatch.

    Attributes:
        k: steps per dispatch to use now: ``None`` while measuring single steps, then the
            candidate while it is timed, then the decision.
        settled: whether ``k`` is final. A short epoch does not decide: the timer carries
            over to the next epoch until it has timed both sizes (a ``fit`` that ends
            before then keeps one step per dispatch).
    """

    def __init__(self, steps_per_epoch: int | None, fixed_cost: float = 0.0,
                 asynchronous: bool = False):
        self.steps_per_epoch, self.fixed_cost = steps_per_epoch, fixed_cost
        self.asynchronous = asynchronous
        self.k: int | None = None
        self.settled = False
        self._single: float | None = None  # seconds per step at one step per dispatch
        self._start: float | None = None
        self._timed = 0
        self._batch_bytes = 0
        self._compiled: set[int] = set()  # sizes whose first (compiling) dispatch has run
        self._warmup = 0  # fused dispatches still to run untimed (the first one is cold)
        self.fused_start = False  # started fused (first_size): no single steps to compare

    def settle(self, k: int) -> None:
        """Decides ``k`` without timing anything."""
        self.k, self.settled = k, True

    def start_fused(self, k: int) -> None:
        """Starts at ``k`` steps per dispatch, already compiled (see `first_size`)."""
        self.k, self.fused_start = k, True
        self._compiled.add(k)
        self._warmup = 1

    @property
    def regroups(self) -> bool:
        """Whether the input is read one batch at a time and regrouped into ``k`` (while
        single steps are measured and compared); else it is read in chunks of ``k``."""
        return not self.settled and not self.fused_start

    @property
    def untimed_k(self) -> int:
        """``k`` for a fit that ended before the timing did: the fused start stays, a
        measurement from single steps falls back to one step per dispatch."""
        return self.k if self.fused_start else 1

    def after_chunk(self, state: Any, chunk: Batch | IndexedChunk, steps: int,
                    steps_left: int | None = None) -> None:
        """Call after each dispatch until ``settled``; waits for the device a few times.

        ``steps_left``: steps the running ``fit`` has yet to take, if known: the candidate
        is small enough to be timed (after its untimed first dispatch) before the fit ends.
        """
        size = chunk.mask.shape[0]
        if not self._batch_bytes:
            self._batch_bytes = batch_bytes(chunk)
        if size != (self.k or 1):  # read ahead at the previous size: time from after it
            if self._start is not None:
                self.resume(state)
            return
        if size not in self._compiled:  # the first dispatch of a size compiles: not timed
            self._compiled.add(size)
            self.resume(state)
            return
        if self._start is None:  # the first dispatch after a pause
            self.resume(state)
            return
        if size > 1 and self._warmup:
            self._warmup -= 1
            self.resume(state)
            return
        self._timed += steps
        if self._timed >= PROBE_STEPS:  # fused: whole warm dispatches
            self._next(state, steps_left)

    def compiled(self, size: int, state: Any) -> None:
        """The loop compiled ``size`` ahead of its first dispatch: time from its second."""
        self._compiled.add(size)
        self._warmup = 1
        self.resume(state)

    def resume(self, state: Any) -> None:
        """Starts timing from now (after waiting for the device)."""
        jax.block_until_ready(state)
        self._start, self._timed = time.perf_counter(), 0

    def pause(self) -> None:
        """At the end of an epoch: what runs between epochs is not step time."""
        self._start = None

    def start_epoch(self, state: Any) -> None:
        """At the start of an epoch: times from here if the size in use is compiled."""
        if (self.k or 1) in self._compiled:
            self.resume(state)

    def _next(self, state: Any, steps_left: int | None) -> None:
        jax.block_until_ready(state)
        seconds = (time.perf_counter() - self._start) / self._timed
        self._start = None
        k = choose_steps(seconds, self._batch_bytes, self.steps_per_epoch, self.fixed_cost,
                         self.asynchronous)
        if self.fused_start:  # only a dispatch far over the target is made smaller
            self.k, self.settled = (k if k * SHRINK_FACTOR <= self.k else self.k), True
        elif self._single is None:
            self._single = seconds
            if steps_left is not None:
                k = min(k, _timed_within(steps_left))
            self.k, self.settled = k, k == 1
        else:  # keep the candidate only if it is faster per step
            self.k, self.settled = (self.k if seconds < self._single else 1), True


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                        tree)


def trace_chunk(train: Callable, state: Any, batch: Batch | IndexedChunk, k: int,
                sharding: Any) -> Any:
    """``train`` traced for chunks of ``k`` batches shaped like ``batch`` (arrays or shapes
    of one batch), placed with ``sharding`` (the row numbers of an indexed chunk are not
    placed: the step's call places them): nothing runs and no data is made."""
    def widen(sharding: Any) -> Callable[[Any], jax.ShapeDtypeStruct]:
        # dtypes as placing would make them: int64 -> int32
        return lambda leaf: jax.ShapeDtypeStruct(
            (k, *leaf.shape), jax.dtypes.canonicalize_dtype(leaf.dtype), sharding=sharding)

    if isinstance(batch, IndexedChunk):
        chunk = IndexedChunk(jax.tree.map(widen(None), batch.rows), _abstract(batch.tables))
    else:
        chunk = jax.tree.map(widen(sharding), batch)
    return train.trace(_abstract(state), chunk)


def compile_ahead(train: Callable, state: Any, chunk: Batch | IndexedChunk, k: int) -> None:
    """Compiles ``train`` for chunks of ``k`` batches shaped like ``chunk`` without running
    it, so that the first dispatch of that size can be timed."""
    one = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)
    if isinstance(chunk, IndexedChunk):
        batch, sharding = IndexedChunk(one(chunk.rows), chunk.tables), None
    else:
        batch, sharding = one(chunk), chunk.mask.sharding
    trace_chunk(train, state, batch, k, sharding).lower().compile()
