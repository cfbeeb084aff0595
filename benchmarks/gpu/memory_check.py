"""Part c of the GPU suite: ``model.estimate_memory`` against the device's measured peak.

Run in a fresh process per model, so that the peak is this model's alone: the model is
compiled as in part b and trained with ``fit`` (two epochs: "auto" settles its steps per
dispatch in the first); then ``jax.devices()[0].memory_stats()["peak_bytes_in_use"]`` is
read, and ``model.estimate_memory(batch)`` is asked for (after the fit, so it reuses the
fit's compiled step). The ratio is estimate / measured (target: within 10%, 0.9-1.1).
The CPU backend keeps no memory statistics: there the measured figures are ``None``.
"""

from __future__ import annotations

import jax

import easyfit as ef
from common import SPECS, optimizer, peak_bytes


def run(name: str, size: str) -> dict:
    spec = SPECS[size][name]
    x, y = spec.data()
    model = ef.Model(spec.build())
    model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy", precision=spec.precision)
    history = model.fit(x, y, batch_size=spec.batch, epochs=2, verbose=0)
    measured = peak_bytes()
    stats = jax.devices()[0].memory_stats() or {}
    estimate = model.estimate_memory(spec.batch)
    print(estimate)
    return {
        "model": name, "size": size, "batch": spec.batch,
        "steps_per_execution": estimate.steps_per_execution,
        "estimate_total_bytes": estimate.total_bytes,
        "estimate_step_peak_bytes": estimate.peak_bytes,
        "estimate_parts": {"params": estimate.params_bytes,
                           "optimizer": estimate.optimizer_bytes,
                           "temp": estimate.temp_bytes,
                           "inputs": estimate.input_bytes,
                           "dataset": estimate.dataset_bytes,
                           "module": estimate.module_bytes,
                           "prefetch": estimate.prefetch_bytes},
        "measured_peak_bytes": measured,
        "bytes_in_use_after": stats.get("bytes_in_use"),
        "bytes_limit": stats.get("bytes_limit"),
        "ratio": estimate.total_bytes / measured if measured else None,
        "loss": history.history["loss"][-1],
    }

