"""Start-up time with and without the persistent compilation cache (``ef.config``).

Each run is a fresh Python process that imports easyfit, builds a model and calls
``fit(..., epochs=3, validation_split=0.1)`` on synthetic data; it reports the seconds from
the ``fit`` call to the end of the first epoch (the train, eval and logging programs
compile there; ``steps_per_execution="auto"`` compiles the train step twice), to the end
of the second, the third epoch alone (no compile either way: the steady state), and the
whole process as the parent sees it (interpreter start, imports, model construction,
whose initializers compile too, and exit included). Runs alternate between an empty cache
directory ("cold": every program is compiled and written) and the directory the previous
cold run filled ("warm": every program is read back), ``--repeats`` pairs; the table
shows medians.

Models (AdamW 1e-3, softmax cross-entropy, accuracy, batch 128, 1024 rows, default
``steps_per_execution="auto"``):
  mlp   784-512-512-10 MLP
  cnn   28x28x1 -> conv 32 3x3 -> conv 64 3x3 stride 2 -> dense 10

Run:  python benchmarks/compile_cache.py              (~1 minute on 2 CPU cores)
      python benchmarks/compile_cache.py --repeats 1  (short)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = ("mlp", "cnn")


def child(model_name: str) -> None:
    """One measured run (in its own process); prints a JSON line."""
    started = time.perf_counter()
    from collections import Counter

    import jax
    import numpy as np
    from flax import nnx

    import easyfit as ef

    events: Counter = Counter()
    jax.monitoring.register_event_listener(lambda event, **kw: events.update([event]))

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.l2 = nnx.Linear(784, 512, rngs=rngs), nnx.Linear(512, 512, rngs=rngs)
            self.out = nnx.Linear(512, 10, rngs=rngs)

        def __call__(self, x):
            x = x.reshape(x.shape[0], -1)
            return self.out(nnx.relu(self.l2(nnx.relu(self.l1(x)))))

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(1, 32, (3, 3), rngs=rngs)
            self.c2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)
            self.out = nnx.Linear(14 * 14 * 64, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.c2(nnx.relu(self.c1(x))))
            return self.out(x.reshape(x.shape[0], -1))

    class Times(ef.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.perf_counter())

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=1024).astype(np.int32)
    module = (MLP if model_name == "mlp" else CNN)(nnx.Rngs(0))
    model = ef.Model(module)
    model.compile(ef.optimizers.adamw(1e-3), "sparse_categorical_crossentropy", ["accuracy"])
    times = Times()
    begin = time.perf_counter()
    model.fit(x, y, batch_size=128, epochs=3, validation_split=0.1, verbose=0,
              callbacks=[times])
    print(json.dumps({
        "first_epoch_s": times.ends[0] - begin,
        "two_epochs_s": times.ends[1] - begin,
        "third_epoch_s": times.ends[2] - times.ends[1],
        "process_s": time.perf_counter() - started,
        "hits": events["/jax/compilation_cache/cache_hits"],
        "writes": events["/jax/compilation_cache/cache_misses"],
    }))


def run(model_name: str, cache: str) -> dict:
    env = dict(os.environ, EASYFIT_CACHE_DIR=cache)
    begin = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", model_name], env=env,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - begin  # interpreter start and exit included
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=MODELS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    import jax

    print(f"python {platform.python_version()}, jax {jax.__version__}, "
          f"{os.cpu_count()} CPUs, backend: {jax.default_backend()}")
    print("| model | cache | epoch 1 (s) | epochs 1-2 (s) | epoch 3 (s) | process (s) | "
          "cache hits | cache writes |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name in MODELS:
        runs: dict[str, list[dict]] = {"cold": [], "warm": []}
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="easyfit-cache-bench-") as cache:
                runs["cold"].append(run(model_name, cache))
                runs["warm"].append(run(model_name, cache))
        for mode, results in runs.items():
            med = lambda key: statistics.median(r[key] for r in results)
            print(f"| {model_name} | {mode} | {med('first_epoch_s'):.2f} | "
                  f"{med('two_epochs_s'):.2f} | {med('third_epoch_s'):.2f} | "
                  f"{med('wall_s'):.2f} | {med('hits'):.0f} | {med('writes'):.0f} |")
        gains = []
        for key in ("first_epoch_s", "two_epochs_s", "wall_s"):
            cold = statistics.median(r[key] for r in runs["cold"])
            warm = statistics.median(r[key] for r in runs["warm"])
            gains.append(f"-{cold - warm:.2f} s ({cold / warm:.1f}x)")
        print(f"| {model_name} | gain | {gains[0]} | {gains[1]} | | {gains[2]} | | |")


if __name__ == "__main__":
    main()
