"""Metrics, accumulated on the device as sums and read only at log points.

A metric is two pure functions: ``totals(y_true, y_pred, weight)`` returns a small pytree of
sums for one batch (padding rows have ``weight = 0``, so they never count), and
``result(totals)`` turns the sums accumulated over many batches into the value. Sums add
exactly, so the epoch value over padded batches equals the value over the real rows.
Sequence outputs count per token: accuracy over ``(B, T, V)`` logits is token accuracy, and
in ``weighted_metrics`` a ``(B, T)`` sample weight (a padding mask) weights each token.

Examples:
    >>> import jax.numpy as jnp
    >>> acc = get("accuracy")
    >>> t = acc.totals(jnp.array([0, 1]), jnp.array([[2.0, 0.0], [2.0, 0.0]]), jnp.ones(2))
    >>> float(acc.result(t))
    0.5
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from easyfit.errors import user_stacklevel
from easyfit.losses import align

__all__ = ["Accuracy", "BinaryAccuracy", "CategoricalAccuracy", "METRICS", "Mean",
           "MeanAbsoluteError", "MeanSquaredError", "Metric", "Precision", "Recall",
           "SparseCategoricalAccuracy", "TopKAccuracy", "Totals", "get", "named_apart"]

Totals = dict[str, jax.Array]


def _weighted(values: jax.Array, weight: jax.Array, name: str) -> Totals:
    values = align(values.astype(jnp.float32), weight, f"The metric {name!r}")
    return {"sum": jnp.sum(values * weight), "weight": jnp.sum(weight)}


def _mean(totals: Totals) -> jax.Array:
    return totals["sum"] / jnp.maximum(totals["weight"], 1e-12)


class Metric:
    """Base class for metrics: override ``values`` (per-example) or ``totals`` and ``result``.

    Args:
        name: the key in ``logs`` and ``History`` (``val_`` is prefixed for validation).

    A metric's ``direction`` (``"up"`` when larger is better, ``"down"`` when smaller is,
    ``None`` if unknown) tells ``mode="auto"`` in EarlyStopping, ReduceLROnPlateau and
    ModelCheckpoint which way to watch it, as Keras 3's ``_direction``. Set it on your own
    metric (an F1 score: ``direction = "up"``).
    """

    name = "metric"
    direction: str | None = None

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name

    def values(self, y_true: jax.Array, y_pred: jax.Array) -> jax.Array:
        """Values per example (or per token); the metric is their weighted mean."""
        raise NotImplementedError

    def totals(self, y_true: jax.Array, y_pred: jax.Array, weight: jax.Array) -> Totals:
        """Sums over one batch (added across batches on the device)."""
        return _weighted(self.values(y_true, y_pred), weight, self.name)

    def result(self, totals: Totals) -> jax.Array:
        """The metric's value from summed totals."""
        return _mean(totals)


def _labels(y_true, y_pred):
    """Integer labels shaped like ``y_pred[..., 0]`` (from sparse or one-hot labels)."""
    if y_true.shape == y_pred.shape:
        return jnp.argmax(y_true, axis=-1)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_true.shape != y_pred.shape[:-1]:
        per = "token of the (batch, time, classes) output" if y_pred.ndim >= 3 else "example"
        raise ValueError(f"accuracy: labels of shape {tuple(y_true.shape)} cannot match the "
                         f"model's output of shape {tuple(y_pred.shape)}: expected integer "
                         f"labels of shape {tuple(y_pred.shape[:-1])} (one per {per}) or "
                         f"one-hot labels of the output's shape.")
    return y_true.astype(jnp.int32)


def _is_binary(y_true, y_pred) -> bool:
    return y_pred.ndim == 1 or y_pred.shape[-1] == 1


class BinaryAccuracy(Metric):
    """Share of binary predictions on the right side of ``threshold``.

    Args:
        threshold: on probabilities; with ``from_logits`` the logit is compared with
            ``logit(threshold)`` (0 for the default 0.5).
        from_logits: the model outputs logits (default, as Flax modules do).
    """

    direction = "up"
    name = "binary_accuracy"

    def __init__(self, threshold: float = 0.5, from_logits: bool = True, name: str | None = None):
        super().__init__(name)
        self.threshold, self.from_logits = threshold, from_logits

    def values(self, y_true, y_pred):
        p = jax.nn.sigmoid(y_pred) if self.from_logits else y_pred
        y_true = y_true.reshape(y_pred.shape) if y_true.size == y_pred.size else y_true
        return ((p > self.threshold) == (y_true > 0.5)).astype(jnp.float32)


class SparseCategoricalAccuracy(Metric):
    """Share of rows whose arg-max equals the integer label."""

    direction = "up"
    name = "sparse_categorical_accuracy"

    def values(self, y_true, y_pred):
        return (jnp.argmax(y_pred, axis=-1) == _labels(y_true, y_pred)).astype(jnp.float32)


class CategoricalAccuracy(SparseCategoricalAccuracy):
    """Share of rows whose arg-max equals the one-hot label's."""

    name = "categorical_accuracy"


class Accuracy(Metric):
    """``"accuracy"``: binary, sparse or categorical, chosen from the shapes as Keras does.

    One output unit means binary (``from_logits`` threshold at 0.5); labels of the output's shape
    mean one-hot; otherwise integer labels.
    """

    direction = "up"
    name = "accuracy"

    def __init__(self, from_logits: bool = True, name: str | None = None):
        super().__init__(name)
        self.from_logits = from_logits

    def values(self, y_true, y_pred):
        if _is_binary(y_true, y_pred):
            return BinaryAccuracy(from_logits=self.from_logits).values(y_true, y_pred)
        return SparseCategoricalAccuracy().values(y_true, y_pred)


class TopKAccuracy(Metric):
    """Share of rows whose label is among the ``k`` highest outputs (sparse or one-hot labels).

    Args:
        k: how many of the top outputs count.
    """

    direction = "up"
    name = "top_k_accuracy"

    def __init__(self, k: int = 5, name: str | None = None):
        super().__init__(name)
        self.k = k

    def values(self, y_true, y_pred):
        labels = _labels(y_true, y_pred)
        classes = y_pred.shape[-1]
        if self.k >= classes:  # at trace time: once per compile
            warnings.warn(f"Metric {self.name!r}: k={self.k} is not below the {classes} "
                          f"classes, so every row counts as correct (1.0), as in Keras. Pass "
                          f"ef.metrics.TopKAccuracy(k=...) with k < {classes}.",
                          stacklevel=user_stacklevel())
        _, top = jax.lax.top_k(y_pred, min(self.k, classes))
        return jnp.any(top == labels[..., None], axis=-1).astype(jnp.float32)


class MeanSquaredError(Metric):
    """Mean squared error."""

    direction = "down"
    name = "mse"

    def values(self, y_true, y_pred):
        return jnp.square(y_pred - y_true.reshape(y_pred.shape))


class MeanAbsoluteError(Metric):
    """Mean absolute error."""

    direction = "down"
    name = "mae"

    def values(self, y_true, y_pred):
        return jnp.abs(y_pred - y_true.reshape(y_pred.shape))


class _Confusion(Metric):
    direction = "up"

    def __init__(self, threshold: float = 0.5, from_logits: bool = True, name: str | None = None):
        super().__init__(name)
        self.threshold, self.from_logits = threshold, from_logits

    def totals(self, y_true, y_pred, weight):
        p = jax.nn.sigmoid(y_pred) if self.from_logits else y_pred
        pred = (p.reshape(*weight.shape, -1) > self.threshold).astype(jnp.float32)
        true = (y_true.reshape(pred.shape) > 0.5).astype(jnp.float32)
        w = weight[..., None]  # per example, or per token
        return {"tp": jnp.sum(w * pred * true), "fp": jnp.sum(w * pred * (1 - true)),
                "fn": jnp.sum(w * (1 - pred) * true)}


class Precision(_Confusion):
    """Binary precision, ``tp / (tp + fp)``, accumulated over the epoch."""

    name = "precision"

    def result(self, totals):
        return totals["tp"] / jnp.maximum(totals["tp"] + totals["fp"], 1e-12)


class Recall(_Confusion):
    """Binary recall, ``tp / (tp + fn)``, accumulated over the epoch."""

    name = "recall"

    def result(self, totals):
        return totals["tp"] / jnp.maximum(totals["tp"] + totals["fn"], 1e-12)


class Mean(Metric):
    """Weighted mean of per-example values of any function ``fn(y_true, y_pred)``.

    Args:
        fn: ``(y_true, y_pred) -> values`` per example (or per token).
        name: the log key; the function's name by default.
        direction: ``"up"`` if larger is better, ``"down"`` if smaller is (for ``mode="auto"``).

    Examples:
        >>> m = Mean(lambda y, p: (p - y) ** 2, name="se")
    """

    def __init__(self, fn: Callable[[jax.Array, jax.Array], jax.Array], name: str | None = None,
                 direction: str | None = None):
        super().__init__(name or getattr(fn, "__name__", "mean"))
        self.fn, self.direction = fn, direction

    def values(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


METRICS: dict[str, Callable[[], Metric]] = {
    "accuracy": Accuracy, "acc": Accuracy,
    "binary_accuracy": BinaryAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "top_k_accuracy": TopKAccuracy,
    "sparse_top_k_categorical_accuracy": TopKAccuracy,
    "top_k_categorical_accuracy": TopKAccuracy,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "precision": Precision, "recall": Recall,
}


def get(metric: str | Metric | Callable, from_logits: bool = True) -> Metric:
    """Resolves what ``compile(metrics=[...])`` accepts; the log key is the name given.

    Examples:
        >>> get("mae").name
        'mae'
    """
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        key = metric.lower()
        if key not in METRICS:
            raise ValueError(f"Unknown metric {metric!r}. Valid names: "
                             f"{', '.join(sorted(METRICS))}; or pass an ef.metrics.Metric or a "
                             "callable (y_true, y_pred) -> per-example values.")
        cls = METRICS[key]
        takes_logits = cls in (Accuracy, BinaryAccuracy, Precision, Recall)
        instance = cls(from_logits=from_logits) if takes_logits else cls()
        instance.name = metric
        return instance
    if callable(metric):
        return Mean(metric)
    raise TypeError(f"A metric must be a name, an ef.metrics.Metric or a callable; got "
                    f"{type(metric).__name__}.")


def named_apart(metrics: Sequence[Metric], weighted_metrics: Sequence[Metric]
                ) -> tuple[list[Metric], list[Metric]]:
    """Log names as Keras 3 gives them when metrics share one: a repeated name gets ``_1``,
    ``_2``, ...; a weighted metric named like an earlier one gets ``weighted_`` first
    (``metrics=["accuracy"], weighted_metrics=["accuracy"]`` logs ``accuracy`` and
    ``weighted_accuracy``). Renamed metrics are copies: the objects passed keep their names.

    Examples:
        >>> plain, weighted = named_apart([get("accuracy")], [get("accuracy")])
        >>> tuple(m.name for m in plain + weighted)
        ('accuracy', 'weighted_accuracy')
    """
    counts = {"loss": 1}

    def unique(name: str) -> str:
        if name not in counts:
            counts[name] = 1
            return name
        counts[name] += 1
        return f"{name}_{counts[name] - 1}"

    def renamed(metric: Metric, name: str) -> Metric:
        if name == metric.name:
            return metric
        metric = copy.copy(metric)
        metric.name = name
        return metric

    plain = [renamed(m, unique(m.name)) for m in metrics]
    weighted = [renamed(m, unique(f"weighted_{m.name}" if m.name in counts else m.name))
                for m in weighted_metrics]
    return plain, weighted
