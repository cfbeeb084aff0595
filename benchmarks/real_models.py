"""Speed and memory of ``Model.fit`` on real models against a hand-written Flax loop, the
dispatch-free limit and Keras 3, on this machine's CPU.

Two models of ``examples/models.py``, trained with AdamW (lr 1e-3, no weight decay) and
softmax cross-entropy on logits with integer labels:

  transformer  ``CharTransformer`` (vocab 256, width 128, 4 blocks, 4 heads, sequence 128,
               dropout 0.1) at batch 32 on random bytes, next-byte labels (a loss per token),
               32 steps per epoch;
  resnet       ``ResNet()`` (stages of 16, 32, 64 channels, BatchNorm) at batch 64 on random
               32x32x1 images, 10 classes, 16 steps per epoch.

Variants, per model, in one run:

  easyfit default   ``ef.Model(module).compile(optimizer, loss)``, ``fit(x, y, batch_size=B)``
                    with default arguments (``steps_per_execution="auto"``, ``shuffle=True``,
                    ``verbose=0`` everywhere);
  hand loop         what a Flax user writes today, as in Flax's own guides: an ``nnx.jit``
                    train step over ``(model, optimizer, x, y)`` with ``nnx.Optimizer(model,
                    tx, wrt=nnx.Param)``, called per batch from Python on numpy batches taken
                    in a fresh random order each epoch;
  limit             the dispatch-free limit: an epoch in ONE jitted ``lax.scan`` over batches
                    already on the device (no shuffling, no per-step dispatch); unrolled for
                    the CNN, whose convolutions XLA:CPU runs ~20x slower in a rolled loop;
  Keras 3 default   the same network in Keras layers (``Embedding``, ``MultiHeadAttention(
                    use_causal_mask=True)``, ``LayerNormalization``, ``Dense``, ``Dropout``;
                    ``Conv2D``, ``BatchNormalization``, ``GlobalAveragePooling2D``), ``fit``
                    with default arguments, ``KERAS_BACKEND=jax``, in a worker subprocess;
  easyfit k=N       (``--ks``) diagnostic rows: easyfit with a fixed ``steps_per_execution``.

The method is ``fit_overhead.py``'s (``benchmarks/_paired.py``): one warm-up epoch each
(compiles; "auto" measures and chooses there), trials of whole epochs (~``--seconds``),
interleaved in ``--rounds`` rounds, each in its own seeded random order, each trial waiting
for a quiet machine and retried while other processes used the CPU. The ratios that decide
the targets are paired: the median over rounds of (this trial / the other's in the same
round). First epoch (``fit(epochs=1)`` on a fresh model, compile included) and peak RSS
(``VmHWM`` after ``--rss-epochs`` epochs) come from fresh processes, ``--first-repeats``
rounds of them, interleaved; the first-epoch target is the median over those rounds of
easyfit's / Keras's.

Targets on this CPU: easyfit default >= 0.95x the hand loop and >= 0.9x the limit (paired),
first epoch <= Keras's, for both models.

Run:  pip install -e ".[benchmark]"                      (Keras 3 for the peer rows)
      python benchmarks/real_models.py                  (~20-25 min on 2 idle CPU cores)
      python benchmarks/real_models.py --models resnet --rounds 3 --first-repeats 1
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
                     child_env, easyfit_fit, easyfit_model, fresh_run, machine_info,
                     paired_ratio, peak_rss_mib, reply, run_rounds, serve_trials,
                     set_wait_idle, settle, timed)

ROLE_ENV = "REAL_MODELS_ROLE"
KERAS_CHILD = os.environ.get(ROLE_ENV) == "keras"

import jax  # noqa: E402  (Keras children import it too: it is Keras's backend)
import jax.numpy as jnp  # noqa: E402

if not KERAS_CHILD:  # Keras children keep flax and optax out of their memory
    import optax
    from flax import nnx

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "examples"))
    from models import CharTransformer, ResNet  # noqa: E402

LR = 1e-3


@dataclass
class Config:
    name: str
    batch: int
    steps: int   # batches per epoch (no partial batch)
    epochs: int  # at most this many epochs per timed trial

    @property
    def label(self) -> str:
        return {"transformer": f"transformer (4x128, T=128, B={self.batch})",
                "resnet": f"resnet (16-32-64, 32x32x1, B={self.batch})"}[self.name]


VOCAB, WIDTH, DEPTH, HEADS, SEQ, DROPOUT = 256, 128, 4, 4, 128, 0.1
IMAGE, CLASSES = (32, 32, 1), 10


def configs(args: argparse.Namespace) -> dict[str, Config]:
    return {"transformer": Config("transformer", args.transformer_batch,
                                  args.transformer_steps, 8),
            "resnet": Config("resnet", args.resnet_batch, args.resnet_steps, 8)}


def make_data(cfg: Config, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = cfg.batch * cfg.steps
    if cfg.name == "transformer":
        text = rng.integers(0, VOCAB, size=(rows, SEQ + 1), dtype=np.int32)
        return text[:, :-1], text[:, 1:]
    x = rng.standard_normal((rows, *IMAGE), dtype=np.float32)
    return x, rng.integers(0, CLASSES, size=rows).astype(np.int32)


def make_module(cfg: Config) -> "nnx.Module":
    if cfg.name == "transformer":
        return CharTransformer(VOCAB, WIDTH, DEPTH, HEADS, SEQ, DROPOUT, rngs=nnx.Rngs(0))
    return ResNet(CLASSES, in_channels=IMAGE[-1], rngs=nnx.Rngs(0))


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# the dispatch-free limit ----------------------------------------------------------------------
def limit_variant(cfg: Config, x: np.ndarray, y: np.ndarray) -> Variant:
    graphdef, params, rest = nnx.split(make_module(cfg), nnx.Param, ...)
    tx = optax.adamw(LR, weight_decay=0.0)
    xs = jnp.asarray(x.reshape(cfg.steps, cfg.batch, *x.shape[1:]))
    ys = jnp.asarray(y.reshape(cfg.steps, cfg.batch, *y.shape[1:]))

    def loss_fn(params, rest, xb, yb):
        module = nnx.merge(graphdef, params, rest, copy=True)
        loss = cross_entropy(module(xb), yb)
        return loss, nnx.state(module, nnx.Not(nnx.Param))  # dropout counts, batch stats

    def epoch(params, rest, opt_state, xs, ys):
        def body(carry, batch):
            params, rest, opt_state = carry
            (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, *batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), rest, opt_state), loss

        # XLA:CPU runs the convolutions of a rolled loop ~20x slower (seen here): the CNN's
        # epoch is unrolled, one program still.
        carry, losses = jax.lax.scan(body, (params, rest, opt_state), (xs, ys),
                                     unroll=cfg.name == "resnet")
        return *carry, losses.sum()

    epoch = jax.jit(epoch, donate_argnums=(0, 1, 2))
    state = [params, rest, tx.init(params)]

    def run(n):
        for _ in range(n):
            *state[:], total = epoch(*state, xs, ys)
        jax.block_until_ready((state, total))

    return Variant(cfg, "limit: 1 jitted scan / epoch", run, key="limit")


# the hand-written loop, as Flax's guides write it ---------------------------------------------
def hand_variant(cfg: Config, x: np.ndarray, y: np.ndarray) -> Variant:
    model = make_module(cfg)
    optimizer = nnx.Optimizer(model, optax.adamw(LR, weight_decay=0.0), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, xb, yb):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(xb), yb))(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    B = cfg.batch

    def run(n):
        loss = None
        for _ in range(n):
            order = rng.permutation(len(x))  # a fresh order each epoch, as fit's shuffle
            for i in range(cfg.steps):
                rows = order[i * B:(i + 1) * B]
                loss = train_step(model, optimizer, x[rows], y[rows])
        jax.block_until_ready(loss)

    return Variant(cfg, "hand-written nnx.jit step / batch", run, key="hand")


# easyfit ------------------------------------------------------------------------------------
def easyfit_variant(cfg: Config, x: np.ndarray, y: np.ndarray, k: int | str) -> Variant:
    model = easyfit_model(make_module(cfg), k, LR)
    info = (lambda: f"auto chose k={model.trainer.dispatch.steps()}") \
        if k == "auto" else (lambda: "diagnostic")
    name = "easyfit default (steps_per_execution='auto')" if k == "auto" else \
        f"  easyfit steps_per_execution={k}"
    return Variant(cfg, name, lambda n: easyfit_fit(model, cfg.batch, x, y, n), info=info,
                   key="default" if k == "auto" else f"ef{k}")


# Keras 3 ----------------------------------------------------------------------------------
def keras_available() -> bool:
    return importlib.util.find_spec("keras") is not None


def keras_model(cfg: Config):
    """The same network in Keras 3 (call only in a process with ``KERAS_BACKEND=jax``)."""
    import keras
    from keras import layers

    assert keras.backend.backend() == "jax", keras.backend.backend()
    if cfg.name == "transformer":
        class Positions(layers.Layer):  # learned positions, as nnx.Embed(seq_len, width)
            def build(self, shape):
                self.table = self.add_weight(shape=tuple(shape[1:]), initializer="normal")

            def call(self, x):
                return x + self.table

        ids = keras.Input((SEQ,), dtype="int32")
        x = layers.Dropout(DROPOUT)(Positions()(layers.Embedding(VOCAB, WIDTH)(ids)))
        for _ in range(DEPTH):
            h = layers.LayerNormalization()(x)
            h = layers.MultiHeadAttention(HEADS, WIDTH // HEADS)(h, h, use_causal_mask=True)
            x = x + layers.Dropout(DROPOUT)(h)
            h = layers.Dense(4 * WIDTH, activation="gelu")(layers.LayerNormalization()(x))
            x = x + layers.Dropout(DROPOUT)(layers.Dense(WIDTH)(h))
        model = keras.Model(ids, layers.Dense(VOCAB)(layers.LayerNormalization()(x)))
    else:
        def conv_bn(x, features, kernel, stride):
            x = layers.Conv2D(features, kernel, stride, padding="same", use_bias=False)(x)
            return layers.BatchNormalization()(x)

        images = keras.Input(IMAGE)
        x = layers.ReLU()(conv_bn(images, 16, 3, 1))
        for stage, features in enumerate((16, 32, 64)):
            stride = 2 if stage else 1
            y = conv_bn(layers.ReLU()(conv_bn(x, features, 3, stride)), features, 3, 1)
            shortcut = x if stride == 1 and x.shape[-1] == features else \
                layers.Conv2D(features, 1, stride, use_bias=False)(x)
            x = layers.ReLU()(y + shortcut)
        model = keras.Model(images, layers.Dense(CLASSES)(layers.GlobalAveragePooling2D()(x)))
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=LR, weight_decay=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def keras_fit(model, cfg: Config, x, y, epochs: int) -> None:
    model.fit(x, y, batch_size=cfg.batch, epochs=epochs, verbose=0)
    jax.block_until_ready([v.value for v in model.variables])


# children -----------------------------------------------------------------------------------
def child_command(cfg: Config, argv_common: list[str], *args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *args, "--models", cfg.name,
            *argv_common]


def keras_worker_main(cfg: Config, target_s: float) -> int:
    x, y = make_data(cfg)
    model = keras_model(cfg)
    variant = Variant(cfg, "keras", lambda n: keras_fit(model, cfg, x, y, n))
    variant.prepare(target_s, cfg.epochs)
    return serve_trials({"keras": variant})


def fresh_main(cfg: Config, variant: str, epochs: int) -> int:
    """Child: a fresh model, its first epoch timed (compile included), ``epochs - 1`` more
    epochs, then the peak RSS. Imports only what the variant needs."""
    x, y = make_data(cfg)
    if variant == "keras":
        model = keras_model(cfg)
        train = lambda n: keras_fit(model, cfg, x, y, n)
    elif variant == "default":
        model = easyfit_model(make_module(cfg), "auto", LR)
        train = lambda n: easyfit_fit(model, cfg.batch, x, y, n)
    else:
        train = (hand_variant if variant == "hand" else limit_variant)(cfg, x, y).run
    before = peak_rss_mib()  # imports, data and model: what the process holds before fit
    settle()
    first, others = timed(lambda: train(1))
    if epochs > 1:
        train(epochs - 1)
    auto_k = [model.trainer.dispatch.steps()] if variant == "default" else []
    reply({"first_s": first, "others": others, "rss_mib": peak_rss_mib(),
           "before_mib": before, "auto_k": auto_k})
    return 0


# report --------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of a model's table: a variant's trials and fresh runs."""

    variant: Variant
    result: Result
    fresh: FreshRun | None
    fresh_rounds: list[FreshRun]


def table(rows: dict[str, Row]) -> str:
    ref = {key: rows[key].variant.rates() for key in ("limit", "hand", "keras") if key in rows}
    hand_rss = rows["hand"].fresh.rss_mib if rows["hand"].fresh else None
    out = ["| variant | steps/s | vs limit | vs hand | vs Keras | first epoch s | "
           "peak RSS MiB | RSS vs hand | note |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows.values():
        r, f = row.result, row.fresh
        ratios = [f"{paired_ratio(row.variant.rates(), ref[key]):.2f}x" if key in ref else "-"
                  for key in ("limit", "hand", "keras")]
        notes = [r.note] + ([f"fresh processes: k={', '.join(map(str, f.auto_k))}"]
                            if f and f.auto_k else [])
        if f and f.others > QUIET:
            notes.append(f"first epoch contended ({f.others:.0%} others)")
        if r.others > QUIET:
            notes.append(f"best trial {r.others:.0%} others")
        out.append(f"| {r.variant.strip()} | {r.steps_per_s:.2f} | {' | '.join(ratios)} | "
                   f"{f'{f.first_s:.2f}' if f else '-'} | {f'{f.rss_mib:.0f}' if f else '-'} | "
                   f"{f'{f.rss_mib / hand_rss:.3f}x' if f and hand_rss else '-'} | "
                   f"{'; '.join(n for n in notes if n)} |")
    return "\n".join(out)


def targets(name: str, rows: dict[str, Row]) -> list[str]:
    """The issue's targets for one model, each met or not, with the figures."""
    lines = []
    say = lambda ok, text: lines.append(f"- {'MET    ' if ok else 'not met'}  {name}: {text}")
    default = rows["default"]
    for key, floor in (("hand", 0.95), ("limit", 0.9)):
        ratio = paired_ratio(default.variant.rates(), rows[key].variant.rates())
        say(ratio >= floor, f"easyfit default >= {floor}x the {key}: {ratio:.2f}x paired "
            f"({default.result.steps_per_s:.2f} vs {rows[key].result.steps_per_s:.2f} steps/s)")
    keras = rows.get("keras")
    if keras and keras.fresh_rounds and default.fresh_rounds:
        ratio = paired_ratio([f.first_s for f in default.fresh_rounds],
                             [f.first_s for f in keras.fresh_rounds])
        say(ratio <= 1.0, f"first epoch easyfit default <= Keras 3: {ratio:.2f}x paired "
            f"(fastest: {default.fresh.first_s:.2f} s vs {keras.fresh.first_s:.2f} s)")
    return lines


# ---------------------------------------------------------------------------------------------
def run_model(cfg: Config, args: argparse.Namespace, argv_common: list[str]) -> dict[str, Row]:
    x, y = make_data(cfg)
    variants = [limit_variant(cfg, x, y), hand_variant(cfg, x, y),
                easyfit_variant(cfg, x, y, "auto")]
    variants += [easyfit_variant(cfg, x, y, k) for k in args.ks]
    print(f"{cfg.label}: {cfg.steps} steps/epoch; warming up {len(variants)} variants",
          flush=True)
    for variant in variants:
        started = time.perf_counter()
        variant.prepare(args.seconds, cfg.epochs)
        print(f"  {variant.name.strip():<46} ready in {time.perf_counter() - started:5.1f} s "
              f"({variant.epochs} epoch(s) a trial) {variant.info()}", flush=True)
    worker = None
    if keras_available() and not args.no_keras:
        print("  starting the Keras worker (warms up and calibrates)", flush=True)
        worker = Worker(child_command(cfg, argv_common, "--child", "keras-worker",
                                      "--seconds", str(args.seconds)),
                        child_env(ROLE_ENV, "keras", keras=True))
        variants.append(WorkerVariant(cfg, "Keras 3 default (steps_per_execution=1)", worker,
                                      "keras", worker.ready["epochs"]["keras"]))
    try:
        run_rounds(variants, args.rounds, args.attempts)
    finally:
        if worker is not None:
            worker.close()

    main = ["default", "hand", "limit"] + (["keras"] if worker else [])
    fresh: dict[str, list[FreshRun]] = {key: [] for key in main}
    rounds: dict[str, list[FreshRun]] = {key: [] for key in main}
    if args.first_repeats:
        print(f"  fresh processes: first epoch + peak RSS over {args.rss_epochs} epochs, "
              f"{args.first_repeats} round(s)", flush=True)
    for _ in range(args.first_repeats):
        for key in main:
            cmd = child_command(cfg, argv_common, "--child", "fresh", "--variant", key,
                                "--rss-epochs", str(args.rss_epochs))
            env = child_env(ROLE_ENV, "keras" if key == "keras" else None, key == "keras")
            for _ in range(args.attempts):  # retried while others used the CPU
                fresh[key].append(fresh_run(cmd, env))
                f = fresh[key][-1]
                print(f"    {key:<8} first epoch {f.first_s:6.2f} s (others {f.others:.0%})  "
                      f"peak RSS {f.rss_mib:5.0f} MiB (before fit {f.before_mib:4.0f})"
                      f"{'  auto chose k=%d' % f.auto_k[0] if f.auto_k else ''}", flush=True)
                if f.others <= QUIET:
                    break
            rounds[key].append(fresh[key][-1])
    rows = {}
    for variant in variants:
        result = variant.result()
        rows[variant.key] = Row(variant, result, best_fresh(fresh.get(variant.key, [])),
                                rounds.get(variant.key, []))
        print(f"  {result.variant.strip():<46} {result.steps_per_s:7.2f} steps/s  "
              f"({result.quiet_trials}/{result.trials} trials quiet) {result.note}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="transformer,resnet",
                        help="comma-separated: transformer, resnet (default both)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds of one timed trial per variant (default 5)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="target length of one trial, in whole epochs (default 4)")
    parser.add_argument("--transformer-batch", type=int, default=32)
    parser.add_argument("--transformer-steps", type=int, default=32,
                        help="batches per epoch (default 32: enough for 'auto' to time its "
                             "first size within the first epoch)")
    parser.add_argument("--resnet-batch", type=int, default=64)
    parser.add_argument("--resnet-steps", type=int, default=16, help="batches per epoch "
                        "(default 16; the limit compiles them unrolled)")
    parser.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",") if v], default=[],
                        help="fixed steps_per_execution values for easyfit diagnostic rows")
    parser.add_argument("--attempts", type=int, default=2,
                        help="runs per trial at most, retrying while other processes use "
                             f"more than {QUIET * 100:.0f}%% of the CPU (default 2)")
    parser.add_argument("--first-repeats", type=int, default=3,
                        help="rounds of fresh processes (first epoch, peak RSS; default 3; "
                             "0 skips them)")
    parser.add_argument("--rss-epochs", type=int, default=2,
                        help="epochs each fresh process trains (default 2)")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras 3 rows")
    parser.add_argument("--no-wait-idle", action="store_true",
                        help="do not wait for other processes to go quiet before each trial")
    parser.add_argument("--child", choices=["keras-worker", "fresh"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_wait_idle(not args.no_wait_idle)
    cfgs = configs(args)
    names = [n for n in args.models.split(",") if n]
    if unknown := set(names) - set(cfgs):
        parser.error(f"--models: unknown {sorted(unknown)}; choose from {sorted(cfgs)}")
    argv_common = ["--transformer-batch", str(args.transformer_batch), "--transformer-steps",
                   str(args.transformer_steps), "--resnet-batch", str(args.resnet_batch),
                   "--resnet-steps", str(args.resnet_steps)] + \
        (["--no-wait-idle"] if args.no_wait_idle else [])
    if args.child:
        cfg = cfgs[names[0]]
        if args.child == "keras-worker":
            return keras_worker_main(cfg, args.seconds)
        return fresh_main(cfg, args.variant, args.rss_epochs)

    started = time.perf_counter()
    print(machine_info(keras_available() and not args.no_keras))
    print(f"command:  python {' '.join(sys.argv)}\n", flush=True)
    results = {name: run_model(cfgs[name], args, argv_common) for name in names}
    for name, rows in results.items():
        print(f"\n### {cfgs[name].label}, {cfgs[name].steps} steps/epoch\n")
        print(table(rows))
    print("\nTargets:")
    for name, rows in results.items():
        print("\n".join(targets(name, rows)))
    print(f"\nsteps/s = best quiet trial (compile excluded); vs limit / hand / Keras = median "
          f"over the {args.rounds} rounds of (this trial / that variant's trial in the same "
          f"round); first epoch = fastest quiet fresh process's fit(epochs=1), compile "
          f"included (the target: median over rounds of easyfit's / Keras's); peak RSS = "
          f"VmHWM of a fresh process after {args.rss_epochs} epochs (largest run). "
          f"Total {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
