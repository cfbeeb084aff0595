"""grain datasets and random-access sources (``tfds.data_source``), no TensorFlow needed.

A grain ``MapDataset`` / ``IterDataset`` / ``DataLoader`` is read as it is (batched here
with ``batch_size`` when the pipeline has no batch step). A random-access source (anything
from ``tfds.data_source`` or ``grain.sources``) becomes ``grain.MapDataset.source(src)``,
shuffled per epoch from the seed and batched. With several processes each keeps its own
block of rows of every global batch.
"""

from __future__ import annotations

from typing import Any

from easyfit.data.adapters import IterableAdapter, Keys

__all__ = ["grain_adapter", "is_grain", "is_random_access"]


def _module(obj: Any) -> str:
    return type(obj).__module__ or ""


def is_grain(obj: Any) -> bool:
    """A grain dataset or loader."""
    return _module(obj).startswith("grain")


def is_random_access(obj: Any) -> bool:
    """A random-access source from tfds or grain (``__getitem__`` + ``__len__``)."""
    return (_module(obj).startswith(("tensorflow_datasets", "grain._src.python.data_sources"))
            and hasattr(obj, "__getitem__") and hasattr(obj, "__len__"))


def _is_batched(dataset: Any) -> bool:
    node = dataset
    while node is not None:
        if "Batch" in type(node).__name__:
            return True
        parents = getattr(node, "_parents", ())
        node = parents[0] if parents else None
    return False


def _grain():
    try:
        import grain
    except ImportError:
        raise ImportError("grain input needs grain: pip install 'easyfit[grain]'") from None
    return grain


class _EpochSource:
    """Re-iterable batches of a random-access source: a fresh shuffle for every epoch."""

    def __init__(self, source: Any, batch_size: int, shuffle: bool, seed: int):
        self.source, self.batch_size, self.shuffle, self.seed = source, batch_size, shuffle, seed

    def _dataset(self, epoch: int):
        dataset = _grain().MapDataset.source(self.source)
        if self.shuffle:
            dataset = dataset.shuffle(seed=self.seed * 100_003 + epoch)
        return dataset.batch(self.batch_size)

    def __len__(self) -> int:
        return len(self._dataset(0))

    def __iter__(self):
        return self.epoch_iter(0)

    def epoch_iter(self, epoch: int):
        return iter(self._dataset(epoch))


def grain_adapter(data: Any, *, batch_size: int | None, steps: int | None, with_y: bool,
                  keys: Keys, epochs: int, shuffle: bool = False, seed: int = 0,
                  process_index: int = 0, process_count: int = 1) -> IterableAdapter:
    """Adapts a grain dataset / loader or a random-access source."""
    grain = _grain()
    if is_random_access(data):
        data = _EpochSource(data, batch_size or 32, shuffle, seed)
    elif isinstance(data, (grain.MapDataset, grain.IterDataset)) and not _is_batched(data):
        data = data.batch(batch_size or 32)
    return IterableAdapter(data, steps, with_y, epochs, keys, process_index=process_index,
                           process_count=process_count)
