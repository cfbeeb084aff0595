"""Callbacks: Keras's hook names, ``logs`` dicts and ``History``."""

from easyfit.callbacks.backup import BackupAndRestore
from easyfit.callbacks.base import Callback, CallbackList, LazyLogs
from easyfit.callbacks.early_stopping import EarlyStopping
from easyfit.callbacks.history import History
from easyfit.callbacks.learning_rate import LearningRateScheduler, ReduceLROnPlateau
from easyfit.callbacks.model_checkpoint import ModelCheckpoint
from easyfit.callbacks.mlflow_logger import MLflowLogger
from easyfit.callbacks.profiler import Profiler
from easyfit.callbacks.progress import ProgressBar
from easyfit.callbacks.simple import CSVLogger, LambdaCallback, TerminateOnNaN
from easyfit.callbacks.swap_ema import SwapEMAWeights
from easyfit.callbacks.tensorboard import TensorBoard
from easyfit.callbacks.tracking import TrackerCallback
from easyfit.callbacks.wandb_logger import WandbLogger

__all__ = ["BackupAndRestore", "CSVLogger", "Callback", "CallbackList", "EarlyStopping", "History",
           "LambdaCallback", "LazyLogs", "LearningRateScheduler", "MLflowLogger",
           "ModelCheckpoint", "Profiler", "ProgressBar", "ReduceLROnPlateau", "SwapEMAWeights",
           "TensorBoard", "TerminateOnNaN", "TrackerCallback", "WandbLogger"]
