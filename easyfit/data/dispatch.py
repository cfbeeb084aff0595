"""Which adapter an input gets: arrays, tf.data, grain, random-access sources, iterables.

The adapters themselves live in `easyfit.data.adapters` (arrays, iterables) and in
`easyfit.data.tf_dataset` / `easyfit.data.grain_dataset`, which build on them;
this module only dispatches, so none of those import it back.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from easyfit.data import grain_dataset, huggingface, tf_dataset
from easyfit.data.adapters import ArrayAdapter, DataAdapter, IterableAdapter, Keys

__all__ = ["adapt", "as_arrays", "is_arrays"]


def adapt(x: Any, y: Any = None, *, batch_size: int | None, sample_weight: Any = None,
          class_weight: dict | None = None, shuffle: bool = False, seed: int = 0,
          steps: int | None = None, with_y: bool = True, epochs: int = 1,
          keys: Keys = None) -> DataAdapter:
    """Chooses the adapter for ``x`` (and ``y``), as ``fit``/``evaluate``/``predict`` accept them.

    Examples:
        >>> import numpy as np
        >>> data = adapt(np.zeros((10, 3)), np.zeros(10), batch_size=4)
        >>> data.steps, data.batch_size
        (3, 4)
    """
    if isinstance(x, DataAdapter):
        return x
    x, y, sample_weight = as_arrays(x, "x"), as_arrays(y, "y"), as_arrays(sample_weight,
                                                                          "sample_weight")
    if isinstance(x, list) and y is not None and all(is_arrays(a) for a in x):
        x = tuple(x)  # with labels a list of arrays is several inputs, as in Keras
    process = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    if is_arrays(x):
        if with_y and y is None:
            raise ValueError("Training and evaluation need targets: pass `y` with the arrays "
                             "in `x`, or a dataset that yields (x, y) pairs.")
        return ArrayAdapter(x, y, sample_weight, class_weight, batch_size, shuffle, seed, steps,
                            **process)
    if y is not None:
        raise ValueError("`y` is only for array inputs; a dataset or iterable must yield "
                         "(x, y) pairs itself.")
    if sample_weight is not None or class_weight:
        raise ValueError("sample_weight and class_weight are for array inputs; yield "
                         "(x, y, sample_weight) from the dataset instead.")
    common = dict(batch_size=batch_size, steps=steps, with_y=with_y, keys=keys, epochs=epochs)
    # No module imports TensorFlow, grain or datasets until such an input arrives.
    if tf_dataset.is_tf_dataset(x):
        return tf_dataset.tf_dataset_adapter(x, **common, **process)
    if huggingface.is_hf_dataset(x):  # before iterables: a Dataset iterates over rows
        return huggingface.hf_adapter(x, shuffle=shuffle, seed=seed, **common, **process)
    if grain_dataset.is_grain(x) or grain_dataset.is_random_access(x):
        return grain_dataset.grain_adapter(x, shuffle=shuffle, seed=seed, **common, **process)
    if isinstance(x, Iterable) and not isinstance(x, (str, bytes)):
        return IterableAdapter(x, steps, with_y, epochs, keys, **process)
    raise TypeError(f"Unsupported input type {type(x).__name__}: pass numpy arrays (or a dict "
                    "of arrays), a tf.data.Dataset, a grain dataset, a tfds.data_source, a "
                    "Hugging Face dataset, or an iterable of (x, y) batches.")


def is_arrays(x: Any) -> bool:
    """numpy / JAX arrays, or dicts / tuples of them (not a list of batches).

    Examples:
        >>> import numpy as np
        >>> is_arrays({"a": np.zeros(3)}), is_arrays([np.zeros(3)])
        (True, False)
    """
    if isinstance(x, (np.ndarray, jax.Array)):
        return True
    if isinstance(x, dict):
        return bool(x) and all(is_arrays(v) for v in x.values())
    if isinstance(x, tuple) and x and not hasattr(x, "_fields"):
        return all(isinstance(v, (np.ndarray, jax.Array)) for v in x)
    return False


def as_arrays(value: Any, name: str = "x") -> Any:
    """``value`` with array-likes as numpy, as Keras reads them: a pandas DataFrame or Series,
    a PyTorch or TensorFlow tensor, a list of numbers or of rows of numbers (also inside a
    dict or tuple); anything else as it is. A scipy sparse matrix gets an error naming
    ``name`` and the fix.

    Examples:
        >>> as_arrays([[1, 2], [3, 4]]).shape
        (2, 2)
    """
    if isinstance(value, dict):  # unchanged unless an item changed (a DatasetDict stays one)
        items = {key: as_arrays(item, f"{name}[{key!r}]") for key, item in value.items()}
        return value if all(items[key] is item for key, item in value.items()) else items
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(as_arrays(item, f"{name}[{i}]") for i, item in enumerate(value))
    if value is None or isinstance(value, (np.ndarray, jax.Array)):
        return value
    if hasattr(value, "tocsr") and hasattr(value, "toarray"):
        raise TypeError(f"{name} is a scipy sparse {type(value).__name__} of shape "
                        f"{value.shape}: easyfit trains on dense arrays. Pass "
                        f"{name.split('[')[0]}.toarray() (if it fits in memory), or a "
                        f"generator that yields dense batches.")
    if hasattr(value, "__array__") and hasattr(value, "shape"):
        if hasattr(value, "detach"):  # a PyTorch tensor, maybe on a GPU, maybe with grad
            value = value.detach().cpu()
        return np.asarray(value)
    if isinstance(value, list) and value and isinstance(value[0], (numbers.Number, list)):
        return np.asarray(value)
    return value
