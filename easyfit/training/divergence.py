"""A training loss that diverges (NaN or inf) is reported once per ``fit``, from the epoch-end
logs the loop reads anyway (no extra wait for the device)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
import numpy as np

from easyfit import losses as losses_lib
from easyfit.errors import DivergenceWarning, user_stacklevel

__all__ = ["DivergenceCheck", "takes_class_ids"]

_LABELS = "labels out of range for the loss: class ids must lie in 0 .. outputs - 1"


def takes_class_ids(loss: Any) -> bool:
    """Whether ``loss`` may take class ids: ``sparse_categorical_crossentropy``, several
    outputs, or a loss of unknown kind (a user's function). ``False`` for easyfit's other
    losses, where class ids out of range cannot be the cause of a NaN."""
    name = getattr(loss, "name", None)
    return name not in losses_lib.LOSSES or name == "sparse_categorical_crossentropy"


class DivergenceCheck:
    """Warns once per ``fit`` when the epoch's training loss is NaN or infinite.

    It reads only the epoch-end logs, which the loop fetches anyway: no extra wait for the
    device. Training goes on, as Keras's does without ``TerminateOnNaN``.

    Args:
        enabled: ``False`` when ``TerminateOnNaN`` already watches the loss.
        data: the training input; array inputs are searched for NaN and label ranges
            (once, when the loss diverged).
        class_ids: the loss takes class ids (``sparse_categorical_crossentropy``, or a loss
            of unknown kind), so labels out of range are a likely cause.
    """

    def __init__(self, enabled: bool = True, data: Any = None, class_ids: bool = True):
        self.enabled, self.data, self.class_ids = enabled, data, class_ids
        self.last_step: int | None = None  # the step count at the last finite epoch end

    def check(self, logs: dict[str, float], epoch: int, step: int) -> None:
        """Looks at one epoch's logs (``epoch`` counted from 0, ``step`` = steps so far)."""
        loss = logs.get("loss")
        if not self.enabled or loss is None:
            return
        if math.isfinite(loss):
            self.last_step = step
            return
        self.enabled = False  # once per fit
        warnings.warn(self.message(loss, epoch, step, logs.get("learning_rate")),
                      DivergenceWarning, stacklevel=user_stacklevel())

    def check_validation(self, val_logs: dict[str, float], epoch: int, step: int,
                         validation: Any) -> None:
        """Warns once per ``fit`` when the validation loss is NaN or inf while the training
        loss of the same epoch is finite: the validation data is the likely cause."""
        loss = val_logs.get("loss")
        if not self.enabled or loss is None or math.isfinite(loss) or self.last_step != step:
            return
        self.enabled = False
        causes = self.input_causes(validation, "validation_data's ", [
            *([_LABELS] if self.class_ids else []), "NaN or inf in validation_data"])
        warnings.warn(f"model.fit: the validation loss is {_value(loss)} at the end of epoch "
                      f"{epoch + 1}, while the training loss is finite. Likely causes: "
                      f"{'; '.join(causes)}.", DivergenceWarning, stacklevel=user_stacklevel())

    def message(self, loss: float, epoch: int, step: int, lr: float | None) -> str:
        """The warning's text: the epoch, the step and the usual causes (the one the input
        arrays show first)."""
        since = "" if self.last_step is None else f"; it was finite at step {self.last_step}"
        causes = self.input_causes(self.data, "", [
            f"the learning rate is too high{'' if lr is None else f' (it is {lr:.3g})'}: "
            "try it 10x lower, or clip gradients (clipnorm=1.0)",
            *([_LABELS] if self.class_ids else []), "NaN or inf in the inputs"])
        return (f"model.fit: the training loss is {_value(loss)} at the end of epoch {epoch + 1} "
                f"(step {step}{since}): training diverged, and the weights are likely NaN "
                f"now. Likely causes: {'; '.join(causes)}. To stop at the first bad step, add "
                "ef.callbacks.TerminateOnNaN() to the callbacks.")

    @staticmethod
    def input_causes(data: Any, owner: str, causes: list[str]) -> list[str]:
        """``causes`` made specific by what ``data``'s arrays show: NaN counted first, the
        label range added."""
        for name in ("x", "y"):
            for leaf in map(np.asarray, jax.tree.leaves(getattr(data, name, None))):
                bad = int((~np.isfinite(leaf)).sum()) if leaf.dtype.kind == "f" else 0
                if bad:
                    causes = [c for c in causes if not c.startswith("NaN or inf")]
                    causes.insert(0, f"{owner}`{name}` holds {bad} NaN or inf values: clean or "
                                     "drop those rows")
                elif name == "y" and leaf.dtype.kind in "iu" and leaf.size:
                    causes = [c + f" ({owner}`y` holds {leaf.min()} to {leaf.max()})"
                              if c.startswith("labels out of range") else c for c in causes]
        return causes


def _value(loss: float) -> str:
    return "NaN" if math.isnan(loss) else str(loss)
