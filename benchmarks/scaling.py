"""Data parallel vs FSDP on 1, 2, 4 and 8 devices: steps/s, memory per device, and agreement.

A small Flax NNX transformer encoder classifier (token + position embedding, 2 pre-LayerNorm
blocks of ``nnx.MultiHeadAttention`` and a gelu MLP, mean-pool, linear head; d_model 256,
4 heads, MLP 1024, vocabulary 1000, sequence length 64, 10 classes: about 1.9 M parameters)
is trained with AdamW (lr 1e-3) on synthetic integer tokens and labels, global batch 64,
``shuffle=False``, through ``ef.Model(factory, distribution=...)`` with the factory form, so
parameters are created already sharded. For every device count ``n`` (``devices=
jax.devices()[:n]``) and every strategy (``DataParallel``, ``FSDP``) this prints:

  steps/s       training steps per second over the timed epochs (one warm-up epoch, which
                compiles, is not timed). Meaningful on real accelerators only: fake CPU
                devices share the host's cores.
  params+opt    bytes of parameters plus optimizer state held by one device (the largest
                over the mesh), summed from the live arrays' addressable shards after fit.
  arg / out / alias / temp / need
                the compiled train step's ``memory_analysis()`` (per device for an SPMD
                program): argument, output, aliased (donated state reused for the output)
                and temporary bytes; need = argument + output - alias + temp. (XLA's
                ``peak_memory_in_bytes`` is printed per run too; on the CPU backend it counts
                the arguments only, not the temporaries.)
  loss          the last epoch's training loss, and |loss - loss(DP, 1 device)|.
  max |dw|      the largest absolute difference of any trained weight from DP on 1 device;
                "w/o key bias" leaves out the attention key biases, whose gradient is zero in
                exact arithmetic (softmax ignores a per-query constant), so AdamW turns
                rounding noise there into full-size (+-lr) steps that differ between layouts.
  check         the train step compiled once across all fit calls
                (``model.trainer.steps.train.cache_size() == 1``), and every state leaf after fit
                carries the sharding easyfit chose for it (``model.trainer.shardings``).

On fake CPU devices only the memory and the agreement columns mean anything; on a GPU
machine the steps/s column is the scaling figure.

Run:  python benchmarks/scaling.py                  (full, ~70 s on 2 CPU cores)
      python benchmarks/scaling.py --quick          (smaller model, fewer steps)
      python benchmarks/scaling.py --fake-cpu-devices 0   (no fake devices: use what is there)

``--fake-cpu-devices N`` (default 8) adds ``--xla_force_host_platform_device_count=N`` to
``XLA_FLAGS`` before jax is imported, so the CPU backend shows N devices. It only affects the
CPU platform: on a machine with GPUs, ``jax.devices()`` are still the GPUs.
"""

from __future__ import annotations

import argparse
import os
import sys


def _fake_cpu_devices(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--fake-cpu-devices", type=int, default=8)
    return parser.parse_known_args(argv)[0].fake_cpu_devices


# Must happen before jax is imported (by this module or by easyfit).
if __name__ == "__main__" and "jax" not in sys.modules:
    _FAKE = _fake_cpu_devices(sys.argv[1:])
    if _FAKE > 0 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={_FAKE}").strip()

import datetime  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import easyfit as ef  # noqa: E402

LR = 1e-3


# ---------------------------------------------------------------------------------------------
# model and data
# ---------------------------------------------------------------------------------------------
@dataclass
class Config:
    d_model: int = 256
    heads: int = 4
    mlp: int = 1024
    vocab: int = 1000
    seq: int = 64
    blocks: int = 2
    classes: int = 10
    batch: int = 64           # global batch: must divide by every device count
    steps: int = 8            # batches per epoch
    epochs: int = 2           # timed epochs (after one warm-up epoch)
    steps_per_execution: int = 4

    def describe(self) -> str:
        return (f"d_model={self.d_model}, heads={self.heads}, mlp={self.mlp}, "
                f"vocab={self.vocab}, seq={self.seq}, blocks={self.blocks}, "
                f"classes={self.classes}; global batch {self.batch}, {self.steps} steps/epoch, "
                f"1 warm-up + {self.epochs} timed epoch(s), "
                f"steps_per_execution={self.steps_per_execution}")


class Block(nnx.Module):
    """Pre-LayerNorm encoder block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(cfg.heads, cfg.d_model, decode=False,
                                           keep_rngs=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.up = nnx.Linear(cfg.d_model, cfg.mlp, rngs=rngs)
        self.down = nnx.Linear(cfg.mlp, cfg.d_model, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
    """Token + learned position embedding, blocks, final LayerNorm, mean-pool, linear head."""

    def __init__(self, cfg: Config, rngs: nnx.Rngs):
        self.embed = nnx.Embed(cfg.vocab, cfg.d_model, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.seq, cfg.d_model)))
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.blocks)])
        self.ln = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, cfg.classes, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x).mean(axis=1))


def make_data(cfg: Config, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = cfg.batch * cfg.steps
    x = rng.integers(0, cfg.vocab, size=(rows, cfg.seq)).astype(np.int32)
    y = rng.integers(0, cfg.classes, size=rows).astype(np.int32)
    return x, y


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    strategy: str
    n: int
    steps_per_s: float
    compile_s: float           # the warm-up epoch (compile + one epoch)
    state_bytes: int           # params + opt state on the fullest device
    param_bytes: int
    opt_bytes: int
    memory: dict[str, int]     # memory_analysis fields (per device), or {} if unavailable
    memory_error: str
    loss: float
    weights: dict[str, np.ndarray]  # trained parameters by path
    problems: list[str]

    @property
    def peak(self) -> int | None:
        """argument + output - alias + temp: what the step needs on one device at most."""
        m = self.memory
        if not m:
            return None
        return m["argument"] + m["output"] - m["alias"] + m["temp"]


def per_device_bytes(tree) -> int:
    """Bytes of ``tree``'s arrays held by the fullest device (each shard counted where it lives)."""
    used: dict = {}
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            for shard in leaf.addressable_shards:
                used[shard.device] = used.get(shard.device, 0) + shard.data.nbytes
    return max(used.values(), default=0)


def trained_weights(model: "ef.Model") -> dict[str, np.ndarray]:
    params = nnx.state(model.module, nnx.Param)
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def weight_diff(r: Result, ref: Result, skip: str | None = None) -> float:
    return max(float(np.max(np.abs(r.weights[k] - ref.weights[k]))) for k in ref.weights
               if skip is None or skip not in k)


def compiled_memory(model: "ef.Model", x: np.ndarray, y: np.ndarray, cfg: Config) -> dict[str, int]:
    """The train step's ``memory_analysis()``, lowered for the live state and one real chunk.

    Uses easyfit internals (``_steps.train``, ``_state``, ``_distribution.place_chunk``,
    ``data.adapters.ArrayAdapter``), as ``easyfit.loop`` builds chunks.
    """
    from easyfit.data.adapters import ArrayAdapter

    adapter = ArrayAdapter(x, y, batch_size=cfg.batch)
    chunk, _ = next(adapter.chunks(0, cfg.steps_per_execution))
    chunk = model.distribution.place_chunk(chunk)
    stats = model.trainer.steps.train.lower(model.trainer.state, chunk).compile().memory_analysis()
    if stats is None:
        raise RuntimeError("memory_analysis() returned None on this backend")
    return {"argument": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
            "alias": stats.alias_size_in_bytes, "temp": stats.temp_size_in_bytes,
            "code": stats.generated_code_size_in_bytes,
            "xla_peak": int(getattr(stats, "peak_memory_in_bytes", 0) or 0)}


def sharding_problems(model: "ef.Model") -> list[str]:
    """Leaves of the state whose sharding is not the one easyfit chose for them."""
    problems = []
    state = model.trainer.state
    for part in ("params", "opt_state", "rest", "step", "totals"):
        values, expected = getattr(state, part), getattr(model.trainer.shardings, part)
        leaves = jax.tree_util.tree_flatten_with_path(values)[0]
        if isinstance(expected, jax.sharding.Sharding):
            wanted = [expected] * len(leaves)
        else:
            wanted = jax.tree.leaves(expected, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
        if len(wanted) != len(leaves):
            problems.append(f"{part}: {len(leaves)} arrays but {len(wanted)} shardings")
            continue
        for (path, leaf), sharding in zip(leaves, wanted):
            if isinstance(leaf, jax.Array) and not leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
                problems.append(f"{part}{jax.tree_util.keystr(path)}: sharding {leaf.sharding} "
                                f"!= expected {sharding}")
    return problems


def run(strategy: str, n: int, cfg: Config, x: np.ndarray, y: np.ndarray,
        min_size: int) -> Result:
    devices = jax.devices()[:n]
    if strategy == "DP":
        dist = ef.distribute.DataParallel(devices=devices)
    else:
        dist = ef.distribute.FSDP(min_size=min_size, devices=devices)
    model = ef.Model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), distribution=dist)
    model.compile(optimizer=ef.optimizers.adamw(LR), loss="sparse_categorical_crossentropy",
                  steps_per_execution=cfg.steps_per_execution)
    fit = lambda epochs: model.fit(x, y, batch_size=cfg.batch, epochs=epochs, shuffle=False,
                                   verbose=0)

    start = time.perf_counter()
    fit(1)  # compiles
    jax.block_until_ready(model.trainer.state)
    compile_s = time.perf_counter() - start

    start = time.perf_counter()
    history = fit(cfg.epochs)
    jax.block_until_ready(model.trainer.state)
    seconds = time.perf_counter() - start

    problems = []
    cache = model.trainer.steps.train.cache_size()
    if cache != 1:
        problems.append(f"train step compiled {cache}x over 2 fit calls (expected 1)")
    problems += sharding_problems(model)
    params, opt = model.trainer.state.params, model.trainer.state.opt_state
    param_bytes, opt_bytes = per_device_bytes(params), per_device_bytes(opt)
    memory, memory_error = {}, ""
    try:
        memory = compiled_memory(model, x, y, cfg)
    except Exception as error:  # report, keep going
        memory_error = f"{type(error).__name__}: {error}"
    if model.trainer.steps.train.cache_size() != cache:
        # lowering for the live state must hit the same signature as fit's calls
        problems.append(f"lowering for memory_analysis made a new cache entry "
                        f"({model.trainer.steps.train.cache_size()} != {cache})")
    return Result(strategy, n, cfg.steps * cfg.epochs / seconds, compile_s,
                  per_device_bytes((params, opt)), param_bytes, opt_bytes, memory, memory_error,
                  float(history.history["loss"][-1]), trained_weights(model), problems)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.2f}"


def table(results: list[Result]) -> str:
    ref = results[0]
    header = ("| strategy | devices | steps/s | params+opt MiB/dev | vs DP@1 | arg MiB | out MiB "
              "| alias MiB | temp MiB | need MiB | final loss | \\|Δloss\\| vs DP@1 "
              "| max \\|Δw\\| | w/o key bias | check |")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    rows = [header, rule]
    for r in results:
        m = r.memory
        dw, dw_other = weight_diff(r, ref), weight_diff(r, ref, skip="['key']['bias']")
        check = "ok" if not r.problems and not r.memory_error else "PROBLEM (see below)"
        rows.append(
            f"| {r.strategy} | {r.n} | {r.steps_per_s:.2f} | {mib(r.state_bytes)} | "
            f"{r.state_bytes / ref.state_bytes:.3f} | {mib(m.get('argument'))} | "
            f"{mib(m.get('output'))} | {mib(m.get('alias'))} | {mib(m.get('temp'))} | "
            f"{mib(r.peak)} | {r.loss:.6f} | {abs(r.loss - ref.loss):.2e} | {dw:.2e} | {dw_other:.2e} | {check} |")
    return "\n".join(rows)


def machine_info() -> str:
    import flax
    lines = [
        f"date:     {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"python:   {platform.python_version()}  ({platform.platform()})",
        f"jax:      {jax.__version__}  flax: {flax.__version__}  optax: {optax.__version__}  "
        f"easyfit: {ef.__version__}",
        f"backend:  {jax.default_backend()}; {len(jax.devices())} devices: "
        f"{jax.devices()[0].device_kind} x{len(jax.devices())}",
        f"cpus:     os.cpu_count()={os.cpu_count()}, "
        f"sched_getaffinity={len(os.sched_getaffinity(0))}",
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller model (d_model 128, MLP 512, seq 32) and fewer steps")
    parser.add_argument("--fake-cpu-devices", type=int, default=8,
                        help="CPU devices to fake via XLA_FLAGS before jax is imported "
                             "(default 8; 0 = none). No effect on GPU/TPU devices.")
    parser.add_argument("--devices", default="1,2,4,8",
                        help="device counts to try (default 1,2,4,8; counts above "
                             "len(jax.devices()) are skipped)")
    parser.add_argument("--min-size", type=int, default=1024,
                        help="FSDP(min_size=...): smaller parameters stay replicated "
                             "(default 1024, easyfit's default)")
    parser.add_argument("--steps", type=int, default=None, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs")
    parser.add_argument("--steps-per-execution", type=int, default=None)
    args = parser.parse_args(argv)

    cfg = Config(d_model=128, mlp=512, seq=32, steps=4) if args.quick else Config()
    if args.steps:
        cfg.steps = args.steps
    if args.epochs:
        cfg.epochs = args.epochs
    if args.steps_per_execution:
        cfg.steps_per_execution = args.steps_per_execution

    print(machine_info())
    print(f"command:  python {' '.join(sys.argv)}")
    print(f"model:    {cfg.describe()}")
    counts = [int(c) for c in args.devices.split(",")]
    skipped = [c for c in counts if c > len(jax.devices())]
    counts = [c for c in counts if c <= len(jax.devices())]
    if skipped:
        print(f"skipped:  device counts {skipped} (only {len(jax.devices())} devices)")
    n_params = sum(a.size for a in jax.tree.leaves(
        nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)))
    print(f"params:   {n_params:,} ({n_params * 4 / 2**20:.2f} MiB float32; AdamW keeps 2 more "
          f"copies)\n", flush=True)

    x, y = make_data(cfg)
    results: list[Result] = []
    for n in counts:
        for strategy in ("DP", "FSDP"):
            r = run(strategy, n, cfg, x, y, args.min_size)
            results.append(r)
            m = r.memory
            print(f"  {strategy:<4} n={n}: {r.steps_per_s:6.2f} steps/s (warm-up {r.compile_s:5.1f} s)"
                  f"  params {mib(r.param_bytes)} + opt {mib(r.opt_bytes)} MiB/dev"
                  f"  memory_analysis: " +
                  (", ".join(f"{k}={mib(v)}" for k, v in m.items() if k != "code") + " MiB"
                   if m else f"unavailable ({r.memory_error})") +
                  f"  loss {r.loss:.6f}", flush=True)
            for p in r.problems:
                print(f"      PROBLEM: {p}", flush=True)

    print()
    print(table(results))
    problems = [f"{r.strategy} n={r.n}: {p}" for r in results
                for p in r.problems + ([r.memory_error] if r.memory_error else [])]
    ref = results[0]
    worst_loss = max(abs(r.loss - ref.loss) for r in results)
    print(f"\nmax |loss - loss(DP, 1 device)| over all configurations: {worst_loss:.3e}")
    if problems:
        print("PROBLEMS:")
        for p in problems:
            print(f"  - {p}")
    else:
        print("checks:   every train step compiled once across its fit calls; every state leaf "
              "has the sharding easyfit chose (model.trainer.shardings)")
    print("params+opt = bytes of parameters + optimizer state on the fullest device (live arrays); "
          "arg/out/alias/temp = compiled train step memory_analysis(), per device; "
          "need = arg + out - alias + temp; Δw = trained weights vs DP on 1 device "
          "('w/o key bias': attention key biases left out, their true gradient is 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
