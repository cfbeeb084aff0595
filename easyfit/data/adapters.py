"""Data adapters: any supported input -> fixed-shape host chunks of batches.

An adapter yields, per epoch, chunks of ``k`` stacked [`Batch`][easyfit.data.batch.Batch]es
(``k = steps_per_execution``) plus the number of real batches in each chunk. Every batch has
the same shape; the last one of an epoch is padded and masked. Which adapter an input gets
is decided by [`easyfit.data.dispatch.adapt`][easyfit.data.dispatch.adapt].
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

from easyfit.data.consistency import StreamSpec
from easyfit.data.batch import (Batch, check_sample_weight, count_rows, make_batch,
                                sample_weights, scale_rows, stack, take_rows)

__all__ = ["ArrayAdapter", "DataAdapter", "IterableAdapter", "Keys"]


def _numeric(tree: Any, what: str) -> Any:
    """Converts leaves to numpy arrays, refusing what is not numbers."""

    def convert(leaf):
        array = np.asarray(leaf)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"`{what}` must hold numbers, but an array has dtype {array.dtype}. "
                            "Convert it first (e.g. encode strings as integer ids, or "
                            "`np.asarray(a, dtype=np.float32)`).")
        return array

    return jax.tree.map(convert, tree)


def _class_weights(y: np.ndarray, class_weight: dict[int, float]) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim > 1 and labels.shape[-1] > 1:  # one-hot
        labels = labels.argmax(-1)
    labels = labels.reshape(labels.shape[0], -1)[:, 0].astype(np.int64)
    table = np.ones(max(labels.max(initial=0), max(class_weight, default=0)) + 1, np.float32)
    for cls, weight in class_weight.items():
        table[int(cls)] = weight
    return table[labels]


def _local_rows(tree: Any, process_index: int, process_count: int) -> Any:
    """This process's share of a global batch: its contiguous block of rows."""
    if process_count == 1:
        return tree
    rows = count_rows(tree)
    block = np.array_split(np.arange(rows), process_count)[process_index]
    return jax.tree.map(lambda a: a[block], tree)


class DataAdapter:
    """Base class: subclasses yield host batches; chunks are built here.

    Attributes:
        batch_size: rows per batch (every batch has this many, padding included), global:
            with several processes each one feeds ``batch_size // process_count`` rows of it.
        steps: batches per epoch, or ``None`` if unknown until the input runs out.
        process_index: this process (``jax.process_index()``).
        process_count: processes feeding the global batch (``jax.process_count()``).
        pure_epochs: each epoch's batches depend on its number only, so the next epoch can
            be read before this one ends (arrays; re-iterable inputs, which start over each
            epoch); not so for a generator, whose batches read ahead would be lost if
            training stops.
        role: the argument the input came from (``"x"``, ``"validation_data"``), named in
            the note added to an error raised by the user's iterator.
    """

    role: str = "x"
    batch_size: int
    steps: int | None
    exhausted: bool = False
    pure_epochs: bool = False
    process_index: int = 0
    process_count: int = 1

    def batches(self, epoch: int) -> Iterator[tuple[Batch, int]]:
        """Yields ``(batch, real_rows)`` for one epoch."""
        raise NotImplementedError

    def sample_x(self) -> Any:
        """A few input rows, to initialise a module that needs an example (Linen)."""
        return self.sample_batch().x

    def sample_batch(self) -> Batch:
        """A batch shaped like every batch of this input, read without consuming any."""
        raise NotImplementedError

    def device_tables(self, limit_bytes: int) -> tuple[Any, Any] | None:
        """``(x, y)`` if the whole dataset can live on each device (at most ``limit_bytes``),
        so that chunks carry row numbers only (``chunks(..., as_index=True)``); ``None``
        here: only in-memory arrays can."""
        return None

    def chunks(self, epoch: int, k: int, start: int = 0) -> Iterator[tuple[Batch, list[int]]]:
        """Yields ``(chunk, real_rows_per_batch)``: ``k`` stacked batches per chunk, from batch
        ``start`` of the epoch (earlier batches are read and skipped)."""
        pending: list[tuple[Batch, int]] = []
        for item in itertools.islice(self.batches(epoch), start, None):
            pending.append(item)
            if len(pending) == k:
                yield stack([b for b, _ in pending], k), [n for _, n in pending]
                pending = []
        if pending:
            yield stack([b for b, _ in pending], k), [n for _, n in pending]


class ArrayAdapter(DataAdapter):
    """numpy arrays or pytrees of arrays (a dict of inputs, say), batched and shuffled here.

    Each epoch's order comes from ``(seed, epoch)``, so a run is reproducible and an epoch's
    order can be recomputed to resume mid-epoch.
    """

    pure_epochs = True

    def __init__(self, x: Any, y: Any = None, sample_weight: Any = None,
                 class_weight: dict[int, float] | None = None, batch_size: int | None = 32,
                 shuffle: bool = False, seed: int = 0, steps: int | None = None,
                 process_index: int = 0, process_count: int = 1):
        self.process_index, self.process_count = process_index, process_count
        self.x = _numeric(x, "x")
        self.y = None if y is None else _numeric(y, "y")
        self.num_rows = count_rows(self.x)
        if self.y is not None:
            count_rows(self.y, "y")  # no single values among the labels
        for name, tree in (("x", self.x), ("y", self.y)):
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                where = name + jax.tree_util.keystr(path)
                if leaf.shape[:1] != (self.num_rows,):
                    raise ValueError(
                        f"x and y must have the same number of rows: x has {self.num_rows}, "
                        f"{where} has {leaf.shape[0]}. Pass matching arrays.")
        if self.num_rows == 0:
            raise ValueError("The input is empty (0 rows). Pass at least one example.")
        weight = None if sample_weight is None else \
            sample_weights(_numeric(sample_weight, "sample_weight"))
        if weight is not None:
            check_sample_weight(weight, self.num_rows, self.y)
        self.user_weight, self.class_weight = weight, class_weight
        if class_weight:
            if self.y is None or len(jax.tree.leaves(self.y)) != 1:
                raise ValueError("class_weight needs a single array of labels `y`.")
            cw = _class_weights(jax.tree.leaves(self.y)[0], class_weight)
            weight = cw if weight is None else scale_rows(cw, weight)
        self.sample_weight = weight
        self.batch_size = int(batch_size or 32)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.shuffle, self.seed = shuffle, seed
        full = -(-self.num_rows // self.batch_size)
        self.max_steps = steps
        self.steps = full if steps is None else min(int(steps), full)

    def sample_batch(self) -> Batch:
        return next(self.batches(0))[0]

    def epoch_span(self, epoch: int) -> tuple[int, int, int]:
        """``(pass over the data, first batch in it, batches)`` of ``fit``'s epoch ``epoch``.

        As Keras: with a ``steps_per_epoch`` shorter than the data, epochs continue through
        it, and an epoch ends early where a pass ends (10 batches at 4 per epoch give epochs
        of 4, 4, 2, then a new shuffled pass).

        Examples:
            >>> data = ArrayAdapter(np.zeros((80, 1)), batch_size=8, steps=4)
            >>> [data.epoch_span(e) for e in range(4)]
            [(0, 0, 4), (0, 4, 4), (0, 8, 2), (1, 0, 4)]
        """
        full = -(-self.num_rows // self.batch_size)
        per_pass = -(-full // self.steps)
        first = (epoch % per_pass) * self.steps
        return epoch // per_pass, first, min(self.steps, full - first)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def batches(self, epoch: int) -> Iterator[tuple[Batch, int]]:
        for chunk, sizes in self.chunks(epoch, 1):
            yield jax.tree.map(lambda a: a[0], chunk), sizes[0]

    def device_tables(self, limit_bytes: int) -> tuple[Any, Any] | None:
        """``(x, y)`` with one process, labels, and at most ``limit_bytes`` in all."""
        size = sum(leaf.nbytes for leaf in jax.tree.leaves((self.x, self.y)))
        if self.process_count > 1 or self.y is None or size > limit_bytes:
            return None
        return self.x, self.y

    def chunks(self, epoch: int, k: int, start: int = 0,
               as_index: bool = False) -> Iterator[tuple[Batch, list[int]]]:
        """One gather per chunk (not per batch): ``k * batch_size`` rows, then a reshape.

        With ``as_index``, ``x`` and ``y`` are the int32 row numbers instead of the rows, for
        a step that gathers from
        [`device_tables`][easyfit.data.adapters.ArrayAdapter.device_tables].
        """
        data_pass, offset, steps = self.epoch_span(epoch)
        order, size = self._order(data_pass), self.batch_size
        for first in range(offset + start, offset + steps, k):
            count = min(k, offset + steps - first)
            rows = order[first * size:(first + count) * size]
            index = np.resize(rows, k * size)  # padding repeats real rows, weight 0
            mask = (np.arange(k * size) < len(rows)).astype(np.float32)
            local = size // self.process_count  # this process's block of every batch
            cols = slice(self.process_index * local, (self.process_index + 1) * local)
            index, mask = index.reshape(k, size)[:, cols].ravel(), mask.reshape(k, size)[:, cols]
            weight = mask if self.sample_weight is None else scale_rows(
                mask, self.sample_weight[index].reshape(k, local, *self.sample_weight.shape[1:]))
            if as_index:
                row_ids = index.astype(np.int32).reshape(k, local)
                chunk = Batch(row_ids, row_ids, weight, mask)
            else:
                take = lambda tree: jax.tree.map(
                    lambda a: take_rows(a, index).reshape(k, local, *a.shape[1:]), tree)
                chunk = Batch(take(self.x), take(self.y), weight, mask)
            full, last = divmod(len(rows), size)  # rows of each batch: only the last is short
            yield chunk, [size] * full + [last] * (last > 0)

    def split(self, validation_split: float) -> tuple["ArrayAdapter", "ArrayAdapter"]:
        """Keras's ``validation_split`` (in (0, 1), checked by ``fit``): the last fraction of
        rows, taken before shuffling."""
        cut = int(self.num_rows * (1.0 - validation_split))
        if cut == 0 or cut == self.num_rows:
            raise ValueError(f"validation_split={validation_split} of {self.num_rows} rows leaves "
                             "one side empty; use a fraction that keeps rows on both sides.")

        def part(rows: slice, steps: int | None, class_weight: dict | None,
                 shuffle: bool) -> ArrayAdapter:
            pick = lambda tree: jax.tree.map(lambda a: a[rows], tree)
            weight = None if self.user_weight is None else self.user_weight[rows]
            return ArrayAdapter(pick(self.x), pick(self.y), weight, class_weight,
                                self.batch_size, shuffle, self.seed, steps,
                                self.process_index, self.process_count)

        # As Keras: class weights weight training only; sample weights go with their rows;
        # validation rows are read in order.
        return (part(slice(0, cut), self.max_steps, self.class_weight, self.shuffle),
                part(slice(cut, None), None, None, False))


Keys = tuple[Any, Any] | None
"""``(x_key, y_key)`` naming the parts of dict elements (``x_key`` may be a list of keys)."""


def _from_dict(element: dict, with_y: bool, keys: Keys) -> tuple[Any, Any, Any]:
    if keys is None or keys[0] is None:
        if not with_y:
            return element, None, None  # a dict of inputs
        raise ValueError(
            f"The dataset yields dicts (keys: {sorted(element)}), not (x, y) pairs. Pass "
            "`as_supervised=True` to tfds.load, or name the parts: "
            "fit(..., x_key='image', y_key='label').")
    x_key, y_key = keys
    missing = [k for k in ([*x_key] if isinstance(x_key, (list, tuple)) else [x_key]) +
               ([y_key] if with_y else []) if k not in element]
    if missing:
        raise KeyError(f"x_key/y_key name {missing}, which the dataset's elements do not have; "
                       f"their keys are {sorted(element)}.")
    x = {k: element[k] for k in x_key} if isinstance(x_key, (list, tuple)) else element[x_key]
    return x, (element[y_key] if with_y else None), None


def _unpack(element: Any, with_y: bool, keys: Keys = None) -> tuple[Any, Any, Any]:
    """``(x, y, sample_weight)`` from an element: ``(x, y[, w])``, a dict, or ``x`` alone."""
    if isinstance(element, dict):
        return _from_dict(element, with_y, keys)
    if isinstance(element, (tuple, list)):
        if not 1 <= len(element) <= 3:
            raise ValueError(f"Each batch must be (x,), (x, y) or (x, y, sample_weight); got a "
                             f"sequence of {len(element)} items.")
        x, y, weight = (*element, None, None)[:3]
        return x, (y if with_y else None), weight
    if with_y:
        raise ValueError("Each training or evaluation batch must be a tuple (x, y) or "
                         "(x, y, sample_weight); got a single item. Yield labels too.")
    return element, None, None


class IterableAdapter(DataAdapter):
    """A Python iterable (list, generator, any object with ``__iter__``) of ready batches.

    A re-iterable input (``iter(obj) is not obj``, e.g. a list) starts over each epoch; a
    one-shot iterator (a generator) continues where the last epoch stopped, so it needs
    ``steps_per_epoch`` to know where an epoch ends.
    """

    def __init__(self, data: Iterable, steps: int | None = None, with_y: bool = True,
                 epochs: int = 1, keys: Keys = None, length: int | None = None,
                 process_index: int = 0, process_count: int = 1):
        self.data, self.with_y, self.keys = data, with_y, keys
        self.process_index, self.process_count = process_index, process_count
        self.one_shot = isinstance(data, Iterator)
        if self.one_shot and steps is None and epochs > 1:
            raise ValueError(
                "A generator or iterator can be read only once, so fit needs to know where an "
                "epoch ends: pass `steps_per_epoch=` (and make the generator loop forever), or "
                "pass a re-iterable object such as a list.")
        if length is None and hasattr(data, "__len__") and not self.one_shot:
            length = len(data)
        self.steps = steps if steps is not None else length
        self.pure_epochs = not self.one_shot  # each epoch starts over: reading ahead loses nothing
        self._iterator: Iterator | None = None
        self.batch_size = self._peek_batch_size()

    def _peek_batch_size(self) -> int:
        source = self._iterator = iter(self.data)
        try:
            first = next(source)
        except StopIteration:
            raise ValueError("The input is empty: the iterable yielded no batch.") from None
        except Exception as error:  # the user's own exception, with where it was raised
            error.add_note(f"(raised by the input's iterator ({type(self.data).__name__}) "
                           f"while reading its first batch)")
            raise
        self._first = self._sample = first
        x, _, _ = _unpack(first, self.with_y, self.keys)
        return count_rows(_numeric(x, "x"))

    def _parts(self, element: Any) -> tuple[Any, Any, Any]:
        """One element as numpy ``(x, y, sample_weight)`` (the whole global batch)."""
        x, y, weight = _unpack(element, self.with_y, self.keys)
        return (_numeric(x, "x"), None if y is None else _numeric(y, "y"),
                None if weight is None else _numeric(weight, "sample_weight"))

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    def sample_batch(self) -> Batch:
        parts = self._parts(self._sample)
        local = _local_rows(parts, self.process_index, self.process_count)
        if count_rows(local[0]) == 0:  # a 1-row first batch: any row gives the shapes
            local = jax.tree.map(lambda a: a[:1], parts)
        return make_batch(*local, count_rows(local[0]), self.local_batch_size)

    def _elements(self, epoch: int) -> Iterator[Any]:
        start = 0  # the batch number in this epoch of the next element read
        if self._first is not None:
            first, self._first, start = self._first, None, 1
            yield first
        elif not self.one_shot:
            epoch_iter = getattr(self.data, "epoch_iter", None)  # sources reshuffled per epoch
            self._iterator = epoch_iter(epoch) if epoch_iter else iter(self.data)
        # A plain loop, not `yield from`: ending an epoch early must not close the user's
        # generator, whose next epoch continues where this one stopped.
        for index in itertools.count(start):
            try:
                element = next(self._iterator)
            except StopIteration:
                return
            except Exception as error:  # the user's own exception, with where it was raised
                when = "" if self.role == "validation_data" else f" of epoch {epoch + 1}"
                error.add_note(f"(raised by the iterator of `{self.role}` "
                               f"({type(self.data).__name__}) while reading batch {index}{when})")
                raise
            yield element

    def batches(self, epoch: int) -> Iterator[tuple[Batch, int]]:
        count = 0
        first = StreamSpec(self._parts(self._sample), self.role)  # later batches: its shapes
        for element in self._elements(epoch):
            parts = self._parts(element)
            first.check(parts, count, epoch, self.batch_size)
            size = count_rows(parts[0])
            x, y, weight = _local_rows(parts, self.process_index, self.process_count)
            local = count_rows(x)
            if local == 0:  # a short last batch left this process no row: all padding
                filler = self.sample_batch()
                batch = filler._replace(weight=np.zeros_like(filler.weight),
                                        mask=np.zeros_like(filler.mask))
            else:
                batch = make_batch(x, y, weight, local, self.local_batch_size)
            yield batch, size
            count += 1
            if self.steps is not None and count >= self.steps:
                return
        if self.steps is not None and count < self.steps:
            warnings.warn(f"The input ran out of data after {count} of {self.steps} steps; "
                          "the epoch ends here. Make the generator repeat (e.g. loop forever) "
                          "or lower `steps_per_epoch`.", stacklevel=2)
        if self.one_shot:
            self.exhausted = True
