"""A small fit in a fresh process, for the compilation-cache tests (test_config_profiler.py).

    EASYFIT_CACHE_DIR=DIR python cache_script.py

Trains a small MLP for two epochs with validation, then evaluates and predicts, and prints
one JSON line: the cache directory easyfit reports, the persistent-cache events JAX recorded
(``hits``: programs read from the cache; ``writes``: programs compiled and written to it),
the programs compiled (``compiles``, cache reads included) and the first epoch's seconds.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import jax
import numpy as np
from flax import nnx

import easyfit as ef

events: Counter = Counter()
jax.monitoring.register_event_listener(lambda event, **kw: events.update([event]))
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: events.update([event]))


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(16, 64, rngs=rngs)
        self.l2 = nnx.Linear(64, 4, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


class EpochTimer(ef.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.begin = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.first = time.perf_counter() - self.begin


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype(np.float32)
    y = (x[:, :4].argmax(-1)).astype(np.int32)
    model = ef.Model(Net(nnx.Rngs(0)))
    model.compile(ef.optimizers.adamw(1e-3), "sparse_categorical_crossentropy", ["accuracy"])
    timer = EpochTimer()
    model.fit(x, y, batch_size=32, epochs=2, validation_split=0.25, verbose=0,
              callbacks=[timer])
    model.evaluate(x, y, batch_size=32, verbose=0)
    model.predict(x, batch_size=32, verbose=0)
    print(json.dumps({
        "cache_dir": ef.config.cache_dir(),
        "hits": events["/jax/compilation_cache/cache_hits"],
        "writes": events["/jax/compilation_cache/cache_misses"],
        "compiles": events["/jax/core/compile/backend_compile_duration"],
        "first_epoch_s": timer.first,
    }))


if __name__ == "__main__":
    main()
