"""``fit``'s inputs: the training adapter and the validation one, from Keras's arguments."""

from __future__ import annotations

from typing import Any

from easyfit.data.dispatch import adapt, is_arrays
from easyfit.data.adapters import ArrayAdapter, DataAdapter

__all__ = ["fit_inputs"]


def fit_inputs(x: Any, y: Any, *, batch_size: int | None, sample_weight: Any,
               class_weight: dict[int, float] | None, shuffle: bool, seed: int,
               steps_per_epoch: int | None, epochs: int, keys: Any, validation_split: float,
               validation_data: Any, validation_batch_size: int | None,
               validation_steps: int | None) -> tuple[DataAdapter, DataAdapter | None]:
    """``(train, validation)`` adapters for ``fit``; ``validation`` is ``None`` without
    ``validation_split`` or ``validation_data`` (which wins, as Keras)."""
    if x is None:
        raise ValueError("fit needs training data: fit(x, y) with arrays, or fit(dataset).")
    if validation_split and validation_data is None and not is_arrays(x):
        raise ValueError("validation_split works only with array inputs; pass "
                         "validation_data= for datasets, generators and iterables.")
    train = adapt(x, y, batch_size=batch_size, sample_weight=sample_weight,
                  class_weight=class_weight, shuffle=shuffle, seed=seed, steps=steps_per_epoch,
                  epochs=epochs, keys=keys)
    if validation_data is None:
        return train.split(validation_split) if validation_split else (train, None)
    batch_size = validation_batch_size or train.batch_size
    data = validation_data
    try:
        if (isinstance(data, tuple) and 2 <= len(data) <= 3 and is_arrays(data[0])) or (
                isinstance(data, list) and 2 <= len(data) <= 3  # [x_val, y_val], as Keras
                and all(is_arrays(d) and not isinstance(d, tuple) for d in data)):
            validation = ArrayAdapter(data[0], data[1], data[2] if len(data) == 3 else None,
                                      batch_size=batch_size, steps=validation_steps)
        else:
            validation = adapt(data, batch_size=batch_size, steps=validation_steps, keys=keys)
    except Exception as error:
        if getattr(error, "__notes__", None):  # the user's iterator raised it: say which one
            error.add_note("(that input is `validation_data`)")
        elif isinstance(error, (TypeError, ValueError)):  # the checks of x, named for validation
            error.args = (f"validation_data: {error}",)  # the same error object and traceback
        raise
    validation.role = "validation_data"
    return train, validation
