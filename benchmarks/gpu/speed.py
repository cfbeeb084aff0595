"""Part b of the GPU suite: easyfit ``fit`` against the same hand-written jitted step.

One process, one model. Both variants train the same model (same initial weights, same
AdamW, same precision: bf16 matmuls, float32 norms, weights and loss) on the same random
arrays. easyfit: ``ef.Model(module).compile(optimizer, loss, precision=...)`` and
``fit(x, y, batch_size=B, verbose=0)``, everything else default. Hand loop: ``nnx.split``
once, a donated ``jax.jit`` step, batches already on the device, the loss read once an
epoch (as a user who logs per epoch).

Steady-state step time: each trial runs ``epochs`` epochs; the clock reads at the end of
each epoch (both variants wait for the device there), and a trial's step time is the time
from the end of its first epoch to the end of its last, over the steps in between (so
``fit``'s start is excluded). A first trial of each is not timed: the compile, and for
easyfit "auto" choosing its steps per dispatch (twice the epochs, to leave it room).
Trials are paired, ``rounds`` rounds in alternating order; the ratio is the median over
rounds of hand step time / easyfit step time (1.0: as fast; target >= 0.95).
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

import easyfit as ef
from common import (PEAK_BF16, PEAK_BF16_SEEN, SPECS, Spec, hand_step, optimizer,
                    transformer_flops_per_token, xla_flops)


class EpochClock(ef.callbacks.Callback):
    """Reads the clock at the end of every epoch (``fit`` has read the epoch's logs back
    from the device by then)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.times.append(time.perf_counter())


def steady_step_seconds(times: list[float], steps: int) -> float:
    return (times[-1] - times[0]) / ((len(times) - 1) * steps)


def easyfit_trial(model: ef.Model, x: np.ndarray, y: np.ndarray, spec: Spec,
                  epochs: int) -> tuple[float, float]:
    clock = EpochClock()
    history = model.fit(x, y, batch_size=spec.batch, epochs=epochs, verbose=0,
                        callbacks=[clock])
    return steady_step_seconds(clock.times, spec.steps), history.history["loss"][-1]


def hand_trial(step, state: list, batches: list, epochs: int, seed: int
               ) -> tuple[float, float]:
    times, rng, loss = [], np.random.default_rng(seed), None
    for _ in range(epochs):
        for i in rng.permutation(len(batches)):
            out = step(*state, *batches[i])
            state[:], loss = out[:3], out[3]
        loss = float(loss)
        times.append(time.perf_counter())
    return steady_step_seconds(times, len(batches)), loss


def run(name: str, size: str) -> dict:
    spec = SPECS[size][name]
    x, y = spec.data()

    model = ef.Model(spec.build())
    model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy", precision=spec.precision)
    start = time.perf_counter()
    easyfit_trial(model, x, y, spec, 2 * spec.epochs)  # "auto" settles its steps per dispatch
    first = time.perf_counter() - start

    step, state = hand_step(spec.build(), spec.precision)
    state = list(state)
    batches = [jax.device_put((x[i:i + spec.batch], y[i:i + spec.batch]))
               for i in range(0, len(x), spec.batch)]
    flops = xla_flops(step, *state, *batches[0])
    start = time.perf_counter()
    hand_trial(step, state, batches, spec.epochs, seed=0)
    hand_first = time.perf_counter() - start

    rounds = []
    for r in range(spec.rounds):
        order = ("easyfit", "hand") if r % 2 == 0 else ("hand", "easyfit")
        trial = {}
        for variant in order:
            trial[variant] = (
                easyfit_trial(model, x, y, spec, spec.epochs) if variant == "easyfit"
                else hand_trial(step, state, batches, spec.epochs, seed=r + 1))
        rounds.append(trial)

    ef_step = min(t["easyfit"][0] for t in rounds)
    hand_step_s = min(t["hand"][0] for t in rounds)
    items = spec.items_per_step()
    if name == "transformer":
        model_flops = transformer_flops_per_token(spec.kwargs) * items
        flops_source = "6N + 12*L*T*d per token"
    else:
        model_flops, flops_source = flops, "XLA cost analysis"
    result = {
        "model": name, "size": size, "config": {**spec.kwargs, "batch": spec.batch,
                                                "steps_per_epoch": spec.steps,
                                                "precision": spec.precision},
        "params": sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state[0])),
        "easyfit_step_ms": ef_step * 1e3,
        "hand_step_ms": hand_step_s * 1e3,
        "ratio": statistics.median(t["hand"][0] / t["easyfit"][0] for t in rounds),
        "ratio_best": hand_step_s / ef_step,
        "ratios": [t["hand"][0] / t["easyfit"][0] for t in rounds],
        f"easyfit_{spec.unit}_per_s": items / ef_step,
        f"hand_{spec.unit}_per_s": items / hand_step_s,
        "model_flops_per_step": model_flops,
        "flops_source": flops_source,
        "xla_flops_per_step": flops,
        "easyfit_first_fit_s": first,
        "hand_first_trial_s": hand_first,
        "easyfit_loss": rounds[-1]["easyfit"][1],
        "hand_loss": rounds[-1]["hand"][1],
    }
    if model_flops:
        for tag, peak in (("", PEAK_BF16), ("_vs_measured", PEAK_BF16_SEEN)):
            result[f"easyfit_mfu{tag}"] = model_flops / ef_step / peak
            result[f"hand_mfu{tag}"] = model_flops / hand_step_s / peak
    return result

