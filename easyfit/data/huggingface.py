"""Hugging Face ``datasets``: a ``Dataset`` read as arrays of its columns, an
``IterableDataset`` read in batches. ``datasets`` is never imported here: inputs are
recognised by their class's module.

A ``datasets.Dataset`` has random access, so it is fed as numpy arrays are: the columns named
by ``x_key`` / ``y_key`` (only those), shuffled each epoch from ``compile``'s seed (the same
order as arrays of those columns would get), the last batch padded, each process taking its
block of rows of every global batch, and an interrupted epoch resumed at its exact batch.
Columns that fit in ``MATERIALIZE_BYTES`` are read into memory once (then they train as
arrays do, held on the devices when small); larger ones stay in the dataset's memory-mapped
Arrow files and each chunk of batches reads its rows from there.

A ``datasets.IterableDataset`` is read in batches of ``batch_size`` rows each epoch, with
``set_epoch(epoch)`` first, so a ``.shuffle(seed=..., buffer_size=...)`` of it reshuffles
every epoch; it is not shuffled otherwise. It runs as any re-iterable input does.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import numpy as np

from easyfit.data.adapters import ArrayAdapter, DataAdapter, IterableAdapter, Keys
from easyfit.data.batch import Batch

__all__ = ["HFDatasetAdapter", "MATERIALIZE_BYTES", "hf_adapter", "is_hf_dataset"]

MATERIALIZE_BYTES = 1 << 30
"""Selected columns of a ``datasets.Dataset`` up to this size (bytes in Arrow) are read into
numpy arrays once; larger ones are read chunk by chunk."""

_NAMES = ("Dataset", "IterableDataset", "DatasetDict", "IterableDatasetDict")


def _hf_class(obj: Any) -> str | None:
    for cls in type(obj).__mro__:
        if cls.__module__.startswith("datasets.") and cls.__name__ in _NAMES:
            return cls.__name__
    return None


def is_hf_dataset(obj: Any) -> bool:
    """A Hugging Face ``Dataset``, ``IterableDataset`` or a dict of them (checked without
    importing ``datasets``)."""
    return _hf_class(obj) is not None


def _key_list(x_key: Any) -> list[str]:
    return list(x_key) if isinstance(x_key, (list, tuple)) else [x_key]


def _selected(columns: list[str], keys: Keys, with_y: bool) -> tuple[Any, str | None]:
    """``(x_key, y_key)`` checked against the dataset's ``columns``; with no ``x_key`` and
    no labels wanted (``predict``), a dataset's only column is the input."""
    x_key, y_key = keys if keys is not None else (None, None)
    if x_key is None and not with_y and len(columns) > 1:
        raise ValueError(f"A Hugging Face dataset has named columns ({columns}); say which "
                         "are the input: predict(dataset, x_key='image') (a list of keys for "
                         "a module that takes a dict of several).")
    if x_key is None and not with_y:
        return list(columns), None
    if x_key is None or (with_y and y_key is None):
        raise ValueError(f"A Hugging Face dataset has named columns ({columns}); say which "
                         "are the input and the label: fit(dataset, x_key='image', "
                         "y_key='label', batch_size=...).")
    wanted = _key_list(x_key) + ([y_key] if with_y else [])
    missing = [key for key in wanted if key not in columns]
    if missing:
        raise KeyError(f"x_key/y_key name {missing}, which the dataset does not have; its "
                       f"columns are {columns}.")
    return x_key, (y_key if with_y else None)


def _numbers(array: Any, column: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"Column {column!r} must hold numbers of one shape per row, but it "
                        f"reads as dtype {array.dtype}. Encode it first (e.g. "
                        "dataset.map(...) to integer ids or fixed-length arrays).")
    return array


def _parts(table: dict[str, Any], x_key: Any, y_key: str | None) -> tuple[Any, Any]:
    """``(x, y)`` from a dict of columns: ``x`` a dict when ``x_key`` is a list."""
    x = {k: _numbers(table[k], k) for k in x_key} if isinstance(x_key, (list, tuple)) \
        else _numbers(table[x_key], x_key)
    return x, None if y_key is None else _numbers(table[y_key], y_key)


class HFDatasetAdapter(DataAdapter):
    """A ``datasets.Dataset`` too large to read into memory, read a chunk of batches at a
    time, in the order an ``ArrayAdapter`` of its columns would use
    (so training matches the in-memory path bit for bit).

    Args:
        dataset: the ``datasets.Dataset``.
        x_key: the input column, or a list of columns (a dict input).
        y_key: the label column, or ``None`` (predict).
        batch_size: rows per global batch.
        shuffle: reshuffle each epoch from ``seed``.
        seed: the shuffling seed.
        steps: batches per epoch (``steps_per_epoch``), or ``None`` for all.
        process_index: this process.
        process_count: processes sharing each global batch.
    """

    pure_epochs = True

    def __init__(self, dataset: Any, x_key: Any, y_key: str | None, batch_size: int | None = 32,
                 shuffle: bool = False, seed: int = 0, steps: int | None = None,
                 process_index: int = 0, process_count: int = 1):
        columns = _key_list(x_key) + ([y_key] if y_key is not None else [])
        self.dataset = dataset.select_columns(columns).with_format("numpy")
        self.x_key, self.y_key = x_key, y_key
        self.process_index, self.process_count = process_index, process_count
        # Row numbers only (0 bytes a row): the order, the padding and each process's block.
        self.order = ArrayAdapter(np.zeros((len(dataset), 0), np.uint8), None, None, None,
                                  batch_size, shuffle, seed, steps, process_index, process_count)
        self.batch_size, self.steps = self.order.batch_size, self.order.steps

    def rows(self, index: np.ndarray) -> tuple[Any, Any]:
        """``(x, y)`` of the rows numbered ``index``, in that order."""
        return _parts(self.dataset[index.tolist()], self.x_key, self.y_key)

    def chunks(self, epoch: int, k: int, start: int = 0) -> Iterator[tuple[Batch, list[int]]]:
        for ids, sizes in self.order.chunks(epoch, k, start, as_index=True):
            shape = ids.x.shape  # (k, rows of this process)
            x, y = self.rows(ids.x.ravel())
            fold = lambda tree: jax.tree.map(lambda a: a.reshape(*shape, *a.shape[1:]), tree)
            yield Batch(fold(x), fold(y), ids.weight, ids.mask), sizes

    def batches(self, epoch: int) -> Iterator[tuple[Batch, int]]:
        for chunk, sizes in self.chunks(epoch, 1):
            yield jax.tree.map(lambda a: a[0], chunk), sizes[0]

    def sample_batch(self) -> Batch:
        return next(self.batches(0))[0]


class _EpochBatches:
    """An ``IterableDataset``'s batches, re-read each epoch after ``set_epoch(epoch)``."""

    def __init__(self, dataset: Any, batch_size: int):
        self.dataset, self.batch_size = dataset, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.epoch_iter(0)

    def epoch_iter(self, epoch: int) -> Iterator[dict[str, Any]]:
        self.dataset.set_epoch(epoch)
        return iter(self.dataset.iter(batch_size=self.batch_size))


def hf_adapter(data: Any, *, batch_size: int | None, steps: int | None, with_y: bool,
               keys: Keys, epochs: int, shuffle: bool = False, seed: int = 0,
               process_index: int = 0, process_count: int = 1) -> DataAdapter:
    """Adapts a Hugging Face ``Dataset`` (as arrays of its ``x_key`` / ``y_key`` columns)
    or ``IterableDataset`` (batches of ``batch_size`` rows); see the module's docstring."""
    kind = _hf_class(data)
    if kind in ("DatasetDict", "IterableDatasetDict"):
        raise TypeError(f"This is a dict of splits ({sorted(data)}); pass one split, e.g. "
                        "fit(dataset['train'], ...), validation_data=dataset['test'].")
    process = dict(process_index=process_index, process_count=process_count)
    columns = list(data.column_names or []) if kind == "IterableDataset" else data.column_names
    if kind == "IterableDataset":
        if columns:  # known from the features: read only the columns used
            x_key, y_key = _selected(columns, keys, with_y)
            data = data.select_columns(_key_list(x_key) + ([y_key] if y_key else []))
            keys = (x_key, y_key)
        batches = _EpochBatches(data.with_format("numpy"), int(batch_size or 32))
        return IterableAdapter(batches, steps, with_y, epochs, keys, **process)
    x_key, y_key = _selected(columns, keys, with_y)
    if len(data) == 0:
        raise ValueError("The input is empty (0 rows). Pass at least one example.")
    selected = data.select_columns(_key_list(x_key) + ([y_key] if y_key else []))
    if selected.data.nbytes > MATERIALIZE_BYTES:
        return HFDatasetAdapter(data, x_key, y_key, batch_size, shuffle, seed, steps, **process)
    x, y = _parts(selected.with_format("numpy")[:], x_key, y_key)
    return ArrayAdapter(x, y, None, None, batch_size, shuffle, seed, steps, **process)
