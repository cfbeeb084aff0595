"""SwapEMAWeights: evaluate (and checkpoint) with the moving average of the weights."""

from __future__ import annotations

from easyfit.callbacks.base import Callback
from easyfit.training.ema_weights import average_shown, show_average

__all__ = ["SwapEMAWeights"]


class SwapEMAWeights(Callback):
    """Swaps the weights with their moving average (EMA) around evaluation, as Keras's.

    Before evaluation (``fit``'s validation, ``evaluate``) and prediction the model's
    weights are exchanged with the average the optimizer keeps (``use_ema=True`` on an
    ``ef.optimizers`` function, or ``compile(ema_momentum=...)``); after it, they are
    exchanged back. The exchange moves arrays within the training state on the device: no
    copy to the host, no recompile.

    With ``swap_on_epoch=True`` the weights also hold the average from the end of each
    epoch (``on_epoch_end``) until the next one begins, so callbacks after this one, such
    as ``ModelCheckpoint`` (place it after), save the average. The training state records
    the exchange, so a ``BackupAndRestore`` backup taken meanwhile resumes exactly, and
    ``fit`` still ends with the average as the weights (as Keras).

    Args:
        swap_on_epoch: also hold the average between ``on_epoch_end`` and the next
            ``on_epoch_begin``.

    Raises:
        ValueError: the optimizer keeps no moving average (raised when training starts,
            or when evaluation starts outside ``fit``).

    Examples:
        >>> model.compile(ef.optimizers.sgd(0.1, use_ema=True, ema_momentum=0.99), "mse")  # doctest: +SKIP
        >>> model.fit(x, y, validation_data=(xv, yv),   # validation with the average  # doctest: +SKIP
        ...           callbacks=[ef.callbacks.SwapEMAWeights(swap_on_epoch=True),
        ...                      ef.callbacks.ModelCheckpoint("ckpt/")])
    """

    every_batch = False  # no batch hooks

    def __init__(self, swap_on_epoch: bool = False):
        super().__init__()
        self.swap_on_epoch = swap_on_epoch
        self._swapped_here = False  # this evaluation or prediction swapped the weights in

    def _swap_in(self) -> None:
        trainer = self.model.trainer
        self._swapped_here = not average_shown(trainer)  # ValueError without an average
        if self._swapped_here:
            show_average(trainer, True)

    def _swap_back(self) -> None:
        if self._swapped_here:
            show_average(self.model.trainer, False)
            self._swapped_here = False

    def on_train_begin(self, logs=None):
        average_shown(self.model.trainer)  # fails now if the optimizer keeps no average

    def on_epoch_begin(self, epoch, logs=None):
        if self.swap_on_epoch:
            show_average(self.model.trainer, False)

    def on_epoch_end(self, epoch, logs=None):
        if self.swap_on_epoch:
            show_average(self.model.trainer, True)

    def on_test_begin(self, logs=None):
        self._swap_in()

    def on_test_end(self, logs=None):
        self._swap_back()

    def on_predict_begin(self, logs=None):
        self._swap_in()

    def on_predict_end(self, logs=None):
        self._swap_back()
