"""tf.data and ``tfds.load`` input, read as numpy; TensorFlow never sees a GPU.

TensorFlow is imported only when the input is a tf.data object, and then its GPUs are
hidden first, so it cannot take device memory from JAX.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

from easyfit.data.adapters import IterableAdapter, Keys

__all__ = ["import_tensorflow", "is_batched", "is_tf_dataset", "tf_dataset_adapter"]

_BATCH_OPS = ("_BatchDataset", "_PaddedBatchDataset", "_ParallelBatchDataset",
              "_DenseToRaggedDataset", "_RaggedBatchDataset",
              "_GroupByWindowDataset")  # group_by_window: bucket_by_sequence_length batches


def is_tf_dataset(obj: Any) -> bool:
    """A ``tf.data.Dataset`` (checked without importing TensorFlow)."""
    return type(obj).__module__.startswith("tensorflow") and hasattr(obj, "element_spec")


@contextlib.contextmanager
def _quiet_native_stderr(enabled: bool) -> Iterator[None]:
    """Silences what native code writes to stderr meanwhile: TensorFlow's C++ start-up lines
    (absl's "All log messages before absl::InitializeLog()", oneDNN's notice), which
    ``TF_CPP_MIN_LOG_LEVEL`` does not reach. Python exceptions still propagate."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    """Imports TensorFlow with its GPUs hidden (JAX keeps all device memory).

    Examples:
        >>> tf = import_tensorflow()   # doctest: +SKIP
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with _quiet_native_stderr(enabled="tensorflow" not in sys.modules):
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
    """Whether the pipeline batches: the first batch or unbatch step found walking back from
    the output through every input (``zip`` and ``sample_from_datasets`` have several)."""
    name = type(dataset).__name__
    if name in _BATCH_OPS:
        return True
    if name == "_UnbatchDataset":
        return False
    inputs = dataset._inputs() if hasattr(dataset, "_inputs") else []
    return bool(inputs) and all(is_batched(parent) for parent in inputs)


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

    With several processes every process reads the global batches and keeps its own block
    of rows of each (so all processes take the same number of steps). An infinite dataset
    needs ``steps_per_epoch``.
    """
    tf = import_tensorflow()
    if not is_batched(dataset):
        dataset = dataset.batch(batch_size or 32)
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        if steps is None:
            raise ValueError("The dataset repeats forever, so an epoch has no end: pass "
                             "`steps_per_epoch=` (or `steps=` to evaluate/predict).")
        return IterableAdapter(dataset.as_numpy_iterator(), steps, with_y, 1, keys,
                               process_index=process_index, process_count=process_count)
    length = cardinality if cardinality >= 0 else None
    return IterableAdapter(_NumpyView(dataset), steps, with_y, epochs, keys, length=length,
                           process_index=process_index, process_count=process_count)
