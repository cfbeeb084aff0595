"""Models with several outputs: a loss, a loss weight and metrics per output, as Keras.

A module that returns a dict of arrays (``{"a": ..., "b": ...}``) or a tuple of arrays
trains with one loss per output, ``loss = sum(loss_weight[o] * loss[o])``, each output's
loss being the weighted mean over real rows, as a single output's is. The outputs are
named by their dict keys, in sorted order (the order JAX flattens a dict in), or
``output_1``, ``output_2``, ... for a tuple (Keras 3 names a tuple's outputs after the
Functional model's output layers; a Flax module has none, so these are Keras 2's names).
With more than one loss, each output's loss is logged too, unweighted by its loss weight,
as ``{output}_loss``; a metric of one output is logged as ``{output}_{metric}``
(``b_accuracy``), and ``val_`` is prefixed for validation, as Keras 3 names them.

What ``compile`` accepts, per argument:

* ``loss``: one loss for every output, a dict keyed by output name (an output left out, or
  given ``None``, has no loss), or a list / tuple in output order (tuple outputs only).
* ``loss_weights``: one float for every output, or a dict / list as ``loss`` (missing: 1).
* ``metrics`` / ``weighted_metrics``: a flat list applies every metric to every output (as
  Keras 2; Keras 3 would pair a list of one metric per output with the outputs); a dict
  keyed by output name, or a list with one entry (a metric or a list) per output.

``y`` is a dict keyed by output name (for tuple outputs, ``output_1``, ...) or, for tuple
outputs, a tuple / list in output order. One ``sample_weight`` per example weights every
output's loss (and the weighted metrics); per-output sample weights are not supported.

Examples:
    >>> import jax.numpy as jnp
    >>> spec = OutputsSpec(loss={"a": "mse", "b": "mae"}, loss_weights={"b": 0.5})
    >>> outputs = bind(spec, [], [], {"a": jnp.zeros(2), "b": jnp.zeros(2)})
    >>> [m.name for m in outputs.loss_metrics]
    ['a_loss', 'b_loss']
    >>> y = {"a": jnp.ones(2), "b": jnp.ones(2)}
    >>> outputs.values(y, {"a": jnp.zeros(2), "b": jnp.zeros(2)}, jnp.ones(2)).tolist()
    [1.5, 1.5]
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from easyfit import losses as losses_lib
from easyfit import metrics as metrics_lib
from easyfit.losses import LossFn
from easyfit.metrics import Metric, Totals

__all__ = ["OutputLoss", "OutputMetric", "Outputs", "OutputsSpec", "bind", "is_per_output",
           "is_several", "scaled"]


def is_several(y_pred: Any) -> bool:
    """Whether a module's output is several outputs (a dict, tuple or list of arrays).

    Examples:
        >>> is_several({"a": jnp.zeros(1)}), is_several(jnp.zeros(1))
        (True, False)
    """
    return isinstance(y_pred, (dict, tuple, list))


def _nested(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and any(
        isinstance(v, (list, tuple, dict)) for v in value)


def is_per_output(loss: Any, loss_weights: Any, metrics: Any, weighted_metrics: Any) -> bool:
    """Whether ``compile``'s arguments give something per output (a dict, or a list of
    losses, weights or metric lists), rather than one loss and one list of metrics.

    Examples:
        >>> is_per_output("mse", None, ["mae"], None), is_per_output({"a": "mse"}, None, None, None)
        (False, True)
    """
    return (isinstance(loss, (dict, list, tuple)) or isinstance(loss_weights, (dict, list, tuple))
            or isinstance(metrics, dict) or isinstance(weighted_metrics, dict)
            or _nested(metrics) or _nested(weighted_metrics))


class _Scaled:
    """A loss times a constant, keeping the loss's ``name`` and ``from_logits``."""

    def __init__(self, loss_fn: LossFn, weight: float):
        self.loss_fn, self.weight = loss_fn, float(weight)
        self.name = getattr(loss_fn, "name", "loss")
        self.from_logits = getattr(loss_fn, "from_logits", True)

    def __call__(self, y_true: jax.Array, y_pred: jax.Array) -> jax.Array:
        return self.weight * jnp.asarray(self.loss_fn(y_true, y_pred))


def scaled(loss_fn: LossFn, weight: float | None) -> LossFn:
    """``loss_fn`` times ``weight`` (``compile(loss_weights=0.2)`` of one output); the loss
    itself when ``weight`` is ``None``.

    Examples:
        >>> float(scaled(losses_lib.get("mse"), 0.5)(jnp.zeros((1, 2)), jnp.ones((1, 2)))[0])
        0.5
    """
    if weight is None:
        return loss_fn
    if not isinstance(weight, numbers.Real):
        raise TypeError(f"loss_weights must be a float, or a dict or list with one float per "
                        f"output; got {type(weight).__name__}.")
    return _Scaled(loss_fn, weight)


def _check_metrics(metrics: Any, what: str) -> None:
    """Resolves every metric once, so an unknown name fails in ``compile``."""
    if metrics is None:
        return
    values = metrics.values() if isinstance(metrics, dict) else metrics
    if not isinstance(values, (list, tuple)) and not isinstance(metrics, dict):
        raise TypeError(f"{what} must be a list, or a dict keyed by output name; got "
                        f"{type(metrics).__name__}.")
    for entry in values:
        for metric in entry if isinstance(entry, (list, tuple)) else [entry]:
            if metric is not None:
                metrics_lib.get(metric)


@dataclasses.dataclass(frozen=True)
class OutputsSpec:
    """``compile``'s per-output arguments, checked and kept until the module's outputs are
    known (at the first trace of a step), where [`bind`][easyfit.outputs.bind] pairs them with
    the outputs.

    Attributes:
        loss: a loss for every output, or a dict / list of them (names or callables).
        loss_weights: ``None``, a float, or a dict / list of floats.
        metrics: ``None``, a list, or a dict / list of metric lists (not weighted).
        weighted_metrics: as ``metrics``, weighted by the sample weight.
    """

    loss: Any
    loss_weights: Any = None
    metrics: Any = None
    weighted_metrics: Any = None

    def __post_init__(self):
        loss = self.loss
        if isinstance(loss, dict):
            loss = {k: None if v is None else losses_lib.get(v) for k, v in loss.items()}
        elif isinstance(loss, (list, tuple)):
            loss = [None if v is None else losses_lib.get(v) for v in loss]
        elif loss is not None:
            loss = losses_lib.get(loss)
        entries = loss.values() if isinstance(loss, dict) else \
            loss if isinstance(loss, list) else [loss]
        if all(v is None for v in entries):
            raise ValueError("compile needs a loss for at least one output, e.g. "
                             "loss={'a': 'mse', 'b': 'sparse_categorical_crossentropy'}.")
        object.__setattr__(self, "loss", loss)
        weights = self.loss_weights
        for w in (weights.values() if isinstance(weights, dict) else
                  weights if isinstance(weights, (list, tuple)) else [weights]):
            if w is not None and not isinstance(w, numbers.Real):
                raise TypeError(f"loss_weights must hold floats; got {w!r}.")
        _check_metrics(self.metrics, "metrics")
        _check_metrics(self.weighted_metrics, "weighted_metrics")


def _output_names(y_pred: Any) -> tuple[list[str], list[Any]]:
    """``(names, keys)`` of the module's outputs: sorted dict keys, or ``output_1``, ..."""
    if isinstance(y_pred, dict):
        keys = sorted(y_pred)
        names = [str(k) for k in keys]
    else:
        keys = list(range(len(y_pred)))
        names = [f"output_{i + 1}" for i in keys]
    for name, key in zip(names, keys):
        if not hasattr(y_pred[key], "shape"):
            raise ValueError(f"The module's output {name!r} is a {type(y_pred[key]).__name__}: "
                             "several outputs must be a dict or a tuple of arrays (not nested).")
    if not keys:
        raise ValueError("The module returned an empty dict or tuple: there is no output.")
    return names, keys


def _per_output(value: Any, names: list[str], from_dict: bool, what: str,
                default: Any = None) -> list[Any]:
    """One entry of ``value`` per output: from a dict by name, a list by position, or the
    same value for every output."""
    if isinstance(value, dict):
        extra = sorted(set(value) - set(names), key=str)
        if extra:
            raise ValueError(f"{what} has keys {sorted(value, key=str)}, but the module's "
                             f"outputs are {names}: {extra} match no output. Key {what} by "
                             f"output name.")
        return [value.get(name, default) for name in names]
    if isinstance(value, (list, tuple)):
        if from_dict:
            raise ValueError(f"The module returns a dict of outputs {names}: give {what} as a "
                             f"dict keyed by output name, not a {type(value).__name__}.")
        if len(value) != len(names):
            raise ValueError(f"{what} has {len(value)} entries, but the module returns "
                             f"{len(names)} outputs ({', '.join(names)}): give one entry per "
                             "output, in output order.")
        return list(value)
    return [default if value is None else value] * len(names)


def _metric_lists(metrics: Any, names: list[str], from_dict: bool, what: str) -> list[list]:
    if not metrics:
        return [[] for _ in names]
    if isinstance(metrics, (list, tuple)) and not _nested(metrics):
        return [list(metrics) for _ in names]  # a flat list: every metric on every output
    entries = _per_output(metrics, names, from_dict, what)
    return [[] if e is None else list(e) if isinstance(e, (list, tuple)) else [e]
            for e in entries]


class Outputs:
    """Losses, loss weights and metrics paired with a module's outputs (see [`bind`][easyfit.outputs.bind]).

    Attributes:
        names: the outputs' names, in order (sorted dict keys, or ``output_1``, ...).
        keys: each output's dict key or tuple index.
        losses: each output's loss (``None``: none).
        weights: each output's loss weight.
        loss_metrics: each output's loss as a metric (``{output}_loss``), when more than one
            output has a loss; weighted by the sample weight, as the loss.
        metrics: the per-output metrics (``{output}_{metric}``), sample weights ignored.
        weighted_metrics: the per-output metrics weighted by the sample weight.
    """

    def __init__(self, names: list[str], keys: list[Any], from_dict: bool,
                 losses: list[LossFn | None], weights: list[float]):
        self.names, self.keys, self.from_dict = names, keys, from_dict
        self.losses, self.weights = losses, weights
        self.loss_metrics: list[Metric] = []
        self.metrics: list[Metric] = []
        self.weighted_metrics: list[Metric] = []

    def predictions(self, y_pred: Any) -> list[Any]:
        """The outputs in order; refuses outputs of another structure than the bound one."""
        if not is_several(y_pred) or _output_names(y_pred)[0] != self.names:
            got = _output_names(y_pred)[0] if is_several(y_pred) else "one array"
            raise ValueError(f"The module's outputs changed: {got}, where they were "
                             f"{self.names} when the step was built. Compile again.")
        return [y_pred[key] for key in self.keys]

    def targets(self, y_true: Any) -> list[Any]:
        """``y`` per output, in order (``None`` for an output that needs none)."""
        needed = [i for i, name in enumerate(self.names) if self._needs_y(i)]
        wanted = [self.names[i] for i in needed]
        if isinstance(y_true, dict):
            extra = sorted(set(y_true) - set(self.names), key=str)
            missing = [name for name in wanted if name not in y_true]
            if extra or missing:
                raise ValueError(f"y has keys {sorted(y_true, key=str)}, but the module's "
                                 f"outputs are {self.names} (y is needed for {wanted}). Pass y "
                                 "as a dict keyed by output name.")
            return [y_true.get(name) for name in self.names]
        if isinstance(y_true, (tuple, list)) and not self.from_dict:
            if len(y_true) != len(self.names):
                raise ValueError(f"y has {len(y_true)} parts, but the module returns "
                                 f"{len(self.names)} outputs ({', '.join(self.names)}): pass "
                                 "one target per output, in output order.")
            return list(y_true)
        if hasattr(y_true, "shape") and len(self.names) == 1:
            return [y_true]
        got = "a single array" if hasattr(y_true, "shape") else f"a {type(y_true).__name__}"
        form = "a dict keyed by output name" if self.from_dict else \
            "a tuple in output order (or a dict keyed by output name)"
        raise ValueError(f"The module returns {len(self.names)} outputs ({', '.join(self.names)}), "
                         f"but y is {got}: pass y as {form}.")

    def _needs_y(self, i: int) -> bool:
        return self.losses[i] is not None or any(
            m.index == i for m in (*self.metrics, *self.weighted_metrics))

    def values(self, y_true: Any, y_pred: Any, weight: jax.Array) -> jax.Array:
        """``sum(loss_weight * loss)`` per example (or per token), 0 where ``weight`` is 0."""
        targets, predictions = self.targets(y_true), self.predictions(y_pred)
        total = None
        for name, fn, w, t, p in zip(self.names, self.losses, self.weights, targets,
                                     predictions):
            if fn is None:
                continue
            value = w * losses_lib.align(losses_lib.loss_values(fn, t, p), weight,
                                         f"The loss of output {name!r}")
            total = value if total is None else total + value
        return total


class OutputMetric(Metric):
    """A metric of one output of several: its name is ``{output}_{metric}``.

    Args:
        metric: the metric, as it would be for a single output.
        outputs: the outputs it belongs to.
        index: which output (its position in ``outputs.names``).
        name: the log key.
    """

    def __init__(self, metric: Metric, outputs: Outputs, index: int, name: str):
        super().__init__(name)
        self.metric, self.outputs, self.index = metric, outputs, index
        self.direction = metric.direction

    def totals(self, y_true: Any, y_pred: Any, weight: jax.Array) -> Totals:
        return self.metric.totals(self.outputs.targets(y_true)[self.index],
                                  self.outputs.predictions(y_pred)[self.index], weight)

    def result(self, totals: Totals) -> jax.Array:
        return self.metric.result(totals)


class OutputLoss(Metric):
    """One output's loss, logged as ``{output}_loss`` (not multiplied by its loss weight).

    Args:
        outputs: the outputs it belongs to.
        index: which output.
    """

    direction = "down"

    def __init__(self, outputs: Outputs, index: int):
        super().__init__(f"{outputs.names[index]}_loss")
        self.outputs, self.index = outputs, index

    def values(self, y_true: Any, y_pred: Any) -> jax.Array:
        return losses_lib.loss_values(self.outputs.losses[self.index],
                                      self.outputs.targets(y_true)[self.index],
                                      self.outputs.predictions(y_pred)[self.index])


def bind(loss: OutputsSpec | LossFn, metrics: Sequence[Metric],
         weighted_metrics: Sequence[Metric], y_pred: Any) -> Outputs:
    """Pairs the losses and metrics with the module's outputs ``y_pred`` (arrays or shapes).

    Args:
        loss: ``compile``'s per-output arguments, or one loss for every output.
        metrics: with one loss (not an [`OutputsSpec`][easyfit.outputs.OutputsSpec]), metrics
            for every output.
        weighted_metrics: as ``metrics``, weighted by sample weight.
        y_pred: the module's outputs, a dict or tuple of arrays.
    """
    if not is_several(y_pred):
        raise ValueError("compile gave losses per output (a dict or a list), but the module "
                         "returns one array: give one loss, or return a dict or tuple of "
                         "outputs from the module.")
    names, keys = _output_names(y_pred)
    from_dict = isinstance(y_pred, dict)
    if isinstance(loss, OutputsSpec):
        spec = loss
    else:
        spec = OutputsSpec(loss, None, list(metrics), list(weighted_metrics))
    losses = _per_output(spec.loss, names, from_dict, "loss")
    weights = [1.0 if w is None else float(w) for w in
               _per_output(spec.loss_weights, names, from_dict, "loss_weights", 1.0)]
    outputs = Outputs(names, keys, from_dict, losses, weights)
    several = len(names) > 1
    taken = {"loss"}

    def unique(name: str) -> str:
        base, count = name, 1
        while name in taken:
            name, count = f"{base}_{count}", count + 1
        taken.add(name)
        return name

    if sum(fn is not None for fn in losses) > 1:
        outputs.loss_metrics = [OutputLoss(outputs, i) for i, fn in enumerate(losses)
                                if fn is not None]
        taken.update(m.name for m in outputs.loss_metrics)
    for attr, given in (("metrics", spec.metrics), ("weighted_metrics", spec.weighted_metrics)):
        made = []
        for i, entries in enumerate(_metric_lists(given, names, from_dict, attr)):
            from_logits = getattr(losses[i], "from_logits", True)
            for entry in entries:
                if entry is None:
                    continue
                metric = metrics_lib.get(entry, from_logits)
                name = f"{names[i]}_{metric.name}" if several else metric.name
                if attr == "weighted_metrics" and name in taken:
                    name = f"{names[i]}_weighted_{metric.name}" if several else \
                        f"weighted_{metric.name}"
                made.append(OutputMetric(metric, outputs, i, unique(name)))
        setattr(outputs, attr, made)
    return outputs
