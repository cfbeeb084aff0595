"""``steps_per_execution="auto"``: how many train steps to fuse into one dispatch.

A dispatch (one call of the jitted step, a ``lax.scan`` over ``k`` stacked batches) costs the
host a roughly fixed amount of work. For a large model that is nothing next to the step;
for a small one it is most of the time. ``"auto"`` measures it: the first epoch starts with
one step per dispatch, times a few steady-state steps, then fuses enough steps that one
dispatch does about ``TARGET_SECONDS`` of work. The batches already read are regrouped on
the fly, so nothing is read twice; the train step compiles at most twice per model (one
step, then ``k``), and a later ``fit`` reuses both.

Example:
    >>> choose_steps(step_seconds=0.0005, batch_bytes=8192, steps_per_epoch=1000)
    64
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np

from easyfit.data.batch import Batch, stack

TARGET_SECONDS = 0.02          # work per dispatch beyond which fusing more gains < ~5%
MAX_STEPS = 128                # keeps logs and callbacks reasonably fresh
MAX_CHUNK_BYTES = 256 * 2**20  # input bytes of one chunk held on the devices
PROBE_STEPS = 8                # steady-state steps timed before choosing


def choose_steps(step_seconds: float, batch_bytes: int, steps_per_epoch: int | None) -> int:
    """Steps per dispatch for a measured time per step (dispatch included).

    A power of two, so that nearby timings give the same answer; at most ``MAX_STEPS``, the
    steps of an epoch, and what ``MAX_CHUNK_BYTES`` of input allows.
    """
    if step_seconds >= TARGET_SECONDS:
        return 1
    k = 2 ** math.ceil(math.log2(TARGET_SECONDS / max(step_seconds, 1e-9)))
    k = min(k, MAX_STEPS, max(1, MAX_CHUNK_BYTES // max(batch_bytes, 1)))
    if steps_per_epoch:
        k = min(k, steps_per_epoch)
    return max(1, k)


def batch_bytes(chunk: Batch) -> int:
    """Bytes of one batch of a chunk (all of its arrays)."""
    return sum(leaf.nbytes // max(leaf.shape[0], 1) for leaf in jax.tree.leaves(chunk))


class StepTimer:
    """Times the first steady-state steps of an epoch, then settles ``k``.

    Args:
        steps_per_epoch: known steps per epoch (caps ``k``), or ``None``.

    Attributes:
        k: the chosen steps per execution, ``None`` until measured.
    """

    def __init__(self, steps_per_epoch: int | None):
        self.steps_per_epoch = steps_per_epoch
        self.k: int | None = None
        self._trained = 0
        self._start: float | None = None
        self._batch_bytes = 0

    def after_chunk(self, state: Any, chunk: Batch, steps: int) -> None:
        """Call after each dispatch while ``k`` is ``None``; waits for the device twice."""
        self._trained += steps
        self._batch_bytes = batch_bytes(chunk)
        if self._start is None:  # the first dispatch includes compiling: not timed
            jax.block_until_ready(state)
            self._start, self._trained = time.perf_counter(), 0
        elif self._trained >= PROBE_STEPS:
            self.settle(state)

    def settle(self, state: Any) -> None:
        """Chooses ``k`` from the steps timed so far (no-op if none were)."""
        if self.k is not None or self._start is None or self._trained == 0:
            return
        jax.block_until_ready(state)
        seconds = (time.perf_counter() - self._start) / self._trained
        k = choose_steps(seconds, self._batch_bytes, self.steps_per_epoch)
        if jax.process_count() > 1:  # every process must run the same programs: take 0's
            from jax.experimental import multihost_utils

            k = int(multihost_utils.broadcast_one_to_all(np.int32(k)))
        self.k = k


def compile_ahead(train: Callable, state: Any, chunk: Batch, k: int) -> None:
    """Compiles ``train`` for chunks of ``k`` batches shaped like ``chunk`` without running
    it, so that a later ``fit`` finds the program ready (no data is made)."""
    def widen(leaf: jax.Array) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((k, *leaf.shape[1:]), leaf.dtype, sharding=leaf.sharding)

    abstract = lambda tree: jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
    train.lower(abstract(state), jax.tree.map(widen, chunk)).compile()


def regroup(chunks: Iterable[tuple[Batch, list[int]]],
            size: Callable[[], int | None]) -> Iterator[tuple[Batch, list[int]]]:
    """Re-stacks one-batch chunks into chunks of ``size()`` batches once that is known.

    Until ``size()`` returns a number, chunks pass through unchanged; then single batches are
    collected and stacked (the last chunk filled with masked batches, as adapters do).
    """
    pending: list[tuple[Batch, int]] = []
    k = None
    for chunk, sizes in chunks:
        k = size()
        if not k or k == 1:
            yield chunk, sizes
            continue
        pending.append((jax.tree.map(lambda a: a[0], chunk), sizes[0]))
        if len(pending) == k:
            yield stack([b for b, _ in pending], k), [n for _, n in pending]
            pending = []
    if pending:
        yield stack([b for b, _ in pending], k), [n for _, n in pending]
