"""How many train steps each dispatch runs, for one compile: the number asked for, or what
``steps_per_execution="auto"`` measures.

The numbers and the measurement live in `easyfit.training.steps_per_dispatch`; this file
holds what one compile remembers of them (the choice, the sizes compiled, the timer while it
runs), starts "auto" from a compiled first size, and regroups batches while it measures.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import jax

from easyfit.data.adapters import DataAdapter
from easyfit.data.batch import Batch, stack
from easyfit.data.on_device import IndexedChunk, as_fed, batches_of, table_shapes
from easyfit.training.step import FlatStateJit
from easyfit.training.steps_per_dispatch import (StepTimer, call_cost, compile_ahead,
                                                 first_size, trace_chunk)

__all__ = ["DispatchPlan", "regroup"]


class DispatchPlan:
    """Train steps per dispatch for one compile.

    Args:
        requested: ``compile(steps_per_execution=...)``: a positive int or ``"auto"``.

    Attributes:
        requested: as given.
        chosen: what "auto" settled on (``None`` until it has).
        compiled_sizes: chunk sizes the train step was compiled for by "auto".
        timer: "auto"'s measurement while it lasts.
        every_batch: the running ``fit`` has callbacks that must see every batch.
    """

    def __init__(self, requested: int | str = "auto"):
        self.requested = requested
        self.chosen: int | None = None
        self.compiled_sizes: set[int] = set()
        self.timer: StepTimer | None = None
        self.every_batch = False

    @property
    def auto(self) -> bool:
        return self.requested == "auto"

    def steps(self) -> int | None:
        """Steps per dispatch: the compiled number, what "auto" chose, or ``None`` while
        "auto" has not measured yet. "auto" runs one step per dispatch in a ``fit`` whose
        callbacks must see every batch, whatever it chose in other fits."""
        if self.auto:
            return 1 if self.every_batch else self.chosen
        return int(self.requested)

    def one_step_per_call(self) -> bool:
        """One step per call for the whole running ``fit``, set by the user (the number 1,
        or "auto" with a callback that must see every batch), not measured by "auto"."""
        return self.requested == 1 or (self.auto and self.every_batch)

    def undecided(self) -> bool:
        """Whether "auto" has yet to choose how many steps to fuse.

        With several processes it keeps one step per dispatch: where "auto" regroups batches
        depends on each process's timing, and they must all run the same programs (pass a
        number to fuse there).
        """
        if self.auto and self.chosen is None and jax.process_count() > 1:
            self.chosen = 1
        return not self.steps()

    def eval_steps(self) -> int:
        """Batches per chunk for evaluation and prediction: the train step's (while "auto" is
        still timing, the size it runs), so that they compile once per batch size."""
        return self.steps() or (self.timer.untimed_k if self.timer is not None else 1)

    def start_timer(self, train_step: FlatStateJit, distribution: Any, train: DataAdapter,
                    state: Any, batch: Batch) -> StepTimer:
        """Starts "auto"'s timer where `first_size`
        says; that size is compiled here, and its scratch size tells what a dispatch costs.
        ``state`` may be the training state's arrays or only their shapes; ``batch`` is one
        batch of ``train``, as the state was shaped by.

        Compiling in a background thread while the state is made would save ~0.02 s of a
        small model's first epoch on two cores, and add 30-40 MiB to the peak memory: two
        compilers' scratch at once.
        """
        sharding = distribution.chunk_sharding()
        batch = as_fed(batch, table_shapes(train, distribution, self.one_step_per_call()))
        platform = jax.default_backend()
        start = first_size(
            lambda k: trace_chunk(train_step, state, batch, k, sharding),
            sum(leaf.nbytes for leaf in jax.tree.leaves(batches_of(batch))), train.steps,
            platform)
        analysis = start.lowered.compile().memory_analysis()
        scratch = getattr(analysis, "temp_size_in_bytes", 0) or 0  # None where not reported
        self.compiled_sizes.add(start.k)
        timer = StepTimer(train.steps, call_cost(scratch, platform),
                          asynchronous=platform != "cpu")
        if start.k > 1:
            timer.start_fused(start.k)
        elif start.settled:
            timer.settle(1)
        self.timer = timer
        return timer

    def measure(self, train_step: FlatStateJit, state: Any, chunk: Batch | IndexedChunk,
                steps: int, steps_left: int | None) -> None:
        """Times the dispatch just made; compiles a candidate size, once chosen, ahead of its
        first dispatch (the input thread compiles the on-device gather, if any, meanwhile)."""
        timer = self.timer
        timer.after_chunk(state, chunk, steps, steps_left)
        if timer.k and timer.k not in self.compiled_sizes:
            compile_ahead(train_step, state, chunk, timer.k)
            self.compiled_sizes.add(timer.k)
            timer.compiled(timer.k, state)

    def end_epoch(self, sizes_run: set[int]) -> bool:
        """Records an epoch's chunk sizes; returns whether "auto" has settled (its timer
        is then dropped)."""
        self.compiled_sizes |= sizes_run
        if self.timer is not None and self.timer.settled:
            self.chosen, self.timer = self.timer.k, None
            return True
        return False

    def end_fit(self) -> None:
        """A fit too short to finish timing keeps the size it ran untimed."""
        if self.timer is not None:
            self.chosen, self.timer = self.timer.untimed_k, None


def regroup(chunks: Iterable[tuple[Batch, list[int]]],
            size: Callable[[], int | None]) -> Iterator[tuple[Batch, list[int]]]:
    """Re-stacks one-batch chunks into chunks of ``size()`` batches (1 while ``None``).

    When the size changes, the batches collected so far go out at the old size (filled up
    with masked batches, as adapters do), so only sizes already compiled are used.
    """
    pending: list[tuple[Batch, int]] = []
    k = 1
    for chunk, sizes in chunks:
        new_k = size() or 1
        if new_k != k and pending:
            yield stack([b for b, _ in pending], k), [n for _, n in pending]
            pending = []
        k = new_k
        if k == 1:
            yield chunk, sizes
            continue
        pending.append((jax.tree.map(lambda a: a[0], chunk), sizes[0]))
        if len(pending) == k:
            yield stack([b for b, _ in pending], k), [n for _, n in pending]
            pending = []
    if pending:
        yield stack([b for b, _ in pending], k), [n for _, n in pending]
