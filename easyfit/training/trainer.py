"""The trainer: the live training of one model, behind a small public surface.

It owns the user's module (as NNX), the `TrainState`
while training runs, the jitted steps, the steps-per-dispatch plan, the write-back of trained
weights to the module and what a checkpoint holds. ``Model`` (the facade), the loops, the
memory estimate, the learning-rate finder and the checkpoint callbacks use only the public
names below.

During ``fit`` the state is the truth and the module is stale: weights are written back to
the module (``nnx.update``) when it is read (``trainer.module``), which ``fit`` does at its
end, as Keras 3's JAX trainer writes its state back to the variables.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from easyfit import precision as precision_lib
from easyfit import remat as remat_lib
from easyfit.checkpoint import abstract
from easyfit.data.adapters import DataAdapter
from easyfit.distribute import Distribution
from easyfit.distribute.strategies import put
from easyfit.metrics import Metric
from easyfit.modules.graph import ModuleGraphs, copy_tree, reseed, split
from easyfit.modules.linen import as_nnx
from easyfit.training.dispatch_plan import DispatchPlan
from easyfit.training.options import TrainingOptions
from easyfit.training.step import Steps
from easyfit.training.train_state import TrainState, init_optimizer_state

__all__ = ["Resume", "Trainer"]


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where a restored backup continues: ``(epoch, batch in epoch)`` and the callbacks'
    saved states (see [`states`][easyfit.callbacks.CallbackList.states])."""

    position: tuple[int, int]
    callback_states: list


def _placed_shapes(tree: Any, sharding: Any) -> Any:
    """``tree``'s shapes and dtypes, placed with ``sharding`` (one, or a tree of them)."""
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                            tree)
    return jax.tree.map(lambda one, subtree: _placed_shapes(subtree, one), sharding, tree)


class Trainer:
    """The live training of one model.

    Args:
        module: the user's module: an ``nnx.Module`` or a ``flax.linen.Module`` (made an
            NNX module from the first input it sees).
        distribution: where arrays live.

    Attributes:
        distribution: the ``ef.distribute`` strategy.
        total_steps: the training length (batches) this compile's optimizer resolved its
            schedule fractions against (set by the first ``fit`` after ``compile``).
        options: the last ``compile``'s settings (defaults before it, for ``predict``).
        dispatch: steps per dispatch for this compile.
        step_count: train steps (batches) taken, counted on the host.
        position: ``(epoch, batch in epoch)`` that ``fit`` has reached.
        has_lr: the optimizer state shows a learning rate (logged as ``learning_rate``).
        pending_resume: a restored backup's [`Resume`][easyfit.training.trainer.Resume], until
            the loop takes it.
        callbacks: the running ``fit``'s ``CallbackList`` (for backups of their state).
    """

    def __init__(self, module: Any, distribution: Distribution):
        self.distribution = distribution
        self._user_module = module
        self._module = as_nnx(module)  # None: a Linen module waiting for its first input
        self.options = TrainingOptions()
        self.dispatch = DispatchPlan()
        self._steps: Steps | None = None
        self._shardings: TrainState | None = None
        self._live_state: TrainState | None = None
        self._flat: tuple[Any, list] | None = None  # (treedef, leaves) between train steps
        self._state_logs: dict[str, jax.Array] | None = None
        self._totals_zero = False
        self._module_stale = False   # the state holds newer weights than the module
        self._module_shared = True   # the module may share buffers with the state, or be edited
        self.step_count = 0
        self.position = (0, 0)
        self.has_lr = False
        self.pending_resume: Resume | None = None
        self.total_steps: int | None = None
        self._saved_training: dict[str, Any] | None = None
        self.callbacks: Any = None

    # -- the module ------------------------------------------------------------------------
    @property
    def has_module(self) -> bool:
        """Whether the module exists as NNX (a Linen one needs an input first)."""
        return self._module is not None

    @property
    def module(self) -> nnx.Module:
        """The NNX module with the current weights (written back from training on access)."""
        if self._module is None:
            raise RuntimeError("This Linen module has not been initialised yet: pass "
                               "`sample_input=` to ef.Model, or call fit/evaluate/predict first.")
        if self._module_stale:
            nnx.update(self._module, self.state.params, self.state.rest)
            self._module_stale = False
        self._module_shared = True
        return self._module

    def ensure_module(self, data: DataAdapter | None = None, sample_input: Any = None) -> None:
        """Initialises a Linen module from ``sample_input`` or a sample of ``data``."""
        if self._module is None and (data is not None or sample_input is not None):
            self._module = as_nnx(self._user_module,
                                  data.sample_x() if sample_input is None else sample_input,
                                  self.options.seed)

    # -- compile -----------------------------------------------------------------------------
    def configure(self, options: TrainingOptions) -> None:
        """Takes a new ``compile``'s settings; the state and steps are made anew by the next
        ``fit`` (from the module's current weights)."""
        if self._module_stale:
            self.module  # noqa: B018 -- keep the trained weights
        options.optimizer.reset()  # built for this compile by the next fit
        self.options = options
        self.dispatch = DispatchPlan(options.steps_per_execution)
        self.state, self._steps = None, None
        self._saved_training = None  # a saved optimizer state belongs to the old compile

    def _edit_view(self, view: nnx.Module, train: bool) -> None:
        """What the steps run: layers in the compute precision, rematerialised in training."""
        options = self.options
        if options.compute_dtype is not None:
            precision_lib.set_compute_dtype(view, options.compute_dtype, options.float32_layers)
        if train and options.remat:
            remat_lib.rematerialise(view, options.remat)

    @property
    def steps(self) -> Steps:
        """The jitted steps of this compile (made on first use)."""
        if self._steps is None:
            options = self.options
            self._steps = Steps(ModuleGraphs(self.module, self._edit_view), options.loss,
                                options.metrics, options.weighted_metrics, options.optimizer,
                                options.augment, options.seed, options.compute_dtype)
        return self._steps

    @property
    def has_steps(self) -> bool:
        return self._steps is not None

    @property
    def metrics(self) -> list[Metric]:
        """The compiled metrics under their log names; with several outputs, once a step
        has been traced, each output's loss and metrics (``a_loss``, ``b_accuracy``)."""
        if self._steps is None:
            return [*self.options.metrics, *self.options.weighted_metrics]
        steps = self._steps
        return [*steps.loss_metrics, *steps.metrics, *steps.weighted_metrics]

    # -- the training state -------------------------------------------------------------------
    @property
    def state(self) -> TrainState | None:
        """The training state (``None`` before the first ``fit`` of a compile). Setting it
        forgets what was known of the one before: its leaves, its logs, that its metric sums
        were zero. Between train steps it is kept as leaves (see ``FlatStateJit``), and built
        from them when read."""
        if self._live_state is None and self._flat is not None:
            self._live_state = jax.tree.unflatten(*self._flat)
        return self._live_state

    @state.setter
    def state(self, state: TrainState | None) -> None:
        self._live_state, self._flat, self._state_logs = state, None, None
        self._totals_zero = False

    def build(self, data: DataAdapter, total_steps: int | None,
              time_dispatch: bool = False) -> None:
        """Makes the module, the steps and (once per compile) the training state. With
        ``time_dispatch`` (``fit``), "auto" steps per dispatch compiles its first size from
        a new state's shapes while the state's arrays are made."""
        self.ensure_module(data)
        self.distribution.check_batch_size(data.batch_size)
        steps, options = self.steps, self.options
        saved, self._saved_training = self._saved_training, None
        if saved is not None:
            total_steps = saved["total_steps"]
        if not options.optimizer.built:
            self.total_steps = total_steps
        transform = options.optimizer.build(total_steps, options.accumulation_steps,
                                            loss_scaling=options.precision == "float16",
                                            ema=options.ema)
        if self.state is None:
            params, rest = split(self._module)
            if saved is None:  # a saved model continues with its own RNG streams
                rest = reseed(rest, options.seed)
            nnx.update(self._module, rest)
            plan = self.dispatch

            def start_timer(shapes: TrainState, batch: Any) -> None:
                if time_dispatch and plan.undecided() and plan.timer is None:
                    plan.start_timer(steps.train, self.distribution, data, shapes, batch)

            self.state, self._shardings = self.new_state(transform, steps, params, rest,
                                                         data.sample_batch(), start_timer)
            self._totals_zero = True
            self._module_shared = True
            self.step_count = 0
            if saved is not None:
                self._continue_saved(saved)
            self.has_lr = options.optimizer.current_lr(self.state.opt_state) is not None

    def continue_training(self, opt_state: Any, step: Any, step_count: int,
                          total_steps: int | None) -> None:
        """Makes the next training state continue a saved one (``ef.load_model``): the next
        ``fit`` of this compile builds its state with ``opt_state`` and ``step`` (host or
        device arrays, shaped as this compile's optimizer makes them) and counts batches from
        ``step_count``; it keeps the module's RNG streams instead of reseeding them and
        resolves schedule fractions for ``total_steps``, as the saved model did."""
        self._saved_training = {"opt_state": opt_state, "step": step, "step_count": step_count,
                                "total_steps": total_steps}

    def _continue_saved(self, saved: dict[str, Any]) -> None:
        state = self.state
        opt_state = jax.tree.map(lambda new, old: put(new, old.sharding), saved["opt_state"],
                                 state.opt_state)
        self.state = state.replace(opt_state=opt_state,
                                   step=put(np.asarray(saved["step"]), state.step.sharding))
        self._totals_zero = True  # the new state's metric sums are still zero
        self.step_count = saved["step_count"]

    def new_state(self, transform: Any, steps: Steps, params: Any, rest: Any, batch: Any,
                  on_shapes: Callable[[TrainState, Any], None] | None = None,
                  ) -> tuple[TrainState, TrainState]:
        """A training state from ``params`` and ``rest``, placed as training places it, and
        its shardings; ``steps.train`` is pinned to them (so it compiles once). Its shapes
        go to ``on_shapes(shapes, batch)`` first: the train step can start compiling while
        it is made."""
        dist = self.distribution
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
                           step=dist.replicate(step), totals=dist.replicate(totals))
        return state, shardings

    def train_on_chunk(self, chunk: Any, batches: int) -> dict[str, jax.Array]:
        """Dispatches the train step; returns its logs (ready when it has run)."""
        if self._module_shared:  # the module may hold the state's buffers or user edits
            params, rest = split(self._module)
            self.state = self.distribution.place(
                self.state.replace(params=copy_tree(params), rest=copy_tree(rest)),
                self._shardings)
            self._module_shared = False
        if self._flat is None:
            leaves, treedef = jax.tree.flatten(self._live_state)
            self._flat = (treedef, leaves)
        treedef = self._flat[0]
        leaves, logs = self._steps.train.call_flat(treedef, self._flat[1], chunk)
        self.state = None  # the old state's arrays were donated
        self._flat, self._state_logs = (treedef, leaves), logs
        self._module_stale = True
        self.step_count += batches
        return logs

    def train_logs(self) -> dict[str, jax.Array]:
        """The logs of the current state, on the device: the last train step's, unless the
        state changed since (a restore, a new learning rate)."""
        if self._state_logs is None:
            self._state_logs = self._steps.logs(self.state.totals, self.state.opt_state)
        return self._state_logs

    def reset_totals(self) -> None:
        """Zeroes the metric sums (at an epoch's start)."""
        if self._totals_zero:  # already zero (a new state): nothing to run
            return
        # on the device: one small dispatch, no host-to-device copy between epochs
        self.state = self.state.replace(totals=self._steps.zero(self.state.totals))
        self._totals_zero = True

    def eval_state(self) -> tuple[Any, Any]:
        """``(params, rest)`` as the eval and predict steps take them, placed."""
        if self.state is not None and not self._module_shared:
            return self.state.params, self.state.rest
        params, rest = split(self.module)
        return (self.distribution.place(params, self.params_sharding(params)),
                self.distribution.replicate(rest))

    @property
    def shardings(self) -> TrainState | None:
        """Where training places each part of the state (``None`` before it is built)."""
        return self._shardings

    def params_sharding(self, params: Any) -> Any:
        """Where training places ``params``."""
        if self._shardings is not None:
            return self._shardings.params
        return self.distribution.param_shardings(params)

    # -- the learning rate, read and set in the live optimizer state -------------------------
    @property
    def learning_rate(self) -> float:
        """The rate the next update uses: from the live state once ``fit`` has built it,
        else the optimizer's own (``model.optimizer.learning_rate``)."""
        optimizer = self.options.optimizer
        if self.state is None:
            return optimizer.learning_rate
        return optimizer.learning_rate_in(self.state.opt_state)

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        optimizer = self.options.optimizer
        if self.state is None:
            optimizer.learning_rate = value
            return
        opt_state = self.state.opt_state
        new = optimizer.with_lr(opt_state, float(value))
        self.state = self.state.replace(
            opt_state=jax.tree.map(lambda n, old: put(n, old.sharding), new, opt_state))

    # -- checkpoints: what is saved and restored -------------------------------------------
    def weights(self) -> dict[str, Any]:
        """``{"params", "rest"}``: the weights as they are now (RNG state included)."""
        params, rest = self.eval_state()
        return {"params": params, "rest": rest}

    def checkpoint_payload(self, train: bool) -> tuple[Any, Any]:
        """``(weights, train state)`` as they are now (train state ``None`` if not asked)."""
        state = self.state
        extra = {"opt_state": state.opt_state, "step": state.step, "totals": state.totals}
        return self.weights(), (extra if train else None)

    def checkpoint_targets(self, train: bool) -> tuple[Any, Any]:
        """Abstract targets (shapes, dtypes, shardings) for restoring a checkpoint."""
        weights, extra = self.checkpoint_payload(train)
        return abstract(weights), (None if extra is None else abstract(extra))

    def load_checkpoint(self, weights: Any, train: Any) -> None:
        """Makes a restored checkpoint the live training state."""
        self.state = self.state.replace(params=weights["params"], rest=weights["rest"],
                                        **({} if train is None else train))
        self._module_shared, self._module_stale = False, True
        if train is not None:
            self.step_count = int(train["step"])
