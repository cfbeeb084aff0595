"""tf.data and ``tfds.load`` input, read as numpy; TensorFlow never sees a GPU.

TensorFlow is imported only when the input is a tf.data object, and then its GPUs are
hidden first, so it cannot take device memory from JAX.
"""

from __future__ import annotations

import os
from typing import Any

from easyfit.data.adapters import IterableAdapter, Keys

_BATCH_OPS = ("_BatchDataset", "_PaddedBatchDataset", "_ParallelBatchDataset",
              "_DenseToRaggedDataset", "_RaggedBatchDataset")


def is_tf_dataset(obj: Any) -> bool:
    """A ``tf.data.Dataset`` (checked without importing TensorFlow)."""
    return type(obj).__module__.startswith("tensorflow") and hasattr(obj, "element_spec")


def import_tensorflow():
    """Imports TensorFlow with its GPUs hidden (JAX keeps all device memory).

    Example:
        >>> tf = import_tensorflow()   # doctest: +SKIP
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("tf.data input needs TensorFlow: pip install 'easyfit[tfds]'") from None
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow was already initialised by the user's own code
        if tf.config.get_visible_devices("GPU"):
            import warnings
            warnings.warn("TensorFlow was initialised before easyfit could hide the GPUs from it, "
                          "so it may hold GPU memory. Call "
                          "tf.config.set_visible_devices([], 'GPU') first.", stacklevel=3)
    return tf


def is_batched(dataset: Any) -> bool:
    """Whether the pipeline batches (walks the dataset's chain back to its source)."""
    node = dataset
    while node is not None:
        name = type(node).__name__
        if name in _BATCH_OPS:
            return True
        if name == "_UnbatchDataset":
            return False
        node = getattr(node, "_input_dataset", None)
    return False


class _NumpyView:
    """A re-iterable numpy view of a finite dataset: a fresh iterator per epoch."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __iter__(self):
        return self.dataset.as_numpy_iterator()


def tf_dataset_adapter(dataset: Any, *, batch_size: int | None, steps: int | None,
                       with_y: bool, keys: Keys, epochs: int, process_index: int = 0,
                       process_count: int = 1) -> IterableAdapter:
    """Adapts a ``tf.data.Dataset``; an unbatched one is batched with ``batch_size``.

    Each process reads its own shard (``Dataset.shard``) of an unbatched dataset, and
    batches of ``batch_size // process_count`` rows. An infinite dataset needs
    ``steps_per_epoch``.
    """
    tf = import_tensorflow()
    if not is_batched(dataset):
        if process_count > 1:
            dataset = dataset.shard(process_count, process_index)
        dataset = dataset.batch((batch_size or 32) // process_count)
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        if steps is None:
            raise ValueError("The dataset repeats forever, so an epoch has no end: pass "
                             "`steps_per_epoch=` (or `steps=` to evaluate/predict).")
        return IterableAdapter(dataset.as_numpy_iterator(), steps, with_y, 1, keys)
    length = cardinality if cardinality >= 0 else None
    return IterableAdapter(_NumpyView(dataset), steps, with_y, epochs, keys, length=length)
