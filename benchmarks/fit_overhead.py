"""Speed and memory of ``Model.fit`` against a hand-written loop, the dispatch-free limit and
Keras 3.

For two MLPs (small: 64-64-10, batch 32, dispatch-bound; medium: 784-512-512-10, batch 128),
trained with AdamW (lr 1e-3, no weight decay) on synthetic float32 data with sparse integer
labels and softmax cross-entropy on logits, one run prints, per regime:

  easyfit default   ``ef.Model(mlp).compile(optimizer, loss)`` and ``fit(x, y, batch_size=B)``
                    with default arguments: ``steps_per_execution="auto"``, ``shuffle=True``
                    (``verbose=0`` everywhere: no progress output in any variant);
  easyfit tuned     the same with the fastest fixed ``steps_per_execution`` among ``--ks``;
  hand loop         what a typical user writes: ``nnx.split`` once, a ``jax.jit``-ed, donated
                    optax step over ``(params, opt_state, x, y)`` called once per batch from
                    Python, with numpy batches gathered on the host in a fresh random order
                    each epoch (shuffled, as ``fit``'s default);
  limit             the dispatch-free limit: the whole epoch in ONE jitted ``lax.scan`` over
                    batches already on the device (``(steps, B, ...)`` jnp arrays), no
                    per-step dispatch and no host data work;
  Keras 3 default   ``keras.Sequential`` of the same Dense(relu) layers, ``AdamW(1e-3,
                    weight_decay=0)``, ``SparseCategoricalCrossentropy(from_logits=True)``,
                    ``fit(x, y, batch_size=B)`` with default arguments (``shuffle=True``,
                    ``steps_per_execution=1``), ``KERAS_BACKEND=jax``, in a subprocess;
  Keras 3 best      the same with its fastest ``steps_per_execution`` among ``--ks``;

with, for each: training steps/s (compile excluded), the ratio to the limit and to Keras
default, the first-epoch time (a fresh process: ``fit(epochs=1)`` on a fresh model, compile
included) and the peak RSS of a fresh process that trains ``--rss-epochs`` epochs (ratio to
the hand loop's); then one line per target saying whether it is met.

Steps/s: each in-process variant is warmed up with one epoch (this compiles; for easyfit
default it is also where "auto" measures and picks its size), then timed in trials of whole
epochs (about ``--seconds`` each). Keras runs in a worker subprocess (Keras must see
``KERAS_BACKEND`` before its import, and must not share the process with flax) that times a
trial when asked, so trials of ALL variants are interleaved, ``--repeats`` rounds, and each
variant keeps its best trial: bursts of other work on the machine hit every variant alike.
Each round runs the variants in its own (seeded) random order: in a fixed order, a variant
ran slower than the same program in another place (easyfit default, after the hand loop,
made 0.87x of the limit where ``steps_per_execution=128``, the program "auto" had chosen,
made 0.97x), so which variant comes first is not left to the order of the list.
The ratio to the limit is also taken round by round ("paired": the median over rounds of
this variant's trial / the limit's in the same round); that figure decides the speed
targets, as this VM's speed drifts by 10-20% over minutes and best trials can come from
different spells. The first-epoch target likewise takes the median over rounds of fresh
processes of easyfit's first epoch / Keras's.
Trials wait for the machine to be quiet and are retried while other processes used more than
``QUIET`` of the CPU; the "others" column is that share in the best trial. easyfit's trials
are further ``fit`` calls on the same model: they must reuse the compiled step (its cache must
not grow after the warm-up; anything else is reported as a bug). Diagnostic rows time
easyfit's jitted step alone on chunks already on the device, and easyfit's input path alone
(chunks gathered, stacked and placed, no step): where the time of the small regime goes.

First epoch and peak RSS: each of the six main variants runs in a fresh subprocess
(``--first-repeats`` times, interleaved, each retried while others used the CPU; the fastest
quiet first epoch and the largest RSS are kept) that imports only what it needs (the hand
loop and the limit: jax, flax, optax; easyfit: those and easyfit; Keras: keras and jax),
builds the data and the model, times the first epoch, trains the remaining epochs, and
reports its peak RSS (``VmHWM``; "before fit" is the peak once imports, data and model are
ready).

Run:  pip install -e ".[benchmark]"                 (Keras 3 for the peer rows)
      python benchmarks/fit_overhead.py            (full: ~10 minutes on 2 idle CPU cores,
                                                    longer while other work retries trials)
      python benchmarks/fit_overhead.py --quick    (short smoke run, ~2-3 minutes)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
# benchmarks/ is on sys.path when run as a script
from _paired import (QUIET, FreshRun, Result, Variant, Worker, WorkerVariant, best_fresh,
                     child_env, easyfit_fit, easyfit_model, fresh_run as run_fresh,
                     machine_info as describe_machine, paired_ratio, peak_rss_mib, reply,
                     run_rounds, serve_trials, set_wait_idle, settle, timed)

ROLE_ENV = "FIT_OVERHEAD_ROLE"
KERAS_CHILD = os.environ.get(ROLE_ENV) == "keras"

import jax  # noqa: E402  (Keras children import it too: it is Keras's backend)
import jax.numpy as jnp  # noqa: E402

if not KERAS_CHILD:  # Keras children keep flax and optax out of their memory
    import optax
    from flax import nnx

LR = 1e-3


# ---------------------------------------------------------------------------------------------
# model and data
# ---------------------------------------------------------------------------------------------
if not KERAS_CHILD:
    from _models import MLP  # noqa: E402


@dataclass
class Config:
    name: str
    sizes: tuple[int, ...]
    batch: int
    steps: int          # batches per epoch (rows = batch * steps, so no partial batch)
    epochs: int         # at most this many epochs per timed trial
    ks: tuple[int, ...]  # fixed steps_per_execution values tried (easyfit and Keras)

    @property
    def label(self) -> str:
        return f"{self.name} ({'-'.join(map(str, self.sizes))}, B={self.batch})"


def configs(quick: bool, ks: tuple[int, ...] | None = None) -> list[Config]:
    # Steps per epoch are powers of two so every k divides them: no filler batches. k=1 is
    # always there: it is Keras's default.
    ks = tuple(sorted({1, *ks})) if ks else None
    # Trials need ~--seconds of work (others' CPU share is counted in 10 ms ticks): the
    # epochs cap is high enough for the fastest variant to get there.
    if quick:
        return [Config("small", (64, 64, 10), 32, 128, 64, ks or (1, 8, 128)),
                Config("medium", (784, 512, 512, 10), 128, 32, 16, ks or (1, 8, 32))]
    return [Config("small", (64, 64, 10), 32, 512, 128, ks or (1, 8, 32, 128, 512)),
            Config("medium", (784, 512, 512, 10), 128, 128, 16, ks or (1, 8, 32, 128))]


def make_data(cfg: Config, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = cfg.batch * cfg.steps
    x = rng.standard_normal((rows, cfg.sizes[0]), dtype=np.float32)
    y = rng.integers(0, cfg.sizes[-1], size=rows).astype(np.int32)
    return x, y


def make_module(cfg: Config) -> "MLP":
    return MLP(cfg.sizes, rngs=nnx.Rngs(0))


def loss_fn(graphdef, params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def _split(cfg: Config):
    graphdef, params = nnx.split(make_module(cfg), nnx.Param)
    tx = optax.adamw(LR, weight_decay=0.0)
    return graphdef, params, tx, tx.init(params)


# the dispatch-free limit --------------------------------------------------------------------
def limit_variant(cfg: Config, x: np.ndarray, y: np.ndarray) -> Variant:
    graphdef, params, tx, opt_state = _split(cfg)
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

    return Variant(cfg, "limit: 1 jitted scan / epoch", run, key="limit")


# hand-written per-step loop ------------------------------------------------------------------
def hand_variant(cfg: Config, x: np.ndarray, y: np.ndarray) -> Variant:
    graphdef, params, tx, opt_state = _split(cfg)

    def train_step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn, argnums=1)(graphdef, params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    state = [params, opt_state]
    rng = np.random.default_rng(0)
    B = cfg.batch

    def run(n):
        p, o = state
        loss = None
        for _ in range(n):
            order = rng.permutation(len(x))  # a fresh order each epoch, as fit's shuffle
            for i in range(cfg.steps):
                rows = order[i * B:(i + 1) * B]
                p, o, loss = train_step(p, o, x[rows], y[rows])
        jax.block_until_ready((p, o, loss))
        state[:] = [p, o]

    return Variant(cfg, "hand-written jit step / batch", run, key="hand")


# easyfit -----------------------------------------------------------------------------------
def easyfit_variant(cfg: Config, x: np.ndarray, y: np.ndarray, k: int | str) -> Variant:
    model = easyfit_model(make_module(cfg), k, LR)
    fits = [0]
    warm = [None]  # compiled train programs after the warm-up

    def run(n):
        easyfit_fit(model, cfg.batch, x, y, n)
        fits[0] += 1
        if warm[0] is None:
            warm[0] = model.trainer.steps.train.cache_size()

    def check() -> str:
        cache = model.trainer.steps.train.cache_size()
        allowed = 2 if k == "auto" else 1  # auto: one step, and the fused size
        if cache == warm[0] and cache <= allowed:
            return ""
        return (f"BUG: train step compiled {cache}x over {fits[0]} fit calls (after the "
                f"warm-up: {warm[0]}; expected at most {allowed})")

    def info() -> str:
        return f"auto chose k={model.trainer.dispatch.steps()}" if k == "auto" else ""

    name = "easyfit default (steps_per_execution='auto')" if k == "auto" else \
        f"easyfit steps_per_execution={k}"
    variant = Variant(cfg, name, run, check, info, key="default" if k == "auto" else f"ef{k}")
    variant.model = model
    return variant


def easyfit_step_only_variant(cfg: Config, x: np.ndarray, y: np.ndarray, k: int) -> Variant:
    """Diagnostic: easyfit's jitted train step alone, on chunks placed on the device up front.

    No data path, no Python loop beyond one call per chunk: what the compiled step costs.
    Uses easyfit internals (``_steps``, ``_distribution``, ``data.adapters.ArrayAdapter``).
    """
    from easyfit.data.adapters import ArrayAdapter

    model = easyfit_model(make_module(cfg), k, LR)
    model.fit(x[:cfg.batch], y[:cfg.batch], batch_size=cfg.batch, epochs=1, shuffle=False,
              verbose=0)  # builds the state and the step
    adapter = ArrayAdapter(x, y, batch_size=cfg.batch)
    chunks = [model.distribution.place_chunk(c) for c, _ in adapter.chunks(0, k)]
    # A private copy of the state: the model's own may share buffers with its module.
    state = [jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a,
                          model.trainer.state)]
    train = model.trainer.steps.train

    def run(n):
        st = state[0]
        for _ in range(n):
            for chunk in chunks:
                st, _ = train(st, chunk)
        state[0] = jax.block_until_ready(st)

    return Variant(cfg, f"  easyfit step only, k={k} (diagnostic)", run, key="diag")


def easyfit_input_only_variant(cfg: Config, x: np.ndarray, y: np.ndarray, k: int) -> Variant:
    """Diagnostic: easyfit's input path alone, as ``fit`` runs it for arrays with shuffling:
    ``ArrayAdapter.chunks`` placed on the device by the prefetch thread and consumed by the
    main thread (for a dataset small enough to live on the device, as ``fit`` does it:
    chunks of row numbers, made in the main thread, which the train step's call places and
    gathers from; see ``easyfit.data.on_device``); no train step. Its steps/s bounds
    ``fit``'s. Uses easyfit internals."""
    from easyfit.data.adapters import ArrayAdapter
    from easyfit.data.on_device import device_rows as make_rows
    from easyfit.data.prefetch import prefetch

    model = easyfit_model(make_module(cfg), k, LR)
    model.fit(x[:cfg.batch], y[:cfg.batch], batch_size=cfg.batch, epochs=1, verbose=0)
    adapter = ArrayAdapter(x, y, batch_size=cfg.batch, shuffle=True)
    device_rows = make_rows(adapter, model.distribution, model.trainer.dispatch.one_step_per_call())
    place = device_rows or model.distribution.place_chunk
    args = {} if device_rows is None else {"as_index": True}
    how = "host gather" if device_rows is None else "row numbers (gathered in the step)"

    def run(n):
        last = None
        for epoch in range(n):
            for last, _ in prefetch(adapter.chunks(epoch, k, **args),
                                    lambda item: (place(item[0]), item[1]),
                                    depth=0 if device_rows is not None else 2):
                pass
        jax.block_until_ready(last)

    return Variant(cfg, f"  easyfit input only, k={k} (diagnostic)", run,
                   info=lambda: how, key="diag")


# Keras 3 -----------------------------------------------------------------------------------
def keras_available() -> bool:
    return importlib.util.find_spec("keras") is not None


def keras_model(cfg: Config, k: int):
    """The same MLP in Keras 3 (call only in a process started with ``KERAS_BACKEND=jax``)."""
    import keras

    assert keras.backend.backend() == "jax", keras.backend.backend()
    # No keras.utils.set_random_seed: it imports TensorFlow (when installed) to seed it too,
    # ~500 MiB that a JAX-backend Keras user does not otherwise load.
    layers = [keras.Input((cfg.sizes[0],))]
    layers += [keras.layers.Dense(n, activation="relu") for n in cfg.sizes[1:-1]]
    layers.append(keras.layers.Dense(cfg.sizes[-1]))  # logits
    model = keras.Sequential(layers)
    kwargs = {} if k == 1 else {"steps_per_execution": k}  # 1 is Keras's default
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=LR, weight_decay=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **kwargs)
    return model


def _keras_fit(model, cfg: Config, x, y, epochs: int) -> None:
    """Keras's ``fit`` with default arguments but the batch size and the epochs (and no
    output: its default progress bar would read the logs every step)."""
    model.fit(x, y, batch_size=cfg.batch, epochs=epochs, verbose=0)
    jax.block_until_ready([v.value for v in model.variables])


def _child_env(keras: bool) -> dict[str, str]:
    return child_env(ROLE_ENV, "keras" if keras else None, keras)


class KerasWorker(Worker):
    """A subprocess holding one Keras model per ``steps_per_execution``, each warmed up and
    calibrated; it times one trial whenever asked, so its trials interleave with ours."""

    def __init__(self, cfg: Config, target_s: float, argv_common: list[str]):
        super().__init__([sys.executable, os.path.abspath(__file__), "--child", "keras-worker",
                          "--config", cfg.name, "--seconds", str(target_s), *argv_common],
                         _child_env(True))
        self.epochs = {int(key[len("keras"):]): n for key, n in self.ready["epochs"].items()}


class KerasVariant(WorkerVariant):
    """A Keras model living in the worker; ``measure`` asks the worker for one trial."""

    def __init__(self, cfg: Config, worker: KerasWorker, k: int):
        name = "Keras 3 default (steps_per_execution=1)" if k == 1 else \
            f"Keras 3 steps_per_execution={k}"
        super().__init__(cfg, name, worker, f"keras{k}", worker.epochs[k])


def keras_worker_main(cfg: Config, target_s: float) -> int:
    x, y = make_data(cfg)
    variants = {}
    for k in cfg.ks:
        model = keras_model(cfg, k)
        variants[f"keras{k}"] = Variant(cfg, f"keras{k}",
                                        lambda n, m=model: _keras_fit(m, cfg, x, y, n))
        variants[f"keras{k}"].prepare(target_s, cfg.epochs)
    return serve_trials(variants)


# first epoch and peak RSS, in fresh processes ---------------------------------------------------
def fresh_main(cfg: Config, variant: str, k: int | str, epochs: int) -> int:
    """Child: a fresh model, its first epoch timed (compile included), ``epochs - 1`` more
    epochs, then the peak RSS. Imports only what the variant needs."""
    x, y = make_data(cfg)
    auto_k = []
    if variant == "keras":
        model = keras_model(cfg, int(k))
        train = lambda n: _keras_fit(model, cfg, x, y, n)
    elif variant == "easyfit":
        model = easyfit_model(make_module(cfg), k, LR)
        train = lambda n: easyfit_fit(model, cfg.batch, x, y, n)
    elif variant in ("hand", "limit"):
        train = (hand_variant if variant == "hand" else limit_variant)(cfg, x, y).run
    else:
        raise ValueError(variant)
    before = peak_rss_mib()  # imports, data and model: what the process holds before fit
    settle()
    first, others = timed(lambda: train(1))
    if epochs > 1:
        train(epochs - 1)
    if variant == "easyfit" and k == "auto":
        auto_k = [model.trainer.dispatch.steps()]
    reply({"first_s": first, "others": others, "rss_mib": peak_rss_mib(),
            "before_mib": before, "auto_k": auto_k})
    return 0


def fresh_run(cfg: Config, variant: str, k: int | str, epochs: int,
              argv_common: list[str]) -> FreshRun:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "fresh", "--config", cfg.name,
           "--variant", variant, "--k", str(k), "--rss-epochs", str(epochs), *argv_common]
    return run_fresh(cmd, _child_env(variant == "keras"), timeout=600)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def machine_info() -> str:
    return describe_machine(keras_available())


def detail_table(results: list[Result]) -> str:
    """Every timed variant: steps/s against the limit and the hand loop."""
    header = (f"| {'config':<30} | {'variant':<44} | {'steps/s':>9} | {'vs limit':>8} | "
              f"{'paired':>7} | {'vs hand':>7} | {'median':>9} | {'others':>6} | note")
    rule = (f"|{'-' * 32}|{'-' * 46}|{'-' * 10}:|{'-' * 9}:|{'-' * 8}:|{'-' * 8}:|{'-' * 10}:|"
            f"{'-' * 7}:|------")
    rows = [header, rule]
    by_config: dict[str, dict[str, float]] = {}
    for r in results:
        by_config.setdefault(r.config, {})[r.key] = r.steps_per_s
    for r in results:
        ref = by_config[r.config]
        rows.append(f"| {r.config:<30} | {r.variant:<44} | {r.steps_per_s:>9.0f} | "
                    f"{r.steps_per_s / ref['limit']:>7.2f}x | {r.paired_vs_limit:>6.2f}x | "
                    f"{r.steps_per_s / ref['hand']:>6.2f}x | {r.median_steps_per_s:>9.0f} | "
                    f"{r.others:>6.0%} | {r.note}")
    return "\n".join(rows)


@dataclass
class Row:
    """One line of a regime's main table."""

    name: str
    result: Result
    fresh: FreshRun | None
    first_vs_keras: float | None = None  # median over rounds of (first epoch / Keras's)


def main_table(rows: list[Row]) -> str:
    by = {row.name: row for row in rows}
    limit = by["limit"].result.steps_per_s
    keras = by["keras"].result.steps_per_s if "keras" in by else None
    hand_rss = by["hand"].fresh.rss_mib if by["hand"].fresh else None
    out = ["| variant | steps/s | vs limit | vs limit, paired | vs Keras default | "
           "first epoch s | peak RSS MiB | RSS vs hand | note |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        r, f = row.result, row.fresh
        vs_keras = f"{r.steps_per_s / keras:.2f}x" if keras else "-"
        first = f"{f.first_s:.2f}" if f else "-"
        rss = f"{f.rss_mib:.0f}" if f else "-"
        vs_hand = f"{f.rss_mib / hand_rss:.3f}x" if f and hand_rss else "-"
        notes = [r.note]
        if f and f.auto_k:
            notes.append(f"in the fresh processes k={', '.join(map(str, f.auto_k))}")
        if f and f.others > QUIET:
            notes.append(f"first epoch contended ({f.others:.0%} others)")
        if r.others > QUIET:
            notes.append(f"best trial {r.others:.0%} others")
        out.append(f"| {r.variant} | {r.steps_per_s:.0f} | {r.steps_per_s / limit:.2f}x | "
                   f"{r.paired_vs_limit:.2f}x | {vs_keras} | {first} | {rss} | {vs_hand} | "
                   f"{'; '.join(n for n in notes if n)} |")
    return "\n".join(out)


def targets(regimes: dict[str, list[Row]]) -> list[str]:
    """The issue's targets, each met or not, with the figures."""
    lines = []

    def say(ok: bool | None, text: str) -> None:
        lines.append(f"- {'MET    ' if ok else 'not met' if ok is not None else 'n/a    '}  "
                     f"{text}")

    for name, rows in regimes.items():
        by = {row.name: row for row in rows}
        d, lim, hand = by["default"], by["limit"], by["hand"]
        best = d.result.steps_per_s / lim.result.steps_per_s
        say(d.result.paired_vs_limit >= 0.9,
            f"{name}: easyfit default >= 0.9x the limit: {d.result.paired_vs_limit:.2f}x paired "
            f"(best trials: {best:.2f}x, {d.result.steps_per_s:.0f} vs "
            f"{lim.result.steps_per_s:.0f} steps/s)")
        keras = by.get("keras")
        if name == "small":
            if keras:
                ratio = d.result.steps_per_s / keras.result.steps_per_s
                say(ratio >= 2.0, f"{name}: easyfit default >= 2x Keras 3 default: {ratio:.2f}x "
                    f"({d.result.steps_per_s:.0f} vs {keras.result.steps_per_s:.0f} steps/s)")
            else:
                say(None, f"{name}: easyfit default >= 2x Keras 3 default: Keras not installed")
        if keras and keras.fresh and d.fresh and d.first_vs_keras is not None:
            say(d.first_vs_keras <= 1.0,
                f"{name}: first epoch easyfit default <= Keras 3 default: "
                f"{d.first_vs_keras:.2f}x paired (fastest runs: {d.fresh.first_s:.2f} s vs "
                f"{keras.fresh.first_s:.2f} s, {d.fresh.first_s / keras.fresh.first_s:.2f}x)")
        elif d.fresh:
            say(None, f"{name}: first epoch vs Keras 3: Keras not measured")
        if d.fresh and hand.fresh:
            ratio = d.fresh.rss_mib / hand.fresh.rss_mib
            say(ratio <= 1.1, f"{name}: peak RSS easyfit default <= 1.1x the hand loop: "
                f"{ratio:.3f}x ({d.fresh.rss_mib:.0f} vs {hand.fresh.rss_mib:.0f} MiB)")
    return lines


# ---------------------------------------------------------------------------------------------
def run_regime(cfg: Config, args, argv_common: list[str]) -> tuple[list[Result], list[Row]]:
    x, y = make_data(cfg)
    default = easyfit_variant(cfg, x, y, "auto")
    variants = [limit_variant(cfg, x, y), hand_variant(cfg, x, y), default]
    variants += [easyfit_variant(cfg, x, y, k) for k in cfg.ks]
    print(f"{cfg.label}: {cfg.steps} steps/epoch; warming up {len(variants)} variants",
          flush=True)
    for variant in variants:
        variant.prepare(args.seconds, cfg.epochs)
    if not args.no_diagnostic:
        k = default.model.trainer.dispatch.steps() or 1
        for make in (easyfit_step_only_variant, easyfit_input_only_variant):
            variants.append(make(cfg, x, y, k))
            variants[-1].prepare(args.seconds, cfg.epochs)
    worker = None
    if keras_available() and not args.no_keras:
        print("  starting the Keras worker (warms up and calibrates each model)", flush=True)
        worker = KerasWorker(cfg, args.seconds, argv_common)
        variants += [KerasVariant(cfg, worker, k) for k in cfg.ks]
    try:
        run_rounds(variants, args.repeats, args.attempts)
    finally:
        if worker is not None:
            worker.close()
    results = []
    limit = next(v for v in variants if v.key == "limit")
    for variant in variants:
        results.append(variant.result())
        r = results[-1]
        r.paired_vs_limit = paired_ratio(variant.rates(), limit.rates())
        print(f"  {r.variant:<44} {r.steps_per_s:>9.0f} steps/s  ({variant.epochs} epochs "
              f"a trial; {r.quiet_trials}/{r.trials} trials quiet; others in best "
              f"{r.others:.0%}) {r.note}", flush=True)

    by_key = {r.key: r for r in results}
    tuned_k = max(cfg.ks, key=lambda k: by_key[f"ef{k}"].steps_per_s)
    main = [("default", by_key["default"], "easyfit", "auto"),
            ("tuned", by_key[f"ef{tuned_k}"], "easyfit", tuned_k),
            ("hand", by_key["hand"], "hand", 0),
            ("limit", by_key["limit"], "limit", 0)]
    if worker is not None:
        best_k = max(cfg.ks, key=lambda k: by_key[f"keras{k}"].steps_per_s)
        main += [("keras", by_key["keras1"], "keras", 1),
                 ("keras_best", by_key[f"keras{best_k}"], "keras", best_k)]

    # First epoch and peak RSS: fresh processes, interleaved over the repeats.
    fresh: dict[str, list[FreshRun]] = {name: [] for name, *_ in main}
    fresh_rounds: dict[str, list[FreshRun]] = {name: [] for name, *_ in main}
    if not args.no_fresh:
        print(f"  fresh processes: first epoch + peak RSS over {args.rss_epochs} epochs, "
              f"{args.first_repeats} run(s) each", flush=True)
        for _ in range(args.first_repeats):
            for name, _, variant, k in main:
                for _ in range(args.attempts):  # retried while others used the CPU
                    fresh[name].append(fresh_run(cfg, variant, k, args.rss_epochs, argv_common))
                    f = fresh[name][-1]
                    print(f"    {name:<10} first epoch {f.first_s:6.2f} s  (others "
                          f"{f.others:.0%})  peak RSS {f.rss_mib:6.0f} MiB (before fit "
                          f"{f.before_mib:4.0f})"
                          f"{'  auto chose k=%d' % f.auto_k[0] if f.auto_k else ''}", flush=True)
                    if f.others <= QUIET:
                        break
                fresh_rounds[name].append(fresh[name][-1])
    rows = []
    for name, result, _, k in main:
        best = best_fresh(fresh[name])
        label = result.variant
        if name == "tuned":
            label = f"easyfit tuned (steps_per_execution={k})"
        elif name == "keras_best":
            label = f"Keras 3 best (steps_per_execution={k})"
        rows.append(Row(name, Result(**{**result.__dict__, "variant": label}), best))
    if fresh_rounds["default"] and fresh_rounds.get("keras"):
        rows[0].first_vs_keras = paired_ratio([f.first_s for f in fresh_rounds["default"]],
                                              [f.first_s for f in fresh_rounds["keras"]])
    return results, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed trials per variant, interleaved (the best is kept); "
                             "default 5 (3 with --quick)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="target length of one trial (default 1.0, 0.3 with --quick)")
    parser.add_argument("--attempts", type=int, default=3,
                        help="runs per trial at most, retrying while other processes use "
                             f"more than {QUIET * 100:.0f}%% of the CPU (default 3)")
    parser.add_argument("--ks", type=lambda s: tuple(int(v) for v in s.split(",")),
                        help="fixed steps_per_execution values for easyfit tuned and Keras "
                             "best (default 1,8,32,128,512 small / 1,8,32,128 medium; "
                             "1,8,128 / 1,8,32 with --quick)")
    parser.add_argument("--rss-epochs", type=int, default=None,
                        help="epochs each fresh process trains (default 3, 2 with --quick)")
    parser.add_argument("--first-repeats", type=int, default=None,
                        help="fresh processes per variant (default 5, 1 with --quick)")
    parser.add_argument("--only", choices=["small", "medium"], help="one config only")
    parser.add_argument("--no-diagnostic", action="store_true",
                        help="skip the 'easyfit step only' / 'input only' diagnostic rows")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras 3 rows")
    parser.add_argument("--no-fresh", action="store_true",
                        help="skip the fresh processes (first epoch, peak RSS)")
    parser.add_argument("--no-wait-idle", action="store_true",
                        help="do not wait for other processes to go quiet before each trial")
    # children (started by this script)
    parser.add_argument("--child", choices=["keras-worker", "fresh"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--k", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_wait_idle(not args.no_wait_idle)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.seconds = args.seconds or (0.3 if args.quick else 1.0)
    args.rss_epochs = args.rss_epochs or (2 if args.quick else 3)
    # The first-epoch target is a median of per-round ratios; a fresh process's first epoch
    # varies by ~10% from run to run here, so fewer rounds decide it by chance.
    args.first_repeats = args.first_repeats or (1 if args.quick else 5)
    cfgs = configs(args.quick, args.ks)
    argv_common = (["--quick"] if args.quick else []) + \
        (["--no-wait-idle"] if args.no_wait_idle else []) + \
        (["--ks", ",".join(map(str, args.ks))] if args.ks else [])

    if args.child:
        cfg = next(c for c in cfgs if c.name == args.config)
        if args.child == "keras-worker":
            return keras_worker_main(cfg, args.seconds)
        k = args.k if args.k == "auto" else int(args.k)
        return fresh_main(cfg, args.variant, k, args.rss_epochs)

    started = time.perf_counter()
    print(machine_info())
    print(f"command:  python {' '.join(sys.argv)}")
    print(f"timing:   {args.repeats} interleaved trials per variant of ~{args.seconds:g} s each, "
          f"best kept; compile excluded (one warm-up epoch per variant first)")
    print(f"fresh:    {args.first_repeats} fresh process(es) per main variant: first epoch "
          f"(compile included; fastest kept), peak RSS after {args.rss_epochs} epochs "
          f"(largest kept)\n", flush=True)

    results: list[Result] = []
    regimes: dict[str, list[Row]] = {}
    for cfg in cfgs:
        if args.only and cfg.name != args.only:
            continue
        found, rows = run_regime(cfg, args, argv_common)
        results += found
        regimes[cfg.name] = rows

    for cfg in cfgs:
        if cfg.name in regimes:
            print(f"\n### {cfg.label}, {cfg.steps} steps/epoch\n")
            print(main_table(regimes[cfg.name]))
    print("\nAll timed variants:\n")
    print(detail_table(results))
    print("\nTargets:")
    print("\n".join(targets(regimes)))
    problems = [f"{r.config} {r.variant.strip()}: {r.note}" for r in results
                if "BUG" in r.note or "contended" in r.note]
    if problems:
        print("\nPROBLEMS:")
        for p in problems:
            print(f"  - {p}")
    else:
        print("\neasyfit: the train step never recompiled after the warm-up fit (fixed k: one "
              "program per model; auto: at most two)")
    print(f"steps/s = best trial; paired = median over the rounds of (this trial / the limit's "
          f"trial in the same round), which decides the speed targets (the machine's speed "
          f"drifts; a ratio within a round does not); median = median trial (of the quiet "
          f"ones); others = CPU "
          f"share used by other processes during the best trial; trials above {QUIET:.0%} are "
          f"retried (--attempts) and count only if no quiet one exists. first epoch = a fresh "
          f"process's fit(epochs=1) on a fresh model, compile included (fastest quiet run; the "
          f"first-epoch target takes the median over rounds of easyfit's / Keras's); "
          f"peak RSS = VmHWM of a fresh process after {args.rss_epochs} epochs on the same "
          f"data (largest run). "
          f"Total {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
