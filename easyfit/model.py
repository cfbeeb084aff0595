"""``Model``: Keras's compile / fit / evaluate / predict over a Flax module.

The facade only: it resolves and checks arguments, holds what users read (``history``,
``stop_training``, ``optimizer``, ``module``) and hands the work to the
[`Trainer`][easyfit.training.trainer.Trainer] (``model.trainer``), which owns the live
training, and to the loops in `easyfit.training.loop`.

Examples:
    >>> import easyfit as ef, numpy as np
    >>> from flax import nnx
    >>> model = ef.Model(nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
    ...               metrics=["accuracy"])
    >>> x, y = np.random.rand(64, 4).astype("float32"), np.random.randint(0, 3, 64)
    >>> history = model.fit(x, y, epochs=2, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'learning_rate', 'loss']
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from easyfit import arguments, memory as memory_lib
from easyfit.model_tools import ModelTools
from easyfit import precision as precision_lib
from easyfit.callbacks import Callback, History
from easyfit.data.dispatch import adapt
from easyfit.data.adapters import DataAdapter
from easyfit.data.fit_inputs import fit_inputs
from easyfit.distribute import DataParallel, Distribution, any_process
from easyfit.memory.host import CompileWatch
from easyfit.modules.linen import is_factory
from easyfit.training.live_optimizer import LiveOptimizer
from easyfit.training import on_batch
from easyfit.training import weights as weights_lib
from easyfit import checkpoint, exporting, saved_model
from easyfit.training.loop import call_callbacks, evaluate_loop, fit_callbacks, fit_loop
from easyfit.training.loop import predict_loop
from easyfit.training.options import resolve_options
from easyfit.training.trainer import Trainer

__all__ = ["Model"]


class Model(ModelTools):
    """A Flax module with Keras's training API.

    Args:
        module: an ``nnx.Module``; a ``flax.linen.Module`` (initialised from
            ``sample_input``, or from the first batch ``fit``/``evaluate``/``predict`` sees);
            or a function of no arguments that builds an ``nnx.Module``, which is then
            built with every parameter created directly in its sharding (for models too
            large for one device).
        sample_input: an example input batch, needed now only for Linen modules.
        distribution: where arrays live (``ef.distribute.DataParallel``, ``FSDP`` or
            ``ModelParallel``); default: data parallel over all devices.

    Attributes:
        stop_training: set to ``True`` (e.g. from a callback) to end ``fit`` after the step.
        stop_evaluating: set to ``True`` from a callback to end ``evaluate`` (or ``fit``'s
            validation) after the batch; reset when each evaluation starts, as Keras.
        stop_predicting: the same for ``predict``.
        history: the [`History`][easyfit.callbacks.History] of the last ``fit``.
        compiled: whether ``compile`` has been called (as Keras's ``model.compiled``).
        trainer: the [`Trainer`][easyfit.training.trainer.Trainer] that owns the live training
            (the training state, the compiled steps, checkpoint contents); for callbacks
            and tools that need more than Keras's surface.

    Examples:
        >>> model = Model(MyModule(rngs=nnx.Rngs(0)))            # doctest: +SKIP
        >>> model.compile("adamw", "sparse_categorical_crossentropy", ["accuracy"])  # doctest: +SKIP
    """

    def __init__(self, module: Any, sample_input: Any = None,
                 distribution: Distribution | None = None):
        arguments.check_distribution(distribution)
        distribution = distribution or DataParallel()
        if is_factory(module):
            module = distribution.create(module)
        self.trainer = Trainer(module, distribution)
        self.trainer.ensure_module(sample_input=sample_input)
        self.compiled = False
        self.stop_training = self.stop_evaluating = self.stop_predicting = False
        self.history: History | None = None

    @property
    def module(self) -> Any:
        """The wrapped module with the current weights (written back from training on access).

        A Linen module is returned as an ``easyfit.modules.linen.LinenModule``: its ``.linen``
        attribute is the ``nnx.bridge.ToNNX`` bridge whose variables hold the weights.
        """
        return self.trainer.module

    @property
    def distribution(self) -> Distribution:
        """Where arrays live (the ``ef.distribute`` strategy)."""
        return self.trainer.distribution

    def get_weights(self) -> list[np.ndarray]:
        """All weights (parameters and other state such as batch statistics, not RNG state),
        as a list of numpy arrays, as Keras's ``get_weights``."""
        return weights_lib.get_weights(self.module)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Sets the weights from a list shaped as [`get_weights`][easyfit.model.Model.get_weights] returns; training
        continues from them."""
        weights_lib.set_weights(self.module, weights)

    @property
    def optimizer(self) -> LiveOptimizer:
        """The compiled optimizer; ``model.optimizer.learning_rate`` reads / sets the live LR."""
        self._require_compiled("read the optimizer")
        return LiveOptimizer(self.trainer.options.optimizer, self.trainer)

    def compile(self, optimizer: Any = "adamw", loss: Any = None,
                metrics: Sequence[Any] | None = None,
                weighted_metrics: Sequence[Any] | None = None,
                steps_per_execution: int | str = "auto", seed: int = 0,
                augment: Any = None, precision: str = "float32",
                float32_layers: Sequence[type] = precision_lib.FLOAT32_LAYERS,
                gradient_accumulation_steps: int = 1, remat: bool | str = False,
                ema_momentum: float | None = None, loss_weights: Any = None) -> None:
        """Configures training, as Keras's ``compile``.

        Args:
            optimizer: a name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``,
                ``"adagrad"``, ``"lion"``), an ``ef.optimizers`` optimizer, or any
                ``optax.GradientTransformation``.
            loss: a Keras loss name, an ``ef.losses`` object, or a callable
                ``(y_true, y_pred) -> per-example loss``. Losses take logits by default.
                A module with several outputs (a dict or tuple) takes a dict keyed by
                output name, a list in output order, or one loss for every output
                (see the guide, "Models with several outputs").
            metrics: names, ``ef.metrics`` objects or callables; padding rows never count,
                sample weights are ignored. Per output: a dict keyed by output name.
            weighted_metrics: as ``metrics``, weighted by ``sample_weight``/``class_weight``.
            steps_per_execution: train steps run per dispatch (a loop on the device);
                ``"auto"`` fuses enough steps that the host's per-dispatch work stops
                mattering (1 for large models): from the flops of the step when it can
                tell, else from timing the first steps. Callbacks with batch hooks
                of their own get 1, so they see every batch; evaluate and predict use the
                same number.
            seed: seeds the dropout RNG streams, the shuffling order and ``augment``.
            augment: ``fn((x, y), rng) -> (x, y)``, run inside the jitted train step on every
                training batch (never in evaluate / predict / validation), with its own RNG
                stream derived from ``seed``. Part of the step, so it is set here.
            precision: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (with dynamic loss
                scaling): the type layers compute in; weights, gradients, optimizer state,
                the loss and the metrics stay float32.
            float32_layers: layer types that keep computing in float32 under a low
                precision (default: the normalisation layers).
            gradient_accumulation_steps: average the gradients of this many batches per
                optimizer update (``optax.MultiSteps``): ``k`` batches of ``b`` rows update
                like one of ``k * b``. Schedules count updates; progress and ``save_freq``
                count batches.
            remat: ``True`` or a ``jax.checkpoint_policies`` name: recompute each top-level
                layer's activations in the backward pass (less memory, more compute).
            ema_momentum: keep an exponential moving average of the weights with this
                momentum (in [0, 1)), for any optimizer (as Keras's ``use_ema=True,
                ema_momentum=...``, which ``ef.optimizers`` functions also take): ``fit``
                ends with the weights set to the average; ``ef.callbacks.SwapEMAWeights``
                evaluates with it during training.
            loss_weights: multiplies the loss: a float, or for several outputs a dict
                keyed by output name (or a list in output order); the total loss is
                ``sum(loss_weights[o] * loss[o])``. A keyword here (Keras takes it third).

        Examples:
            >>> model.compile(optimizer=ef.optimizers.adamw(3e-4), loss="mse")  # doctest: +SKIP
        """
        arguments.check_compile(locals())
        self.trainer.configure(resolve_options(
            optimizer, loss, metrics, weighted_metrics, steps_per_execution, seed, augment,
            precision, float32_layers, gradient_accumulation_steps, remat,
            ema_momentum=ema_momentum, loss_weights=loss_weights))
        self.compiled = True

    def _require_compiled(self, action: str) -> None:
        if not self.compiled:
            raise RuntimeError(f"You must call `model.compile(optimizer=..., loss=...)` before "
                               f"you {action}.")

    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1,
            verbose: int | str = "auto", callbacks: Sequence[Callback] | None = None,
            validation_split: float = 0.0, validation_data: Any = None, shuffle: bool = True,
            class_weight: dict[int, float] | None = None, sample_weight: Any = None,
            initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_batch_size: int | None = None,
            validation_freq: int | list[int] = 1, x_key: Any = None,
            y_key: Any = None) -> History:
        """Trains for ``epochs`` epochs (from ``initial_epoch``), as Keras's ``fit``.

        Args:
            x: numpy arrays (or a dict of arrays), or an iterable of ``(x, y)`` /
                ``(x, y, sample_weight)`` batches.
            y: targets, with array ``x`` only.
            batch_size: rows per step for arrays, a positive int (default 32); the last
                partial batch is padded and masked, so the step compiles once. An input that
                batches itself keeps its batches (as Keras; a warning if they differ).
            epochs: index of the last epoch, an int >= 0 (Keras semantics with
                ``initial_epoch``; ``0`` trains nothing).
            verbose: ``"auto"`` (a bar on a terminal, a line per epoch otherwise), 0, 1, 2.
            callbacks: ``ef.callbacks.Callback`` instances, or one callback (as Keras).
            validation_split: the last fraction in [0, 1) of the arrays held out (unshuffled).
            validation_data: ``(x_val, y_val[, sample_weight])`` arrays or an iterable.
            shuffle: reshuffle array rows each epoch (seeded by ``compile(seed=)``): a bool
                (Keras's ``"batch"`` shuffles rows too).
            class_weight: ``{class index: weight >= 0}`` multiplying each row's loss
                weight; each key a class that ``y`` holds.
            sample_weight: per-row loss weights >= 0, not all 0 (0 means "not in the batch").
            initial_epoch: epoch to start from (for resuming), an int >= 0.
            steps_per_epoch: batches per epoch, a positive int (required for one-shot
                generators). With arrays and fewer batches than the data has, epochs
                continue through the data as Keras's do (an epoch ends where a pass ends).
            validation_steps: batches per validation pass, a positive int.
            validation_batch_size: a positive int; defaults to ``batch_size``.
            validation_freq: validate every N epochs (an int >= 1), or at the listed epochs.
            x_key: for datasets of dicts (``tfds`` without ``as_supervised``): the input's key
                (or a list of keys, giving a dict input).
            y_key: the label's key in those dicts.

        Returns:
            The [`History`][easyfit.callbacks.History], also stored as ``model.history``.

        Raises:
            TypeError, ValueError: an argument outside the above, before any work.
        """
        self._require_compiled("train the model (fit)")
        callbacks, shuffle, class_weight = arguments.check_fit(locals())
        trainer = self.trainer
        train, validation = fit_inputs(
            x, y, batch_size=batch_size, sample_weight=sample_weight, class_weight=class_weight,
            shuffle=shuffle, seed=trainer.options.seed, steps_per_epoch=steps_per_epoch,
            epochs=epochs - initial_epoch, keys=(x_key, y_key), validation_split=validation_split,
            validation_data=validation_data, validation_batch_size=validation_batch_size,
            validation_steps=validation_steps)
        arguments.check_inputs(trainer.options.loss, batch_size, train, validation)
        history = History()
        callback_list = fit_callbacks(self, callbacks, history, verbose, epochs, train.steps,
                                      validation is not None, train.batch_size)
        # As Keras: a callback with batch hooks of its own sees every batch.
        trainer.dispatch.every_batch = any_process(callback_list.needs_every_batch())
        try:
            compiles = CompileWatch()
            trainer.build(train, None if train.steps is None else train.steps * epochs,
                          time_dispatch=True)
            compiles.release_if_compiled()
            memory_lib.check_capacity(self, train.batch_size, train)  # warns if it cannot fit
            self.stop_training = False
            self.history = history
            trainer.callbacks = callback_list
            fit_loop(self, train, validation, epochs=epochs, initial_epoch=initial_epoch,
                     validation_freq=validation_freq, callbacks=callback_list)
        finally:
            trainer.dispatch.every_batch = False
        self.module  # noqa: B018 -- write the trained weights back to the user's module
        return history

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None,
                 verbose: int | str = "auto", sample_weight: Any = None,
                 steps: int | None = None, callbacks: Sequence[Callback] | None = None,
                 return_dict: bool = False, x_key: Any = None,
                 y_key: Any = None) -> float | list[float] | dict[str, float]:
        """Loss and metrics over the data, in eval mode (dropout off, BatchNorm frozen); the
        arguments as [`fit`][easyfit.model.Model.fit]'s of the same names, checked the same way
        (``steps``: a positive int; ``verbose``: a bar, or a line at the end, as ``fit``'s).

        Returns:
            The loss if there are no metrics, else ``[loss, *metrics]``; a dict with
            ``return_dict=True``, as Keras.

        Examples:
            >>> model.evaluate(x_test, y_test, return_dict=True)   # doctest: +SKIP
            {'loss': 0.08, 'accuracy': 0.975}
        """
        self._require_compiled("evaluate the model")
        callbacks = arguments.check_evaluate(locals())
        data = adapt(x, y, batch_size=batch_size, sample_weight=sample_weight, steps=steps,
                     keys=(x_key, y_key))
        arguments.check_inputs(self.trainer.options.loss, batch_size, data)
        self._prepare(data)
        self.stop_evaluating = False
        logs = evaluate_loop(self.trainer, data, call_callbacks(
            self, callbacks, verbose, data.steps, "evaluate"), stop=lambda: self.stop_evaluating)
        return _returned(logs, return_dict)

    def predict(self, x: Any, batch_size: int | None = None, verbose: int | str = "auto",
                steps: int | None = None,
                callbacks: Sequence[Callback] | None = None, x_key: Any = None) -> Any:
        """Model outputs as numpy, one row per input row, in eval mode; the arguments as
        [`evaluate`][easyfit.model.Model.evaluate]'s.

        Examples:
            >>> model.predict(x_test).shape   # doctest: +SKIP
            (360, 10)
        """
        callbacks = arguments.check_predict(locals())
        data = adapt(x, batch_size=batch_size, steps=steps, with_y=False, keys=(x_key, None))
        arguments.check_inputs(None, batch_size, data)
        self._prepare(data)
        self.stop_predicting = False
        return predict_loop(self.trainer, data, call_callbacks(
            self, callbacks, verbose, data.steps, "predict"), stop=lambda: self.stop_predicting)

    # -- one batch at a time ------------------------------------------------------------------
    def train_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None,
                       class_weight: dict[int, float] | None = None,
                       return_dict: bool = False) -> float | list[float] | dict[str, float]:
        """One optimizer step on one batch, as Keras's ``train_on_batch``.

        Returns:
            That batch's loss if there are no metrics, else ``[loss, *metrics]``; a dict
            with ``return_dict=True`` (no learning rate, as Keras).

        Examples:
            >>> model.train_on_batch(x[:32], y[:32], return_dict=True)   # doctest: +SKIP
            {'loss': 2.28, 'accuracy': 0.16}
        """
        self._require_compiled("train the model (train_on_batch)")
        logs = on_batch.train_on_batch(self.trainer, x, y, sample_weight, class_weight)
        return _returned(logs, return_dict)

    def test_on_batch(self, x: Any, y: Any = None, sample_weight: Any = None,
                      return_dict: bool = False) -> float | list[float] | dict[str, float]:
        """Loss and metrics of one batch in eval mode, as Keras's ``test_on_batch``."""
        self._require_compiled("evaluate the model (test_on_batch)")
        return _returned(on_batch.test_on_batch(self.trainer, x, y, sample_weight), return_dict)

    def predict_on_batch(self, x: Any) -> Any:
        """The outputs for one batch as numpy, in eval mode, as Keras's ``predict_on_batch``."""
        return on_batch.predict_on_batch(self.trainer, x)

    def _prepare(self, data: DataAdapter) -> None:
        self.trainer.ensure_module(data)
        self.trainer.distribution.check_batch_size(data.batch_size)

    # -- weights on disk -----------------------------------------------------------------------
    def save_weights(self, path: str) -> None:
        """Writes the weights (parameters, batch statistics, RNG state) to a checkpoint
        directory; [`load_weights`][easyfit.model.Model.load_weights] on a model built by the same code restores them."""
        weights_lib.save_weights(self.trainer, path)

    def load_weights(self, path: str, step: int | None = None) -> None:
        """Loads weights from a checkpoint directory (of [`save_weights`][easyfit.model.Model.save_weights],
        ``ModelCheckpoint`` or ``BackupAndRestore``): ``step``, else the best by the
        monitored value, else the latest. Refuses a checkpoint of a different model."""
        checkpoint.check_load_path(path, "load_weights")
        weights_lib.load_weights(self.trainer, path, step)

    # -- the whole model on disk (see easyfit.saving, easyfit.export) ---------------------------
    def save(self, path: str, overwrite: bool = True) -> None:
        """Writes the whole model to a directory: weights, optimizer state and the compile
        configuration; [`easyfit.load_model`][easyfit.load_model] brings it back, ready to
        continue ``fit``.

        Args:
            path: a directory (created if missing).
            overwrite: replace an earlier save at ``path``; anything else there is never
                replaced (``FileExistsError``).

        Examples:
            >>> model.save("runs/model")                                  # doctest: +SKIP
            >>> model = ef.load_model("runs/model", module=MLP(rngs=nnx.Rngs(0)))  # doctest: +SKIP
        """
        saved_model.write(self, path, overwrite)

    def export(self, path: str, sample_input: Any = None, platforms: Sequence[str] | None = None,
               polymorphic_batch: bool = True, overwrite: bool = True) -> None:
        """Writes the inference function (eval mode) for serving, as a ``jax.export``
        artifact with a symbolic batch dimension;
        [`easyfit.load_exported`][easyfit.load_exported] runs it
        without the model's code (see
        [`easyfit.exporting.export_model`][easyfit.exporting.export_model]).

        Args:
            path: a directory (created if missing).
            sample_input: an input batch such as ``x_test[:1]`` (its shapes after the batch
                dimension, and dtypes).
            platforms: where it may run (``"cpu"``, ``"cuda"``, ``"tpu"``...); default: here.
            polymorphic_batch: any batch size (default), or only ``sample_input``'s.
            overwrite: replace an earlier export at ``path`` (never anything else).

        Examples:
            >>> model.export("runs/served", sample_input=x_test[:1])   # doctest: +SKIP
            >>> ef.load_exported("runs/served")(x_test).shape            # doctest: +SKIP
            (360, 10)
        """
        exporting.export_model(self, path, sample_input, platforms, polymorphic_batch,
                               overwrite)


def _returned(logs: dict[str, float], return_dict: bool) -> float | list[float] | dict[str, float]:
    """Keras's return convention: the dict, or the loss alone, or ``[loss, *metrics]``."""
    if return_dict:
        return logs
    values = list(logs.values())
    return values[0] if len(values) == 1 else values
