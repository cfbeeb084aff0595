"""Part d of the GPU suite: ``FSDP`` and ``DataParallel`` on the device(s) at hand.

A short ``fit`` of a small transformer (float32, dropout off) three times from the same
initial weights and data: the default distribution, ``ef.distribute.DataParallel()`` and
``ef.distribute.FSDP()``. Each loss must be finite and match the default's within a
relative ``TOLERANCE``.
"""

from __future__ import annotations

import math

import jax

import easyfit as ef
from common import SPECS, Spec, optimizer

TOLERANCE = 1e-4
SIZES = {"gpu": Spec("transformer", dict(vocab=256, width=256, depth=2, heads=4, seq_len=256,
                                         dropout=0.0),
                     batch=32, steps=8, epochs=2, rounds=1, precision="float32"),
         "smoke": SPECS["smoke"]["transformer"]}


def run(name: str, size: str) -> dict:
    spec = SIZES[size]
    x, y = spec.data()
    variants = {"default": None, "data_parallel": ef.distribute.DataParallel(),
                "fsdp": ef.distribute.FSDP()}
    result: dict = {"devices": jax.device_count(), "batch": spec.batch}
    for variant, distribution in variants.items():
        kwargs = {} if distribution is None else {"distribution": distribution}
        model = ef.Model(spec.build(), **kwargs)
        model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy", precision="float32")
        history = model.fit(x, y, batch_size=spec.batch, epochs=spec.epochs, verbose=0,
                            shuffle=False)
        result[f"{variant}_loss"] = history.history["loss"][-1]
    base = result["default_loss"]
    result["max_rel_diff"] = max(abs(result[f"{v}_loss"] - base) / abs(base)
                                 for v in ("data_parallel", "fsdp"))
    result["passed"] = (all(math.isfinite(result[f"{v}_loss"]) for v in variants)
                        and result["max_rel_diff"] <= TOLERANCE)
    return result

