"""Callbacks: Keras's hook names, ``logs`` dicts and ``History``."""

from easyfit.callbacks.base import Callback, CallbackList, LazyLogs
from easyfit.callbacks.history import History
from easyfit.callbacks.progress import ProgressBar

__all__ = ["Callback", "CallbackList", "History", "LazyLogs", "ProgressBar"]
