"""How close does ``Model.fit`` get to the dispatch-free limit?

For two MLPs (small: 64-64-10, batch 32; medium: 784-512-512-10, batch 128), trained with
AdamW (lr 1e-3, no weight decay) on synthetic float32 data with sparse integer labels and
softmax cross-entropy, this measures training steps per second, compile excluded, for:

  (a) easyfit   ``ef.Model(mlp).compile(..., steps_per_execution=k).fit(x, y, ...)`` for
                several ``k``;
  (b) hand      what a typical user writes: ``nnx.split`` once, a ``jax.jit``-ed, donated
                train step over ``(params, opt_state, x, y)`` called once per batch from
                Python with numpy batches sliced on the host;
  (c) limit     the whole epoch in ONE jitted ``lax.scan`` over batches already on the
                device (``(steps, B, ...)`` jnp arrays): no per-step dispatch, no host data
                work. This is the throughput the machine gives to this model and batch.

Each variant is warmed up with one epoch (this compiles), then ``--epochs`` epochs are timed,
best of ``--repeats``. easyfit's timed runs are further ``fit`` calls on the same model: they
must reuse the compiled step, which is checked (``model._steps.train._cache_size() == 1``).

Run:  python benchmarks/fit_overhead.py            (full, a few minutes on 2 CPU cores)
      python benchmarks/fit_overhead.py --quick    (short smoke run)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import easyfit as ef

LR = 1e-3
WAIT_IDLE = True  # --no-wait-idle turns it off


# ---------------------------------------------------------------------------------------------
# model and data
# ---------------------------------------------------------------------------------------------
class MLP(nnx.Module):
    """Dense layers with relu between them; the last layer gives logits."""

    def __init__(self, sizes: tuple[int, ...], rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


@dataclass
class Config:
    name: str
    sizes: tuple[int, ...]
    batch: int
    steps: int          # batches per epoch (rows = batch * steps, so no partial batch)
    epochs: int         # epochs per timed run
    ks: tuple[int, ...]  # steps_per_execution values for easyfit

    @property
    def label(self) -> str:
        return f"{self.name} ({'-'.join(map(str, self.sizes))}, B={self.batch})"


def make_data(cfg: Config, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = cfg.batch * cfg.steps
    x = rng.standard_normal((rows, cfg.sizes[0]), dtype=np.float32)
    y = rng.integers(0, cfg.sizes[-1], size=rows).astype(np.int32)
    return x, y


def make_module(cfg: Config) -> MLP:
    return MLP(cfg.sizes, rngs=nnx.Rngs(0))


def loss_fn(graphdef, params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_idle(max_busy: float = 0.15, window: float = 0.5, timeout: float = 15.0) -> float:
    """Waits until the machine is quiet (others' CPU use < ``max_busy`` over ``window`` s).

    Other processes (a test run, say) on a 2-core machine distort timings badly. Returns the
    busy fraction last seen; gives up after ``timeout`` seconds (Linux only, else no-op).
    """
    if not os.path.exists("/proc/stat"):
        return 0.0
    deadline = time.monotonic() + timeout
    while True:
        busy0, total0 = _cpu_times()
        time.sleep(window)
        busy1, total1 = _cpu_times()
        busy = (busy1 - busy0) / max(total1 - total0, 1)
        if busy < max_busy or time.monotonic() > deadline:
            return busy


def best_of(run: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Best wall time (s) of ``repeats`` calls of ``run`` (each ends synchronised).

    Also returns the share of the machine's CPU that *other* processes used during the best
    run (0.0 = we had the machine to ourselves), so contended numbers can be flagged.
    """
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        if WAIT_IDLE:
            wait_idle()
        busy0, total0 = _cpu_times()
        own0 = sum(os.times()[:2])
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        busy1, total1 = _cpu_times()
        own = (sum(os.times()[:2]) - own0) * os.sysconf("SC_CLK_TCK")
        others = max(0.0, (busy1 - busy0 - own) / max(total1 - total0, 1))
        best = min(best, (seconds, others))
    return best


@dataclass
class Result:
    config: str
    variant: str
    steps_per_s: float
    others: float = 0.0  # other processes' CPU share during the best run
    note: str = ""


# (c) the dispatch-free limit ------------------------------------------------------------------
def bench_limit(cfg: Config, x: np.ndarray, y: np.ndarray, repeats: int) -> Result:
    graphdef, params = nnx.split(make_module(cfg), nnx.Param)
    tx = optax.adamw(LR, weight_decay=0.0)
    opt_state = tx.init(params)
    xs = jnp.asarray(x.reshape(cfg.steps, cfg.batch, -1))
    ys = jnp.asarray(y.reshape(cfg.steps, cfg.batch))

    def epoch(params, opt_state, xs, ys):
        def body(carry, batch):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn, argnums=1)(graphdef, params, *batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xs, ys))
        return params, opt_state, losses.sum()

    epoch = jax.jit(epoch, donate_argnums=(0, 1))
    state = [params, opt_state]

    def run(n):
        p, o = state
        for _ in range(n):
            p, o, total = epoch(p, o, xs, ys)
        jax.block_until_ready((p, o, total))
        state[:] = [p, o]

    run(1)  # compile + warm-up epoch
    seconds, others = best_of(lambda: run(cfg.epochs), repeats)
    return Result(cfg.label, "(c) limit: 1 jitted scan / epoch",
                  cfg.epochs * cfg.steps / seconds, others)


# (b) hand-written per-step loop --------------------------------------------------------------
def bench_hand(cfg: Config, x: np.ndarray, y: np.ndarray, repeats: int) -> Result:
    graphdef, params = nnx.split(make_module(cfg), nnx.Param)
    tx = optax.adamw(LR, weight_decay=0.0)
    opt_state = tx.init(params)

    def train_step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(graphdef, params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    state = [params, opt_state]
    B = cfg.batch

    def run(n):
        p, o = state
        loss = None
        for _ in range(n):
            for i in range(cfg.steps):
                p, o, loss = train_step(p, o, x[i * B:(i + 1) * B], y[i * B:(i + 1) * B])
        jax.block_until_ready((p, o, loss))
        state[:] = [p, o]

    run(1)
    seconds, others = best_of(lambda: run(cfg.epochs), repeats)
    return Result(cfg.label, "(b) hand-written jit step / batch",
                  cfg.epochs * cfg.steps / seconds, others)


# (a) easyfit -------------------------------------------------------------------------------
def bench_easyfit(cfg: Config, x: np.ndarray, y: np.ndarray, k: int, repeats: int,
                  problems: list[str]) -> Result:
    model = ef.Model(make_module(cfg))
    model.compile(optimizer=ef.optimizers.adamw(LR, weight_decay=0.0),
                  loss="sparse_categorical_crossentropy", steps_per_execution=k)

    def run(n):
        model.fit(x, y, batch_size=cfg.batch, epochs=n, shuffle=False, verbose=0)
        jax.block_until_ready(model._state)

    run(1)  # compiles the train step
    seconds, others = best_of(lambda: run(cfg.epochs), repeats)
    cache = model._steps.train._cache_size()
    note = ""
    if cache != 1:
        note = f"BUG: train step compiled {cache}x"
        problems.append(f"{cfg.label}, k={k}: train step cache size {cache} after "
                        f"{repeats + 1} fit calls (expected 1: a later fit recompiled)")
    return Result(cfg.label, f"(a) easyfit steps_per_execution={k}",
                  cfg.epochs * cfg.steps / seconds, others, note)


# ---------------------------------------------------------------------------------------------
def configs(quick: bool) -> list[Config]:
    if quick:
        return [Config("small", (64, 64, 10), 32, 128, 2, (1, 8, 128)),
                Config("medium", (784, 512, 512, 10), 128, 16, 1, (1, 16))]
    # Steps per epoch are powers of two so every k divides them: no filler batches.
    return [Config("small", (64, 64, 10), 32, 512, 8, (1, 8, 32, 128, 512)),
            Config("medium", (784, 512, 512, 10), 128, 128, 3, (1, 8, 32, 128))]


def machine_info() -> str:
    lines = [
        f"date:     {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"python:   {platform.python_version()}  ({platform.platform()})",
        f"jax:      {jax.__version__}  jaxlib backend: {jax.default_backend()}",
        f"devices:  {jax.devices()}",
        f"cpus:     os.cpu_count()={os.cpu_count()}, "
        f"sched_getaffinity={len(os.sched_getaffinity(0))}",
        f"easyfit:  {ef.__version__}",
    ]
    try:
        import flax
        lines.append(f"flax:     {flax.__version__}  optax: {optax.__version__}")
    except Exception:  # pragma: no cover
        pass
    return "\n".join(lines)


def table(results: list[Result]) -> str:
    header = (f"| {'config':<30} | {'variant':<36} | {'steps/s':>9} | {'vs (c)':>6} | "
              f"{'vs (b)':>6} | {'others':>6} | note")
    rule = f"|{'-' * 32}|{'-' * 38}|{'-' * 11}|{'-' * 8}|{'-' * 8}|{'-' * 8}|------"
    rows = [header, rule]
    by_config: dict[str, dict[str, float]] = {}
    for r in results:
        by_config.setdefault(r.config, {})[r.variant[:3]] = r.steps_per_s
    for r in results:
        ref = by_config[r.config]
        vs_c = r.steps_per_s / ref["(c)"]
        vs_b = r.steps_per_s / ref["(b)"]
        rows.append(f"| {r.config:<30} | {r.variant:<36} | {r.steps_per_s:>9.0f} | "
                    f"{vs_c:>5.2f}x | {vs_b:>5.2f}x | {r.others:>6.0%} | {r.note}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (best is kept)")
    parser.add_argument("--only", choices=["small", "medium"], help="one config only")
    parser.add_argument("--no-wait-idle", action="store_true",
                        help="do not wait for other processes to go quiet before each timing")
    args = parser.parse_args(argv)
    global WAIT_IDLE
    WAIT_IDLE = not args.no_wait_idle
    repeats = args.repeats or (2 if args.quick else 5)

    print(machine_info())
    print(f"command:  python {' '.join(sys.argv)}")
    print(f"repeats:  best of {repeats}\n", flush=True)

    results: list[Result] = []
    problems: list[str] = []
    for cfg in configs(args.quick):
        if args.only and cfg.name != args.only:
            continue
        x, y = make_data(cfg)
        print(f"{cfg.label}: {cfg.steps} steps/epoch, {cfg.epochs} timed epochs", flush=True)
        for bench in (bench_limit, bench_hand):
            results.append(bench(cfg, x, y, repeats))
            print(f"  {results[-1].variant:<38} {results[-1].steps_per_s:>9.0f} steps/s",
                  flush=True)
        for k in cfg.ks:
            results.append(bench_easyfit(cfg, x, y, k, repeats, problems))
            print(f"  {results[-1].variant:<38} {results[-1].steps_per_s:>9.0f} steps/s "
                  f"{results[-1].note}", flush=True)

    print()
    print(table(results))
    if problems:
        print("\nPROBLEMS:")
        for p in problems:
            print(f"  - {p}")
    else:
        print("\neasyfit: train step compiled once per model across all fit calls (cache size 1)")
    print("others = CPU share used by other processes during the best timed run "
          "(high values mean a contended, pessimistic number)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
