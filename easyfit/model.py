"""``Model``: Keras's compile / fit / evaluate / predict over a Flax module.

The facade is thin: it resolves arguments, builds the data adapters, the jitted steps and
the training state, and hands them to the loops in :mod:`easyfit.loop`.

Example:
    >>> import easyfit as ef, numpy as np
    >>> from flax import nnx
    >>> model = ef.Model(nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
    ...               metrics=["accuracy"])
    >>> x, y = np.random.rand(64, 4).astype("float32"), np.random.randint(0, 3, 64)
    >>> history = model.fit(x, y, epochs=2, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'loss', 'lr']
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyfit import losses as losses_lib
from easyfit.tune import lr_finder
from easyfit import memory as memory_lib
from easyfit import precision as precision_lib
from easyfit import remat as remat_lib
from easyfit import metrics as metrics_lib
from easyfit import optimizers as optimizers_lib
from easyfit.callbacks import Callback, CallbackList, History, ProgressBar
from easyfit.data.adapters import ArrayAdapter, DataAdapter, _is_arrays, adapt
from easyfit.checkpoint import Checkpoints, abstract
from easyfit.distribute import DataParallel, Distribution, is_chief
from easyfit.distribute.strategies import flatten, put
from easyfit.host_memory import CompileWatch
from easyfit.training.loop import evaluate_loop, fit_loop, predict_loop, start_auto
from easyfit.modules.graph import GRAPH, ModuleGraphs, copy_tree, reseed, split
from easyfit.modules.linen import as_nnx, is_factory
from easyfit.training.train_state import TrainState, init_optimizer_state
from easyfit.training.step import Steps
from easyfit.summary import summarize


def _numbered(callbacks: Sequence[Callback]) -> list[tuple[int, Callback]]:
    """``(n, callback)``: n counts earlier callbacks of the same class (0 for the first)."""
    seen: dict[str, int] = {}
    out = []
    for callback in callbacks:
        name = type(callback).__name__
        out.append((seen.get(name, 0), callback))
        seen[name] = seen.get(name, 0) + 1
    return out


def _placed_shapes(tree: Any, sharding: Any) -> Any:
    """``tree``'s shapes and dtypes, placed with ``sharding`` (one, or a tree of them)."""
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                            tree)
    return jax.tree.map(lambda one, subtree: _placed_shapes(subtree, one), sharding, tree)


def _verbosity(verbose: int | str) -> int:
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2; got {verbose!r}.")
    return int(verbose)


class Model:
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
        history: the :class:`~easyfit.callbacks.History` of the last ``fit``.

    Example:
        >>> model = Model(MyModule(rngs=nnx.Rngs(0)))            # doctest: +SKIP
        >>> model.compile("adamw", "sparse_categorical_crossentropy", ["accuracy"])  # doctest: +SKIP
    """

    def __init__(self, module: Any, sample_input: Any = None,
                 distribution: Distribution | None = None):
        if distribution is not None and not isinstance(distribution, Distribution):
            raise TypeError(f"distribution must be an ef.distribute strategy (DataParallel, "
                            f"FSDP, ModelParallel); got {type(distribution).__name__}.")
        self._distribution = distribution or DataParallel()
        if is_factory(module):
            module = self._distribution.create(module)
        self._user_module = module
        self._module = as_nnx(module, sample_input)
        self._shardings: TrainState | None = None  # of every part of the training state
        self._compiled = False
        self.stop_training = False
        self.history: History | None = None
        self._state: TrainState | None = None
        self._steps: Steps | None = None
        self._module_stale = False   # the state holds newer weights than the module
        self._module_shared = True   # the module may share buffers with the state, or be edited
        self._optimizer: optimizers_lib.Optimizer | None = None
        self._loss, self._metrics, self._weighted_metrics = None, [], []
        self._steps_per_execution: int | str = "auto"
        self._auto_k: int | None = None  # what "auto" measured for this compile
        self._auto_sizes: set[int] = set()  # chunk sizes "auto" compiled the train step for
        self._auto_timer = None  # "auto"'s measurement while it lasts
        self._every_batch = False  # the running fit has callbacks that must see every batch
        self._seed, self._has_lr = 0, False
        self._augment = None
        self._compute_dtype, self._precision, self._float32_layers = None, "float32", ()
        self._accumulation, self._remat = 1, False
        self._position = (0, 0)        # (epoch, batch in epoch) reached by fit
        self._step_count = 0           # optimizer steps taken, counted on the host
        self._pending_resume = None    # (position, callback states) from a restored backup
        self._callbacks: CallbackList | None = None

    # -- the user's module, always current when read ---------------------------------------
    @property
    def module(self) -> Any:
        """The wrapped module with the current weights (written back from training on access).

        A Linen module is returned as an ``easyfit.modules.linen.LinenModule``: its ``.linen``
        attribute is the ``nnx.bridge.ToNNX`` bridge whose variables hold the weights.
        """
        if self._module is None:
            raise RuntimeError("This Linen module has not been initialised yet: pass "
                               "`sample_input=` to ef.Model, or call fit/evaluate/predict first.")
        if self._module_stale:
            nnx.update(self._module, self._state.params, self._state.rest)
            self._module_stale = False
        self._module_shared = True
        return self._module

    def get_weights(self) -> list[np.ndarray]:
        """All weights (parameters and other state such as batch statistics, not RNG state),
        as a list of numpy arrays, as Keras's ``get_weights``."""
        return [np.asarray(leaf) for leaf in jax.tree.leaves(self._weight_state())]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Sets the weights from a list shaped as :meth:`get_weights` returns; training
        continues from them."""
        state = self._weight_state()
        leaves, treedef = jax.tree.flatten(state)
        if len(weights) != len(leaves):
            raise ValueError(f"set_weights got {len(weights)} arrays; the model has "
                             f"{len(leaves)} (as get_weights returns).")
        for index, (new, old) in enumerate(zip(weights, leaves)):
            if np.shape(new) != old.shape:
                path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(state)[0][index][0])
                raise ValueError(f"set_weights: array {index} ({path}) has shape "
                                 f"{np.shape(new)}, expected {old.shape}.")
        new_state = jax.tree.unflatten(treedef, [jnp.asarray(w, o.dtype)
                                                 for w, o in zip(weights, leaves)])
        nnx.update(self.module, new_state)

    def _weight_state(self) -> Any:
        return nnx.state(self.module, nnx.Not(nnx.RngState), graph=GRAPH)

    @property
    def optimizer(self) -> optimizers_lib.Optimizer:
        """The compiled optimizer; ``model.optimizer.learning_rate`` reads / sets the live LR."""
        self._require_compiled("read the optimizer")
        return self._optimizer

    # -- compile ----------------------------------------------------------------------------
    def compile(self, optimizer: Any = "adamw", loss: Any = None,
                metrics: Sequence[Any] | None = None,
                weighted_metrics: Sequence[Any] | None = None,
                steps_per_execution: int | str = "auto", seed: int = 0,
                augment: Any = None, precision: str = "float32",
                float32_layers: Sequence[type] = precision_lib.FLOAT32_LAYERS,
                gradient_accumulation_steps: int = 1, remat: bool | str = False) -> None:
        """Configures training, as Keras's ``compile``.

        Args:
            optimizer: a name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``,
                ``"adagrad"``, ``"lion"``), an ``ef.optimizers`` optimizer, or any
                ``optax.GradientTransformation``.
            loss: a Keras loss name, an ``ef.losses`` object, or a callable
                ``(y_true, y_pred) -> per-example loss``. Losses take logits by default.
            metrics: names, ``ef.metrics`` objects or callables; padding rows never count,
                sample weights are ignored.
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

        Example:
            >>> model.compile(optimizer=ef.optimizers.adamw(3e-4), loss="mse")  # doctest: +SKIP
        """
        if loss is None:
            raise ValueError("compile needs a loss, e.g. loss='sparse_categorical_crossentropy' "
                             "or a callable (y_true, y_pred) -> per-example loss.")
        if steps_per_execution != "auto" and (not isinstance(steps_per_execution, int)
                                              or steps_per_execution < 1):
            raise ValueError(f"steps_per_execution must be 'auto' or a positive int, got "
                             f"{steps_per_execution!r}.")
        if not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be a positive int, got "
                             f"{gradient_accumulation_steps!r}.")
        self._compute_dtype = precision_lib.compute_dtype(precision)
        remat_lib.policy(remat) if remat else None  # refuses an unknown policy now
        self._precision, self._float32_layers = precision, tuple(float32_layers)
        self._accumulation, self._remat = gradient_accumulation_steps, remat
        self._optimizer = optimizers_lib.get(optimizer)
        self._optimizer.reset()  # built for this compile by the next fit
        self._optimizer._binding = self
        self._loss = losses_lib.get(loss)
        from_logits = getattr(self._loss, "from_logits", True)
        self._metrics, self._weighted_metrics = metrics_lib.named_apart(
            [metrics_lib.get(m, from_logits) for m in metrics or []],
            [metrics_lib.get(m, from_logits) for m in weighted_metrics or []])
        self._steps_per_execution, self._auto_k = steps_per_execution, None
        self._auto_sizes, self._auto_timer = set(), None
        self._seed, self._augment = seed, augment
        self._state, self._steps = None, None
        self._compiled = True

    def _execution_steps(self) -> int | None:
        """Steps per dispatch: the compiled number, what "auto" chose, or ``None`` while
        "auto" has not measured yet. "auto" runs one step per dispatch in a ``fit`` whose
        callbacks must see every batch, whatever it chose in other fits."""
        if self._steps_per_execution == "auto":
            return 1 if self._every_batch else self._auto_k
        return self._steps_per_execution

    def _one_step_per_call(self) -> bool:
        """One step per call for the whole running ``fit``, set by the user (the number 1,
        or "auto" with a callback that must see every batch), not measured by "auto"."""
        return self._steps_per_execution == 1 or (
            self._steps_per_execution == "auto" and self._every_batch)

    def _require_compiled(self, action: str) -> None:
        if not self._compiled:
            raise RuntimeError(f"You must call `model.compile(optimizer=..., loss=...)` before "
                               f"you {action}.")

    # -- building the state and the steps ---------------------------------------------------
    def _ensure_module(self, data: DataAdapter) -> None:
        if self._module is None:
            self._module = as_nnx(self._user_module, data.sample_x(), self._seed)

    def _ensure_steps(self) -> Steps:
        if self._steps is None:
            self._steps = Steps(ModuleGraphs(self._module, self._edit_view), self._loss,
                                self._metrics, self._weighted_metrics, self._optimizer,
                                self._augment, self._seed, self._compute_dtype)
        return self._steps

    def _edit_view(self, view: nnx.Module, train: bool) -> None:
        """What the steps run: layers in the compute precision, rematerialised in training."""
        if self._compute_dtype is not None:
            precision_lib.set_compute_dtype(view, self._compute_dtype, self._float32_layers)
        if train and self._remat:
            remat_lib.rematerialise(view, self._remat)

    def _build(self, data: DataAdapter, total_steps: int | None,
               on_shapes: Callable[[TrainState, Any], None] | None = None) -> None:
        """Makes the module, the steps and (once per compile) the training state; a new
        state's shapes (and the sample batch that shaped it) go to ``on_shapes`` before its
        arrays are made."""
        self._ensure_module(data)
        self._distribution.check_batch_size(data.batch_size)
        steps = self._ensure_steps()
        transform = self._optimizer.build(total_steps, self._accumulation,
                                          loss_scaling=self._precision == "float16")
        if self._state is None:
            params, rest = split(self._module)
            rest = reseed(rest, self._seed)
            nnx.update(self._module, rest)
            self._state, self._shardings = self._new_state(transform, steps, params, rest,
                                                           data.sample_batch(), on_shapes)
            self._totals_zero = True
            self._module_shared = True
            self._step_count = 0
            self._has_lr = self._optimizer.current_lr(self._state.opt_state) is not None

    def _new_state(self, transform: Any, steps: Steps, params: Any, rest: Any, batch: Any,
                   on_shapes: Callable[[TrainState, Any], None] | None = None,
                   ) -> tuple[TrainState, TrainState]:
        """A training state from ``params`` and ``rest``, placed as training places it, and
        its shardings; ``steps.train`` is pinned to them (so it compiles once). Its shapes
        go to ``on_shapes(shapes, batch)`` first: the train step can start compiling while
        it is made."""
        dist = self._distribution
        opt_shapes = jax.eval_shape(transform.init, params)
        params_sharding, opt_sharding = dist.state_shardings(params, opt_shapes)
        totals = steps.zero_totals(params, rest, batch)
        step = np.zeros((), np.int32)
        one = dist.replicated_sharding()
        shardings = TrainState(params=params_sharding, rest=one, opt_state=opt_sharding,
                               step=one, totals=one)
        steps.shard_train(shardings, dist.chunk_sharding())
        if on_shapes is not None:
            on_shapes(TrainState(
                params=_placed_shapes(params, params_sharding),
                rest=_placed_shapes(rest, one), opt_state=_placed_shapes(opt_shapes, opt_sharding),
                step=_placed_shapes(step, one), totals=_placed_shapes(totals, one)), batch)
        params = dist.place(params, params_sharding)
        opt_state = init_optimizer_state(transform.init, params, opt_sharding)
        state = TrainState(params=params, rest=dist.replicate(rest), opt_state=opt_state,
                           step=dist.replicate(step),
                           totals=dist.replicate(totals))
        return state, shardings

    def _train_on_chunk(self, chunk: Any, batches: int) -> dict[str, jax.Array]:
        """Dispatches the train step; returns its logs (ready when it has run)."""
        if self._module_shared:  # the module may hold the state's buffers or user edits
            params, rest = split(self._module)
            self._state = self._distribution.place(
                self._state.replace(params=copy_tree(params), rest=copy_tree(rest)),
                self._shardings)
            self._module_shared = False
        treedef, leaves = self._flat_state()
        leaves, logs = self._steps.train.call_flat(treedef, leaves, chunk)
        self._state = None  # the old state's arrays were donated
        self._flat, self._state_logs = (treedef, leaves), logs
        self._module_stale = True
        self._step_count += batches
        return logs

    def _train_logs(self) -> dict[str, jax.Array]:
        """The logs of the current state, on the device: the last train step's, unless the
        state changed since (a restore, a new learning rate)."""
        if self._state_logs is None:
            self._state_logs = self._steps.logs(self._state.totals, self._state.opt_state)
        return self._state_logs

    def _reset_totals(self) -> None:
        if self._totals_zero:  # already zero (a new state): nothing to run
            return
        # on the device: one small dispatch, no host-to-device copy between epochs
        self._state = self._state.replace(totals=self._steps.zero(self._state.totals))
        self._totals_zero = True

    @property
    def _state(self) -> TrainState | None:
        """The training state. Setting it forgets what was known of the one before: its
        leaves, its logs, that its metric sums were zero. Between train steps it is kept as
        leaves (see ``FlatStateJit``), and built from them when read."""
        if self._live_state is None and self._flat is not None:
            self._live_state = jax.tree.unflatten(*self._flat)
        return self._live_state

    @_state.setter
    def _state(self, state: TrainState | None) -> None:
        self._live_state, self._flat, self._state_logs = state, None, None
        self._totals_zero = False

    def _flat_state(self) -> tuple[Any, list]:
        """``(treedef, leaves)`` of the training state."""
        if self._flat is None:
            leaves, treedef = jax.tree.flatten(self._live_state)
            self._flat = (treedef, leaves)
        return self._flat

    def _eval_state(self) -> tuple[Any, Any]:
        if self._state is not None and not self._module_shared:
            return self._state.params, self._state.rest
        params, rest = split(self.module)
        return (self._distribution.place(params, self._params_sharding(params)),
                self._distribution.replicate(rest))

    def _params_sharding(self, params: Any) -> Any:
        if self._shardings is not None:
            return self._shardings.params
        return self._distribution.param_shardings(params)

    # -- checkpoints: what is saved and restored -------------------------------------------
    def _host_step(self) -> int:
        return self._step_count

    def _weights_now(self) -> dict[str, Any]:
        params, rest = self._eval_state()
        return {"params": params, "rest": rest}

    def _checkpoint_payload(self, train: bool) -> tuple[Any, Any]:
        """``(weights, train state)`` as they are now (train state ``None`` if not asked)."""
        state = self._state
        extra = {"opt_state": state.opt_state, "step": state.step, "totals": state.totals}
        return self._weights_now(), (extra if train else None)

    def _checkpoint_targets(self, train: bool) -> tuple[Any, Any]:
        """Abstract targets (shapes, dtypes, shardings) for restoring a checkpoint."""
        weights, extra = self._checkpoint_payload(train)
        return abstract(weights), (None if extra is None else abstract(extra))

    def _load_checkpoint(self, weights: Any, train: Any) -> None:
        """Makes a restored checkpoint the live training state."""
        self._state = self._state.replace(params=weights["params"], rest=weights["rest"],
                                          **({} if train is None else train))
        self._module_shared, self._module_stale = False, True
        if train is not None:
            self._step_count = int(train["step"])

    def _resume_at(self, position: tuple[int, int], callback_states: list) -> None:
        self._pending_resume = (tuple(position), callback_states)

    def _take_resume_position(self, callbacks: CallbackList) -> tuple[int, int] | None:
        """Applies a restored backup's callback states; returns where to continue."""
        if self._pending_resume is None:
            return None
        position, states = self._pending_resume
        self._pending_resume = None
        saved = {(entry["class"], entry["nth"]): entry["state"] for entry in states if entry}
        for nth, callback in _numbered(callbacks.callbacks):
            if (type(callback).__name__, nth) in saved:
                callback.set_state(saved[(type(callback).__name__, nth)])
        self._position = position
        return position

    def _callback_states(self) -> list[dict[str, Any] | None]:
        """Each stateful callback's state, keyed by class name and occurrence."""
        return [None if (state := c.get_state()) is None else
                {"class": type(c).__name__, "nth": nth, "state": state}
                for nth, c in _numbered(self._callbacks.callbacks)]

    def save_weights(self, path: str) -> None:
        """Writes the weights (parameters, batch statistics, RNG state) to a checkpoint
        directory; :meth:`load_weights` on a model built by the same code restores them."""
        store = Checkpoints(path, keep_latest=1, async_save=False)
        store.delete(self._step_count)  # saving again at the same step overwrites, as Keras
        store.save(self._step_count, self._weights_now(), {"epoch": self._position[0]})
        store.close()

    def load_weights(self, path: str, step: int | None = None) -> None:
        """Loads weights from a checkpoint directory (of :meth:`save_weights`,
        ``ModelCheckpoint`` or ``BackupAndRestore``): ``step``, else the best by the
        monitored value, else the latest. Refuses a checkpoint of a different model."""
        if self._module is None:
            raise RuntimeError("Initialise this Linen model first (sample_input= or a call).")
        store = Checkpoints(path, keep_latest=1, async_save=False)
        chosen = step if step is not None else store.best_step()
        if chosen is None:
            raise FileNotFoundError(f"No checkpoint in {path}.")
        target = abstract(self._weights_now())
        _, weights, _, _ = store.restore(target, step=chosen)
        store.close()
        nnx.update(self.module, weights["params"], weights["rest"])

    # -- the optimizer reads and writes the live state through these ------------------------
    def _get_opt_state(self) -> Any:
        return None if self._state is None else self._state.opt_state

    def _set_opt_state(self, opt_state: Any) -> None:
        placed = jax.tree.map(lambda new, old: put(new, old.sharding),
                              opt_state, self._state.opt_state)
        self._state = self._state.replace(opt_state=placed)

    # -- fit / evaluate / predict -----------------------------------------------------------
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
            batch_size: rows per step for arrays (default 32); the last partial batch is
                padded and masked, so the step compiles once.
            epochs: index of the last epoch (Keras semantics with ``initial_epoch``).
            verbose: ``"auto"`` (a bar on a terminal, a line per epoch otherwise), 0, 1, 2.
            callbacks: ``ef.callbacks.Callback`` instances.
            validation_split: last fraction of the arrays held out (before shuffling).
            validation_data: ``(x_val, y_val[, sample_weight])`` arrays or an iterable.
            shuffle: reshuffle array rows each epoch (seeded by ``compile(seed=)``).
            class_weight: ``{class: weight}`` multiplying each row's loss weight.
            sample_weight: per-row loss weights (0 means "not in the batch").
            initial_epoch: epoch to start from (for resuming).
            steps_per_epoch: batches per epoch (required for one-shot generators).
            validation_steps: batches per validation pass.
            validation_batch_size: defaults to ``batch_size``.
            validation_freq: validate every N epochs, or at the listed (1-based) epochs.
            x_key: for datasets of dicts (``tfds`` without ``as_supervised``): the input's key
                (or a list of keys, giving a dict input).
            y_key: the label's key in those dicts.

        Returns:
            The :class:`~easyfit.callbacks.History`, also stored as ``model.history``.
        """
        self._require_compiled("train the model (fit)")
        if x is None:
            raise ValueError("fit needs training data: fit(x, y) with arrays, or fit(dataset).")
        if validation_split and validation_data is None and not _is_arrays(x):
            raise ValueError("validation_split works only with array inputs; pass "
                             "validation_data= for datasets, generators and iterables.")
        train = adapt(x, y, batch_size=batch_size, sample_weight=sample_weight,
                      class_weight=class_weight, shuffle=shuffle, seed=self._seed,
                      steps=steps_per_epoch, epochs=epochs - initial_epoch, keys=(x_key, y_key))
        validation = None
        if validation_split and validation_data is None:
            train, validation = train.split(validation_split)
        elif validation_data is not None:
            validation = self._validation_adapter(
                validation_data, validation_batch_size or train.batch_size, validation_steps,
                (x_key, y_key))
        total_steps = None if train.steps is None else train.steps * epochs
        verbose = _verbosity(verbose) if is_chief() else 0  # one progress display per job
        history = History()
        extra = [ProgressBar(verbose)] if verbose else []
        # As Keras: the progress display first, History after the user's callbacks (it records
        # what they set); checkpointing last, so it saves everyone's state after the epoch.
        user = list(callbacks or [])
        savers = [c for c in user if getattr(c, "runs_last", False)]
        ordered = [*extra, *(c for c in user if c not in savers), history, *savers]
        callback_list = CallbackList(ordered, model=self,
                                     params={"epochs": epochs, "steps": train.steps,
                                             "verbose": verbose})
        # As Keras: a callback with batch hooks of its own sees every batch.
        self._every_batch = callback_list.needs_every_batch()
        try:
            compiles = CompileWatch()
            self._build(train, total_steps,
                        on_shapes=lambda shapes, batch: start_auto(self, train, shapes, batch))
            compiles.release_if_compiled()
            memory_lib.check_capacity(self, train.batch_size, train)  # warns if it cannot fit
            self.stop_training = False
            self.history = history
            self._callbacks = callback_list
            fit_loop(self, train, validation, epochs=epochs, initial_epoch=initial_epoch,
                     validation_freq=validation_freq, callbacks=callback_list)
        finally:
            self._every_batch = False
        self.module  # noqa: B018 -- write the trained weights back to the user's module
        return history

    def _validation_adapter(self, data: Any, batch_size: int, steps: int | None,
                            keys: Any) -> DataAdapter:
        if isinstance(data, tuple) and 2 <= len(data) <= 3 and _is_arrays(data[0]):
            return ArrayAdapter(data[0], data[1], data[2] if len(data) == 3 else None,
                                batch_size=batch_size, steps=steps)
        return adapt(data, batch_size=batch_size, steps=steps, keys=keys)

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None,
                 verbose: int | str = "auto", sample_weight: Any = None,
                 steps: int | None = None, callbacks: Sequence[Callback] | None = None,
                 return_dict: bool = False, x_key: Any = None,
                 y_key: Any = None) -> float | list[float] | dict[str, float]:
        """Loss and metrics over the data, in eval mode (dropout off, BatchNorm frozen).

        Returns:
            The loss if there are no metrics, else ``[loss, *metrics]``; a dict with
            ``return_dict=True``, as Keras.

        Example:
            >>> model.evaluate(x_test, y_test, return_dict=True)   # doctest: +SKIP
            {'loss': 0.08, 'accuracy': 0.975}
        """
        self._require_compiled("evaluate the model")
        data = adapt(x, y, batch_size=batch_size, sample_weight=sample_weight, steps=steps,
                     keys=(x_key, y_key))
        self._ensure_module(data)
        self._distribution.check_batch_size(data.batch_size)
        self._ensure_steps()
        logs = evaluate_loop(self, data, CallbackList(callbacks or [], model=self))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x: Any, batch_size: int | None = None, verbose: int | str = "auto",
                steps: int | None = None,
                callbacks: Sequence[Callback] | None = None, x_key: Any = None) -> Any:
        """Model outputs as numpy, one row per input row, in eval mode.

        Example:
            >>> model.predict(x_test).shape   # doctest: +SKIP
            (360, 10)
        """
        data = adapt(x, batch_size=batch_size, steps=steps, with_y=False, keys=(x_key, None))
        self._ensure_module(data)
        self._distribution.check_batch_size(data.batch_size)
        self._ensure_steps()
        return predict_loop(self, data, CallbackList(callbacks or [], model=self))

    # -- choosing the learning rate ------------------------------------------------------------
    def find_lr(self, x: Any, y: Any = None, min_lr: float = 1e-7, max_lr: float = 1.0,
                steps: int = 100, batch_size: int | None = None,
                **options: Any) -> "lr_finder.LRFinderResult":
        """The learning-rate range test (see :func:`easyfit.lr_finder.find_lr`): trains a
        copy of the state for ``steps`` batches while the rate grows from ``min_lr`` to
        ``max_lr``; the model's weights and optimizer are left as they were.

        Example:
            >>> result = model.find_lr(x_train, y_train)   # doctest: +SKIP
            >>> result.suggestion, result.plot("lr.png")   # doctest: +SKIP
        """
        return lr_finder.find_lr(self, x, y, min_lr=min_lr, max_lr=max_lr, steps=steps,
                                 batch_size=batch_size, **options)

    # -- memory -------------------------------------------------------------------------------
    def estimate_memory(self, batch_size: int, x: Any = None, y: Any = None
                        ) -> "memory_lib.MemoryEstimate":
        """Per-device memory of training at ``batch_size``, from the compiled train step.

        Args:
            batch_size: the global batch size to estimate for.
            x: a few input rows (needed only before the model has seen data).
            y: matching targets.

        Example:
            >>> print(model.estimate_memory(256, x_train[:2], y_train[:2]))  # doctest: +SKIP
        """
        return memory_lib.estimate_memory(self, batch_size, x, y)

    def find_batch_size(self, x: Any = None, y: Any = None, budget_bytes: int | None = None,
                        max_batch_size: int = 65536) -> int:
        """The largest batch size whose compiled train step fits ``budget_bytes`` per device
        (default: the device's capacity), found from compiled estimates, with no trial runs.

        Example:
            >>> model.find_batch_size(x_train[:2], y_train[:2], budget_bytes=2 * 2**30)  # doctest: +SKIP
            1024
        """
        return memory_lib.find_batch_size(self, x, y, budget_bytes, max_batch_size)

    def summary(self, print_fn=print, batch_size: int | None = None) -> str:
        """Prints (and returns) a table of the module's layers, parameter shapes and sizes;
        on several devices also the mesh and each sharded parameter's partition spec; with
        ``batch_size``, the per-device memory estimate of training at that batch size
        (:meth:`estimate_memory`; the model must have seen data)."""
        module, dist = self.module, self._distribution
        placement = None
        if dist.mesh.size > 1:  # each parameter's partition spec, and the mesh
            shardings = self._params_sharding(split(module)[0])
            placement = {"/".join(names): str(sharding.spec)
                         for names, sharding in flatten(shardings)[0]}
        text = summarize(module, placement,
                         dist.describe() + "; parameters replicated unless a spec is shown"
                         if placement is not None else None)
        if batch_size is not None:
            text += "\n" + str(self.estimate_memory(batch_size))
        if print_fn is not None:
            print_fn(text)
        return text
