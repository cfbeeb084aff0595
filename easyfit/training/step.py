"""The jitted train, eval and predict steps: pure functions over fixed-shape chunks.

A chunk is ``k`` stacked batches (``k = steps_per_execution``); the train step loops over
them and carries `TrainState`, which is donated (it returns the new
state and the logs after it). Padding rows carry zero weight, so they are out of
the loss, the gradients and the metrics; a fully padded filler batch (the short last chunk
of an epoch) is skipped, so it changes nothing. A chunk of an array dataset held on the
devices (`IndexedChunk`) carries row numbers: each batch's
rows are gathered inside the loop.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from easyfit import losses as losses_lib
from easyfit import outputs as outputs_lib
from easyfit import errors
from easyfit.training import module_checks
from easyfit.data.batch import Batch
from easyfit.data.on_device import IndexedChunk, gather_rows
from easyfit.metrics import Metric
from easyfit.optimizers import Optimizer
from easyfit.precision import cast_floating, loss_scale
from easyfit.modules.graph import GRAPH, ModuleGraphs
from easyfit.training.train_state import TrainState

__all__ = ["FlatStateJit", "Steps"]


_AUGMENT_STREAM = 0x5EED  # keeps augmentation randomness apart from the dropout streams


def _add(a: Any, b: Any) -> Any:
    return jax.tree.map(jnp.add, a, b)


def _zeros_like(tree: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, tree)


def _over_real_batches(body: Callable[[Any, Batch], Any], carry: Any, chunk: Batch) -> Any:
    """``carry = body(carry, batch)`` for each batch of ``chunk`` that holds a real row.

    Padding only ever ends a batch (so a real batch's first row is real) and filler batches
    only ever end a chunk: a loop that stops at the first batch whose first row is padding
    skips the fillers. That costs no ``cond`` per batch (~3% of a small model's step on
    XLA:CPU) and no count of the real batches ahead of the loop (three more kernels to
    compile in the first ``fit``).
    """
    k = chunk.mask.shape[0]
    at = lambda a, i: jax.lax.dynamic_index_in_dim(a, i, keepdims=False,
                                                   allow_negative_indices=False)

    def real(i):
        return (i < k) & (at(chunk.mask[:, 0], jnp.minimum(i, k - 1)) > 0)

    def step(loop):
        i, carry = loop
        return i + 1, body(carry, jax.tree.map(lambda a: at(a, i), chunk))

    return jax.lax.while_loop(lambda loop: real(loop[0]), step, (jnp.int32(0), carry))[1]


class FlatStateJit:
    """``jax.jit`` of ``fn(state, chunk) -> (state, out)``, whose state can also come and go
    as its flat list of leaves (`call_flat`).

    Flattening a training state's ``nnx.Variable`` objects into a call and building new ones
    from its outputs costs ~30 us a call, a quarter of a small model's one-step dispatch; a
    caller that keeps the leaves between calls skips both. Both ways of calling run (and
    compile) the same program.

    The row numbers of an `IndexedChunk` come in as numpy,
    and the call places them (with ``rows_sharding``) on its fast path: ~10 us, against
    ~120 us for a ``device_put`` of the chunk first.

    Args:
        fn: the step; its state is donated.
        shardings: pins the output state to these (a pytree like the state), and ``out`` to
            ``out_sharding``; ``None``: as XLA chooses.
        rows_sharding: where the row numbers of an indexed chunk go (batch axis split).

    Examples:
        >>> step = FlatStateJit(lambda state, x: ({"w": state["w"] + x}, x.sum()))
        >>> leaves, treedef = jax.tree.flatten({"w": jnp.zeros(2)})
        >>> leaves, total = step.call_flat(treedef, leaves, jnp.ones(2))
        >>> leaves, float(total)
        ([Array([1., 1.], dtype=float32)], 2.0)
    """

    def __init__(self, fn: Callable, shardings: Any = None, out_sharding: Any = None,
                 rows_sharding: Any = None):
        self._fn, self._shardings, self._out_sharding = fn, shardings, out_sharding
        self._rows_sharding = rows_sharding
        self._jits: dict[Any, Any] = {}  # per state structure and kind of chunk

    def _jit(self, treedef: Any, chunk: Any) -> Any:
        indexed = isinstance(chunk, IndexedChunk)
        jitted = self._jits.get((treedef, indexed))
        if jitted is None:
            def flat(leaves, chunk):
                state, out = self._fn(jax.tree.unflatten(treedef, leaves), chunk)
                return jax.tree.leaves(state), out

            flat.__name__ = flat.__qualname__ = self._fn.__name__  # as compile logs name it
            pinned = {}
            if self._shardings is not None:  # a prefix of the state: one sharding per leaf
                shape = jax.tree.unflatten(treedef, [0] * treedef.num_leaves)
                pinned["out_shardings"] = (
                    jax.tree.leaves(jax.tree.broadcast(self._shardings, shape)),
                    self._out_sharding)
            if indexed and self._rows_sharding is not None:  # the rest: as they come
                pinned["in_shardings"] = (None, IndexedChunk(self._rows_sharding, None))
            jitted = self._jits[treedef, indexed] = jax.jit(flat, donate_argnums=0, **pinned)
        return jitted

    def __call__(self, state: Any, chunk: Any) -> tuple[Any, Any]:
        leaves, treedef = jax.tree.flatten(state)
        leaves, out = self._jit(treedef, chunk)(leaves, chunk)
        return jax.tree.unflatten(treedef, leaves), out

    def call_flat(self, treedef: Any, leaves: list, chunk: Any) -> tuple[list, Any]:
        """The step on a state given as ``jax.tree.flatten`` gives it; returns its leaves."""
        return self._jit(treedef, chunk)(leaves, chunk)

    def trace(self, state: Any, chunk: Any) -> jax.stages.Traced:
        leaves, treedef = jax.tree.flatten(state)
        return self._jit(treedef, chunk).trace(leaves, chunk)

    def lower(self, state: Any, chunk: Any) -> jax.stages.Lowered:
        return self.trace(state, chunk).lower()

    def cache_size(self) -> int:
        """Programs compiled for this step so far (one per shape and sharding)."""
        return sum(jitted._cache_size() for jitted in self._jits.values())


class Steps:
    """Builds and holds the jitted steps for one compiled model.

    Each step is jitted once here; shapes never change within a fit, so each compiles once.

    Args:
        graphs: the module's static graph in train and eval mode.
        loss_fn: ``(y_true, y_pred) -> per-example loss``.
        metrics: metrics over real rows (padding excluded, sample weights ignored).
        weighted_metrics: metrics weighted by sample weight.
        optimizer: the easyfit optimizer (built by ``fit`` before the first train step).
        augment: ``fn((x, y), rng) -> (x, y)`` applied to training batches only.
        seed: seeds the augmentation's RNG stream (``fold_in(seed stream, step)``).
        compute_dtype: mixed precision: floating inputs are cast to it and outputs back to
            float32 (the layers' own ``dtype`` is set in ``graphs``); ``None``: as given.
    """

    def __init__(self, graphs: ModuleGraphs, loss_fn: Callable | None, metrics: Sequence[Metric],
                 weighted_metrics: Sequence[Metric], optimizer: Optimizer | None,
                 augment: Callable | None = None, seed: int = 0, compute_dtype: Any = None):
        self.graphs, self.loss_fn, self.compute_dtype = graphs, loss_fn, compute_dtype
        self.augment, self.seed = augment, seed
        self.metrics, self.weighted_metrics = list(metrics), list(weighted_metrics)
        self.loss_metrics: list[Metric] = []  # several outputs: each one's loss, logged
        self.outputs: outputs_lib.Outputs | None = None  # several outputs, paired at a trace
        self.optimizer = optimizer
        self.train = FlatStateJit(self._train_chunk)
        self.eval = jax.jit(self._eval_chunk, donate_argnums=2)
        self.predict = jax.jit(self._predict_chunk)
        self.logs = jax.jit(self._logs)
        self.results = jax.jit(self._results)
        self.zero = jax.jit(_zeros_like, donate_argnums=0)

    def shard_train(self, shardings: TrainState, chunk_sharding: Any) -> None:
        """Pins the train step's output state to ``shardings`` (the input's), so the state
        keeps its layout from step to step and the step compiles once; the row numbers of
        indexed chunks go to ``chunk_sharding``."""
        self.train = FlatStateJit(self._train_chunk, shardings,
                                  shardings.step,  # logs: replicated, as the step counter
                                  chunk_sharding)
        self.zero = jax.jit(_zeros_like, donate_argnums=0, out_shardings=shardings.totals)

    # -- one batch --------------------------------------------------------------------------
    def _forward(self, graphdef, params, rest, x):
        module = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables in this trace
        x = cast_floating(x, self.compute_dtype)
        module_checks.check_call(module, x)
        with errors.explained("module", x=x, module=module):  # traced only: free once compiled
            y_pred = module(x)
        inputs = jax.tree.leaves(x)
        module_checks.check_outputs(y_pred, rows=inputs[0].shape[0] if inputs and
                                    inputs[0].ndim else None)
        if self.compute_dtype is not None:  # the loss and the metrics see float32
            y_pred = cast_floating(y_pred, jnp.float32)
        return y_pred, nnx.split(module, nnx.Param, ..., graph=GRAPH)[2]

    def _loss_values(self, batch: Batch, y_pred) -> jax.Array:
        """The loss per example (or per token, with per-token weights), 0 where weightless."""
        with errors.explained("loss", y=batch.y, y_pred=y_pred,
                              what=errors.label("loss", self.loss_fn)):
            if outputs_lib.is_several(y_pred) or isinstance(self.loss_fn,
                                                            outputs_lib.OutputsSpec):
                return self._several(y_pred).values(batch.y, y_pred, batch.weight)
            module_checks.check_labels(batch.y, y_pred)
            return losses_lib.align(losses_lib.loss_values(self.loss_fn, batch.y, y_pred),
                                    batch.weight)

    def _several(self, y_pred) -> outputs_lib.Outputs:
        """Several outputs: the losses and metrics paired with them at the first trace."""
        if self.outputs is None:
            outputs = outputs_lib.bind(self.loss_fn, self.metrics, self.weighted_metrics, y_pred)
            self.outputs, self.loss_metrics = outputs, outputs.loss_metrics
            self.metrics, self.weighted_metrics = outputs.metrics, outputs.weighted_metrics
        return self.outputs

    def _batch_totals(self, values, batch: Batch, y_pred) -> dict[str, Any]:
        totals = {"loss": {"sum": jnp.sum(values * batch.weight),
                           "weight": jnp.sum(batch.weight)}}
        weighted = [(m, batch.mask) for m in self.metrics] + [
            (m, batch.weight) for m in self.loss_metrics + self.weighted_metrics]
        for metric, weight in weighted:
            with errors.explained("loss", y=batch.y, y_pred=y_pred,
                                  what=errors.label("metric", metric)):
                totals[metric.name] = metric.totals(batch.y, y_pred, weight)
        return totals

    def _train_batch(self, state: TrainState, batch: Batch) -> TrainState:
        if self.augment is not None:
            stream = jax.random.fold_in(jax.random.key(self.seed), _AUGMENT_STREAM)
            augmented = self.augment((batch.x, batch.y), jax.random.fold_in(stream, state.step))
            if not (isinstance(augmented, (tuple, list)) and len(augmented) == 2):
                raise TypeError(f"augment must return the batch as (x, y); it returned "
                                f"{errors.describe(augmented, 'a value:')}. End it with "
                                "`return x, y`.")
            x, y = augmented
            batch = batch._replace(x=x, y=y)

        def loss(params):
            y_pred, rest = self._forward(self.graphs.train, params, state.rest, batch.x)
            values = self._loss_values(batch, y_pred)
            mean = jnp.sum(values * batch.weight) / jnp.maximum(jnp.sum(batch.weight), 1e-12)
            if scale is not None:  # float16: scaled up here, gradients scaled back by the optimizer
                mean = mean * scale
            return mean, (y_pred, values, rest)

        scale = loss_scale(state.opt_state)

        grads, (y_pred, values, rest) = jax.grad(loss, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.transform.update(grads, state.opt_state, state.params)
        return state.replace(
            params=optax.apply_updates(state.params, updates), rest=rest, opt_state=opt_state,
            step=state.step + 1,
            totals=_add(state.totals, self._batch_totals(values, batch, y_pred)))

    # -- chunks -----------------------------------------------------------------------------
    def _train_loop(self, state: TrainState, chunk: Batch | IndexedChunk) -> TrainState:
        train_batch = self._train_batch
        if isinstance(chunk, IndexedChunk):  # each batch's rows are gathered where it runs
            tables, chunk = chunk.tables, chunk.rows
            train_batch = lambda state, batch: self._train_batch(state, gather_rows(tables, batch))
        if chunk.mask.shape[0] == 1:
            return train_batch(state, jax.tree.map(lambda a: a[0], chunk))

        return _over_real_batches(train_batch, state, chunk)

    def _train_chunk(self, state: TrainState,
                     chunk: Batch | IndexedChunk) -> tuple[TrainState, dict]:
        """The train step, and the logs after it (as `_logs`): read at log points with
        no program of their own to compile and run, and small enough for the loop to wait on
        (the state is donated to the next step, so it cannot be waited on)."""
        state = self._train_loop(state, chunk)
        return state, self._logs(state.totals, state.opt_state)

    def _eval_chunk(self, params, rest, totals, chunk: Batch):
        def batch_totals(totals, batch):
            y_pred, _ = self._forward(self.graphs.eval, params, rest, batch.x)
            return _add(totals, self._batch_totals(self._loss_values(batch, y_pred), batch,
                                                   y_pred))

        return _over_real_batches(batch_totals, totals, chunk)

    def _predict_chunk(self, params, rest, x_chunk):
        return jax.lax.map(lambda x: self._forward(self.graphs.eval, params, rest, x)[0], x_chunk)

    # -- logs -------------------------------------------------------------------------------
    def zero_totals(self, params, rest, batch: Batch) -> dict[str, Any]:
        """Zero metric sums shaped as the steps produce them, on the host (traced only:
        nothing runs or compiles)."""

        def totals(params, rest, batch):
            y_pred, _ = self._forward(self.graphs.eval, params, rest, batch.x)
            return self._batch_totals(self._loss_values(batch, y_pred), batch, y_pred)

        shapes = jax.eval_shape(totals, params, rest, batch)
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)

    def _results(self, totals) -> dict[str, jax.Array]:
        out = {"loss": totals["loss"]["sum"] / jnp.maximum(totals["loss"]["weight"], 1e-12)}
        for metric in self.loss_metrics + self.metrics + self.weighted_metrics:
            out[metric.name] = metric.result(totals[metric.name])
        return out

    def _logs(self, totals, opt_state) -> dict[str, jax.Array]:
        out = self._results(totals)
        lr = self.optimizer.current_lr(opt_state)
        if lr is not None:
            out["learning_rate"] = lr
        return out

    def log_names(self, with_lr: bool) -> list[str]:
        """The keys that ``logs`` will have, known without running anything (with several
        outputs, once a step or `zero_totals` has been traced: they name the logs)."""
        names = ["loss"] + [m.name for m in self.loss_metrics + self.metrics
                            + self.weighted_metrics]
        return names + (["learning_rate"] if with_lr else [])
