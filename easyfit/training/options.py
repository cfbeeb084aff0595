"""What ``Model.compile`` decided, resolved and validated: the trainer's configuration."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

from easyfit import losses as losses_lib
from easyfit import metrics as metrics_lib
from easyfit import optimizers as optimizers_lib
from easyfit import outputs as outputs_lib
from easyfit import precision as precision_lib
from easyfit import remat as remat_lib
from easyfit.metrics import Metric
from easyfit.ema import EMA
from easyfit.optimizers import Optimizer

__all__ = ["TrainingOptions", "resolve_options"]


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """The settings of one ``compile``, as the trainer and its steps use them (the defaults,
    with no optimizer and no loss, serve ``predict`` before any ``compile``).

    Attributes:
        optimizer: the easyfit optimizer (built by the first ``fit``).
        loss: ``(y_true, y_pred) -> per-example (or per-token) loss``, or for a module
            with several outputs, an [`OutputsSpec`][easyfit.outputs.OutputsSpec] (losses, loss
            weights and metrics per output, paired with the outputs at the first trace).
        metrics: metrics over real rows, sample weights ignored (named apart).
        weighted_metrics: metrics weighted by sample weight.
        steps_per_execution: a positive int or ``"auto"``.
        seed: seeds dropout streams, shuffling and augmentation.
        augment: ``fn((x, y), rng) -> (x, y)`` run in the train step, or ``None``.
        compute_dtype: the layers' compute dtype under mixed precision, or ``None``.
        precision: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        float32_layers: layer types kept in float32 under a low precision.
        accumulation_steps: batches whose gradients average into one update.
        remat: ``False``, ``True`` or a ``jax.checkpoint_policies`` name.
        ema: the moving average of the weights kept by the optimizer (``compile``'s
            ``ema_momentum``, else the optimizer's ``use_ema``), or ``None``.
    """

    optimizer: Optimizer | None = None
    loss: Callable | outputs_lib.OutputsSpec | None = None
    metrics: Sequence[Metric] = ()
    weighted_metrics: Sequence[Metric] = ()
    steps_per_execution: int | str = "auto"
    seed: int = 0
    augment: Callable | None = None
    compute_dtype: Any = None
    precision: str = "float32"
    float32_layers: tuple[type, ...] = ()
    accumulation_steps: int = 1
    remat: bool | str = False
    ema: EMA | None = None


def resolve_options(optimizer: Any, loss: Any, metrics: Sequence[Any] | None,
                    weighted_metrics: Sequence[Any] | None, steps_per_execution: int | str,
                    seed: int, augment: Callable | None, precision: str,
                    float32_layers: Sequence[type], gradient_accumulation_steps: int,
                    remat: bool | str, ema_momentum: float | None = None,
                    loss_weights: Any = None) -> TrainingOptions:
    """``compile``'s arguments resolved (names to objects; the plain values were checked by
    `easyfit.arguments.check_compile`); one clear error naming the argument otherwise.
    Per-output arguments ([`easyfit.outputs`][easyfit.outputs]) become an
    [`OutputsSpec`][easyfit.outputs.OutputsSpec] loss, the metrics inside it."""
    if loss is None:
        raise ValueError("compile needs a loss, e.g. loss='sparse_categorical_crossentropy' "
                         "or a callable (y_true, y_pred) -> per-example loss.")
    for name, value in (("metrics", metrics), ("weighted_metrics", weighted_metrics)):
        if isinstance(value, str):
            raise ValueError(f"{name} must be a list (or a dict keyed by output name), as in "
                             f"Keras; got the string {value!r}: pass {name}=[{value!r}].")
    _check_augment(augment)
    compute_dtype = precision_lib.compute_dtype(precision)
    if remat:
        remat_lib.policy(remat)  # refuses an unknown policy now
    if outputs_lib.is_per_output(loss, loss_weights, metrics, weighted_metrics):
        loss_fn, plain, weighted = outputs_lib.OutputsSpec(
            loss, loss_weights, metrics, weighted_metrics), [], []
    else:
        loss_fn = outputs_lib.scaled(losses_lib.get(loss), loss_weights)
        from_logits = getattr(loss_fn, "from_logits", True)
        plain, weighted = metrics_lib.named_apart(
            [metrics_lib.get(m, from_logits) for m in metrics or []],
            [metrics_lib.get(m, from_logits) for m in weighted_metrics or []])
    optimizer = optimizers_lib.get(optimizer)
    return TrainingOptions(
        optimizer=optimizer, loss=loss_fn, metrics=plain,
        weighted_metrics=weighted, steps_per_execution=steps_per_execution, seed=seed,
        augment=augment, compute_dtype=compute_dtype, precision=precision,
        float32_layers=tuple(float32_layers), accumulation_steps=gradient_accumulation_steps,
        remat=remat, ema=_ema(optimizer, ema_momentum))


def _check_augment(augment: Callable | None) -> None:
    """``augment`` is called as ``augment((x, y), key)``: refuse a function that cannot be."""
    if augment is None:
        return
    if not callable(augment):
        raise TypeError(f"augment must be a function ((x, y), key) -> (x, y); got "
                        f"{type(augment).__name__}.")
    try:
        inspect.signature(augment).bind(("x", "y"), "key")
    except TypeError:
        raise TypeError(f"augment is called as augment((x, y), key) and returns (x, y), but "
                        f"{getattr(augment, '__name__', 'it')}{inspect.signature(augment)} "
                        "cannot take those two arguments. Write it as "
                        "def augment(batch, key): x, y = batch; ...; return x, y.") from None
    except ValueError:  # no signature (a builtin): the call will tell
        return


def _ema(optimizer: Optimizer, momentum: float | None) -> EMA | None:
    """The weight average to keep: ``compile``'s ``ema_momentum`` (with the optimizer's
    overwrite frequency, if it has one), else the optimizer's own ``use_ema`` setting."""
    if momentum is None:
        return optimizer.ema
    frequency = None if optimizer.ema is None else optimizer.ema.overwrite_frequency
    return EMA(momentum, frequency)
