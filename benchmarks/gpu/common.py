"""What the GPU suite's parts share: the sizes, the models, their data, the loss, the
hand-written train step, model FLOPs, and how a part writes its result.

Two sizes of everything: ``gpu`` (a GPT-2-small-like transformer and a residual CNN at a GPU
batch, bf16) and ``smoke`` (the same code paths at tiny sizes, seconds on a CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from easyfit.training.steps_per_dispatch import step_flops
from easyfit.precision import FLOAT32_LAYERS  # the norms compile(precision=...) keeps float32

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))
from models import CharTransformer, ResNet  # noqa: E402  (examples/ is on sys.path)

PEAK_BF16 = 989e12      # H200 (= H100 SXM) dense bf16, datasheet
PEAK_BF16_SEEN = 790e12  # an 8192^3 bf16 matmul through PyTorch on the lent H200
LEARNING_RATE = 3e-4


@dataclasses.dataclass(frozen=True)
class Spec:
    """One model at one size.

    Attributes:
        name: ``"transformer"`` or ``"cnn"``.
        kwargs: the model constructor's arguments.
        batch: sequences or images per step.
        steps: steps per epoch (the arrays hold ``batch * steps`` rows).
        epochs: epochs per timed trial (the first of each is not timed).
        rounds: paired rounds of easyfit and the hand loop.
        precision: ``compile(precision=...)``.
        image_size: height and width of the CNN's images.
    """

    name: str
    kwargs: dict
    batch: int
    steps: int
    epochs: int
    rounds: int
    precision: str
    image_size: int = 32

    @property
    def unit(self) -> str:
        return "tokens" if self.name == "transformer" else "images"

    def build(self, seed: int = 0) -> nnx.Module:
        cls = CharTransformer if self.name == "transformer" else ResNet
        return cls(**self.kwargs, rngs=nnx.Rngs(seed))

    def items_per_step(self) -> int:
        return self.batch * (self.kwargs["seq_len"] if self.name == "transformer" else 1)

    def data(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Random inputs and integer labels, ``batch * steps`` rows."""
        rng = np.random.default_rng(seed)
        n = self.batch * self.steps
        if self.name == "transformer":
            vocab, length = self.kwargs["vocab"], self.kwargs["seq_len"]
            return (rng.integers(0, vocab, (n, length), dtype=np.int32),
                    rng.integers(0, vocab, (n, length), dtype=np.int32))
        size, channels = self.image_size, self.kwargs["in_channels"]
        return (rng.standard_normal((n, size, size, channels), dtype=np.float32),
                rng.integers(0, self.kwargs["num_classes"], n, dtype=np.int32))


SPECS: dict[str, dict[str, Spec]] = {
    "gpu": {
        "transformer": Spec("transformer", dict(vocab=50304, width=768, depth=12, heads=12,
                                                seq_len=1024, dropout=0.0),
                            batch=16, steps=16, epochs=3, rounds=3, precision="bfloat16"),
        "cnn": Spec("cnn", dict(num_classes=10, widths=(64, 128, 256), blocks=2, in_channels=3),
                    batch=512, steps=32, epochs=4, rounds=3, precision="bfloat16"),
    },
    "smoke": {
        "transformer": Spec("transformer", dict(vocab=64, width=32, depth=1, heads=2,
                                                seq_len=16, dropout=0.0),
                            batch=4, steps=4, epochs=2, rounds=1, precision="bfloat16"),
        "cnn": Spec("cnn", dict(num_classes=10, widths=(8,), blocks=1, in_channels=3),
                    batch=8, steps=4, epochs=2, rounds=1, precision="bfloat16", image_size=8),
    },
}


def token_cross_entropy(y_true: jax.Array, y_pred: jax.Array) -> jax.Array:
    """Softmax cross-entropy on logits, averaged over every axis but the batch: one loss per
    example, for images ``(B, C)`` and token sequences ``(B, T, V)`` alike."""
    losses = optax.softmax_cross_entropy_with_integer_labels(y_pred.astype(jnp.float32), y_true)
    return losses.reshape(losses.shape[0], -1).mean(axis=1)


def optimizer() -> optax.GradientTransformation:
    return optax.adamw(LEARNING_RATE, weight_decay=0.0)


def set_compute_dtype(module: nnx.Module, dtype: Any) -> None:
    """What a Flax user writes for bf16: the layers' ``dtype`` set, norms left float32."""
    for _, layer in nnx.iter_modules(module):
        if hasattr(layer, "dtype") and not isinstance(layer, FLOAT32_LAYERS):
            layer.dtype = dtype


def hand_step(module: nnx.Module, precision: str) -> tuple[Callable, tuple]:
    """The hand-written train step: ``nnx.split`` once, one ``jax.jit``-ed, donated optax
    step over ``(params, rest, opt_state, x, y)``; returns ``(step, state)``."""
    if precision != "float32":
        set_compute_dtype(module, jnp.dtype(precision))
    module.train()
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    tx = optimizer()

    def loss_fn(params, rest, x, y):
        model = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables in this trace
        loss = token_cross_entropy(y, model(x)).mean()
        return loss, nnx.split(model, nnx.Param, ...)[2]

    def step(params, rest, opt_state, x, y):
        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2)), (params, rest, tx.init(params))


def transformer_flops_per_token(kwargs: dict) -> float:
    """Training FLOPs per token, PaLM's formula (Chowdhery et al. 2022, appendix B):
    ``6 * N + 12 * depth * seq_len * width``, N the parameters in matmuls (embedding
    lookups excluded, the untied output head included); attention is not halved for the
    causal mask."""
    width, depth, vocab = kwargs["width"], kwargs["depth"], kwargs["vocab"]
    per_block = 12 * width * width + 13 * width  # qkv, out, up, down (+ biases, norms)
    matmul_params = depth * per_block + width * vocab + vocab + 2 * width
    return 6.0 * matmul_params + 12.0 * depth * kwargs["seq_len"] * width


def xla_flops(jitted: Callable, *args: Any) -> float | None:
    """FLOPs of one call from XLA's cost analysis of the lowered program (no compile), or,
    where the backend gives none (the H200 run of 2026-12-04 did not), counted from the
    jaxpr as that analysis counts them (``easyfit.training.steps_per_dispatch.step_flops``)."""
    try:
        cost = jitted.lower(*args).cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0]
        if cost and cost.get("flops"):
            return float(cost["flops"])
        return step_flops(jitted.trace(*args).jaxpr.jaxpr)[0] or None
    except Exception:  # noqa: BLE001  (a figure we can do without)
        return None


def peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of the first device, ``None`` where the backend has no stats."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def versions(model: str, size: str) -> dict:
    """The versions of Python and the libraries, and the devices."""
    import importlib.metadata as metadata
    import platform

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
             "jax-cuda13-plugin", "jax-cuda12-plugin")
    info = {name: version(name) for name in names}
    info.update(python=platform.python_version(), backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()],
                device_kind=jax.devices()[0].device_kind)
    print(json.dumps(info, indent=1))
    return info


def run_part(run: Callable[[str, str], dict], model: str, size: str, out: str) -> None:
    """Runs ``run(model, size)`` and writes its dict (or the error's text) to ``out``."""
    start = time.perf_counter()
    try:
        result = {"ok": True, **run(model, size)}
    except Exception as error:  # noqa: BLE001  (recorded; the suite goes on)
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000]}
    result["seconds"] = round(time.perf_counter() - start, 1)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
