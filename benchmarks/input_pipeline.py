"""Does ``fit`` overlap a slow input pipeline with the training step?

easyfit's prefetcher (``easyfit/data/prefetch.py``) reads and places the next chunk on the
devices from a background thread while the current chunk trains. With a host pipeline that
costs ``H`` seconds an epoch and a step that costs ``D`` seconds an epoch, a fully overlapped
epoch takes about ``max(H, D)``; a serial one takes ``H + D``.

Setup: an MLP (784-W-W-10, W = ``--hidden``, AdamW, sparse softmax cross-entropy) on
synthetic float32 rows, ``--steps`` batches of ``--batch`` rows per epoch. The tf.data
pipeline is ``from_tensor_slices((x, y)).batch(B).map(slow)``, where ``slow`` is a
``tf.py_function`` doing ``--host-ms`` of work per batch (``auto``: the measured device time
per step minus the bare pipeline's own cost per batch, so that host ~ device). There is no
``.prefetch`` in the pipeline (``--tf-prefetch N`` adds one) and tf.data's automatic prefetch
injection is turned off (``--tf-autoprefetch`` keeps it), so any overlap comes from easyfit.
Host work kinds (``--cases``):

  sleep    ``time.sleep`` (simulated I/O latency: no CPU, the GIL released) -- the main case
  numpy    a calibrated numpy transform (CPU-bound, numpy mostly releases the GIL)
  python   a calibrated pure-Python loop (CPU-bound AND holding the GIL)

Measured per epoch, each round interleaving all variants (median over ``--repeats`` rounds):

  host      iterating the slow dataset alone (``as_numpy_iterator``), no training
  host-ef   the same through easyfit's adapter and prefetch thread, batches placed on the
            device, no training: the host cost as ``fit`` pays it
  device    ``fit(x, y, batch_size=B)`` on in-memory arrays (no host cost)
  fit       ``fit(slow_ds, epochs=E)``: the number that matters
  no-thread the same with easyfit's prefetch thread off (``depth=0``, patched in here): the
            loop reads the next batch itself, overlapping only through JAX's async dispatch
  fit+wait  ``fit(slow_ds)`` with a callback that waits for every step to finish (as a
            callback reading ``logs`` each batch does): the prefetch thread still overlaps
  serial    prefetch thread off AND that callback: the no-overlap reference, ``host + device``
  others    CPU cores busy with OTHER processes during the fit runs (from /proc/stat minus
            this process's CPU time): timings taken while it is high are unreliable

On this 2-core CPU machine the "device" is the same two cores, so CPU-bound host work
competes with XLA's compute: only the sleep case can reach ``max(H, D)``.

Run:  python benchmarks/input_pipeline.py            (about 6-8 minutes on 2 CPU cores)
      python benchmarks/input_pipeline.py --quick    (smoke run)
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import easyfit as ef  # noqa: E402
import easyfit.loop  # noqa: E402
from easyfit.data import prefetch as prefetch_lib  # noqa: E402
from easyfit.data.dispatch import adapt  # noqa: E402
from easyfit.data.tf_dataset import import_tensorflow  # noqa: E402

tf = import_tensorflow()
WAIT_IDLE = True


# ---------------------------------------------------------------------------------------------
# model and data
# ---------------------------------------------------------------------------------------------
# benchmarks/ is on sys.path when run as a script
from _machine import cpu_times, wait_idle  # noqa: E402
from _models import MLP  # noqa: E402


def make_model(hidden: int) -> ef.Model:
    model = ef.Model(MLP((784, hidden, hidden, 10), nnx.Rngs(0)))
    model.compile("adamw", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def make_data(batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * steps, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch * steps).astype(np.int32)
    return x, y


# ---------------------------------------------------------------------------------------------
# host cost: one tf.py_function per batch
# ---------------------------------------------------------------------------------------------
def _numpy_burn(x: np.ndarray, n: int) -> None:
    a = x
    for _ in range(n):
        a = np.tanh(a * 1.0001)


def _python_burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _calibrate(work: Callable[[int], None], seconds: float) -> int:
    """Iterations of ``work`` that take about ``seconds`` alone (median of 5 timings)."""
    n = 8
    while True:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            work(n)
            times.append(time.perf_counter() - start)
        per = statistics.median(times)
        if per > 2e-3 or n > 1 << 26:
            return max(1, round(n * seconds / per))
        n *= 4


def host_work(kind: str, seconds: float, batch_x: np.ndarray) -> Callable[[], None]:
    """A callable costing about ``seconds`` of host time, of the given kind."""
    if kind == "sleep":
        return lambda: time.sleep(seconds)
    if kind == "numpy":
        n = _calibrate(lambda n: _numpy_burn(batch_x, n), seconds)
        return lambda: _numpy_burn(batch_x, n)
    if kind == "python":
        n = _calibrate(_python_burn, seconds)
        return lambda: _python_burn(n)
    raise ValueError(f"unknown host cost kind {kind!r}")


def slow_dataset(x: np.ndarray, y: np.ndarray, batch: int, work: Callable[[], None],
                 tf_prefetch: int, tf_autoprefetch: bool) -> "tf.data.Dataset":
    """``from_tensor_slices((x, y)).batch(batch).map(slow)``: ``work()`` once per batch.

    tf.data injects a prefetch after a synchronous final ``map`` by default
    (``experimental_optimization.inject_prefetch``), which overlaps the pipeline with its
    consumer by itself. Unless ``tf_autoprefetch``, that is turned off here, so any overlap
    comes from easyfit.
    """

    def py_slow(xb):
        work()
        return xb

    def slow(xb, yb):
        out = tf.py_function(py_slow, [xb], tf.float32)
        out.set_shape(xb.shape)
        return out, yb

    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).map(slow)
    if tf_prefetch:
        ds = ds.prefetch(tf_prefetch)
    if not tf_autoprefetch:
        options = tf.data.Options()
        options.experimental_optimization.inject_prefetch = False
        ds = ds.with_options(options)
    return ds


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def timed(run: Callable[[], None]) -> float:
    if WAIT_IDLE:
        wait_idle(timeout=30.0)
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


class no_prefetch_thread:
    """Context manager: easyfit's fit loop with the prefetch thread off (``depth=0``)."""

    def __enter__(self):
        self.saved = easyfit.loop.prefetch
        easyfit.loop.prefetch = functools.partial(prefetch_lib.prefetch, depth=0)

    def __exit__(self, *exc):
        easyfit.loop.prefetch = self.saved


class WaitEveryStep(ef.callbacks.Callback):
    """Blocks until each train step has finished: no step overlaps the next batch's input."""

    def on_train_batch_end(self, batch, logs=None):
        jax.block_until_ready(self.model.trainer.state.step)


class OthersLoad:
    """Cores used by other processes while a block runs (Linux; 0.0 elsewhere)."""

    def __enter__(self):
        self.ok = os.path.exists("/proc/stat")
        if self.ok:
            self.stat0, self.cpu0, self.t0 = cpu_times(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cores = 0.0
        if self.ok:
            (busy1, total1), (busy0, total0) = cpu_times(), self.stat0
            wall = time.perf_counter() - self.t0
            busy_cores = (busy1 - busy0) / max(total1 - total0, 1) * os.cpu_count()
            mine = (time.process_time() - self.cpu0) / max(wall, 1e-9)
            self.cores = max(0.0, busy_cores - mine)


@dataclass
class Row:
    case: str
    host_ms: float
    times: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.times.setdefault(name, []).append(seconds)

    def med(self, name: str) -> float:
        return statistics.median(self.times[name])


def bench_case(kind: str, host_s: float, args, x, y, model: ef.Model) -> Row:
    batch, epochs = args.batch, args.epochs
    work = host_work(kind, host_s, x[:batch])
    ds = slow_dataset(x, y, batch, work, args.tf_prefetch, args.tf_autoprefetch)
    row = Row(kind, host_s * 1e3)

    def host():
        for _ in range(epochs):
            for _ in ds.as_numpy_iterator():
                pass

    def host_ef():
        place = model.distribution.place_chunk
        for _ in range(epochs):
            data = adapt(ds, batch_size=None, epochs=1)
            for _ in prefetch_lib.prefetch(data.chunks(0, 1), lambda it: (place(it[0]), it[1])):
                pass

    def fit_ds(callbacks=()):
        model.fit(ds, epochs=epochs, verbose=0, callbacks=list(callbacks))

    def no_thread():
        with no_prefetch_thread():
            fit_ds()

    def fit_wait():
        fit_ds([WaitEveryStep()])

    def serial():
        with no_prefetch_thread():
            fit_ds([WaitEveryStep()])

    def device():
        model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)

    def fit_and_load():
        with OthersLoad() as load:
            seconds = timed(fit_ds)
        row.add("others", load.cores)
        return seconds

    fit_ds(), device()  # warm up (compiles once; later fits reuse the step)
    for _ in range(args.repeats):
        row.add("host", timed(host) / epochs)
        row.add("host-ef", timed(host_ef) / epochs)
        row.add("device", timed(device) / epochs)
        row.add("fit", fit_and_load() / epochs)
        row.add("no-thread", timed(no_thread) / epochs)
        row.add("fit+wait", timed(fit_wait) / epochs)
        row.add("serial", timed(serial) / epochs)
    # "auto" compiles one train program per size it tried (one step, and the fused size);
    # the fits whose callback waits on every step run one step per dispatch
    assert model.trainer.steps.train.cache_size() <= len(model.trainer.dispatch.compiled_sizes | {1}), \
        "the train step recompiled"
    return row


def machine_info() -> str:
    import flax
    import optax
    return "\n".join([
        f"date:     {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"python:   {platform.python_version()}  ({platform.platform()})",
        f"jax:      {jax.__version__}  backend: {jax.default_backend()}  devices: {jax.devices()}",
        f"cpus:     os.cpu_count()={os.cpu_count()}, "
        f"sched_getaffinity={len(os.sched_getaffinity(0))}",
        f"flax:     {flax.__version__}  optax: {optax.__version__}  tensorflow: {tf.__version__}",
        f"easyfit:  {ef.__version__}",
    ])


def table(rows: list[Row], steps: int) -> str:
    lines = ["| host work | host ms/batch | host H (s) | host-ef (s) | device D (s) | fit (s) | "
             "fit / max(H, D) | fit / (H + D) | no-thread (s) | fit+wait (s) | serial (s) | "
             "serial / (H + D) | others (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        h, d, f = r.med("host"), r.med("device"), r.med("fit")
        lines.append(f"| {r.case} | {h / steps * 1e3:.1f} | {h:.3f} | {r.med('host-ef'):.3f} | "
                     f"{d:.3f} | {f:.3f} | "
                     f"{f / max(h, d):.2f} | {f / (h + d):.2f} | {r.med('no-thread'):.3f} | "
                     f"{r.med('fit+wait'):.3f} | "
                     f"{r.med('serial'):.3f} | {r.med('serial') / (h + d):.2f} | "
                     f"{r.med('others'):.1f} |")
    return "\n".join(lines)


def rounds(rows: list[Row]) -> str:
    """Every round's per-epoch seconds, to show the spread behind the medians."""
    out = []
    for r in rows:
        for name in ("host", "host-ef", "device", "fit", "no-thread", "fit+wait", "serial",
                     "others"):
            out.append(f"  {r.case:<7} {name:<10} " + " ".join(f"{v:.3f}" for v in r.times[name]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=80, help="batches per epoch")
    parser.add_argument("--hidden", type=int, default=1024, help="MLP hidden width")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed fit")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (the median is kept)")
    parser.add_argument("--host-ms", default="auto",
                        help="host work per batch in ms; 'auto': the measured device ms per "
                             "step minus the pipeline's own ms per batch")
    parser.add_argument("--cases", default="sleep,numpy,python",
                        help="comma-separated host cost kinds: sleep, numpy, python")
    parser.add_argument("--tf-prefetch", type=int, default=0,
                        help="append .prefetch(N) to the tf.data pipeline (0: none)")
    parser.add_argument("--tf-autoprefetch", action="store_true",
                        help="keep tf.data's default injected prefetch (off by default here)")
    parser.add_argument("--depth", type=int, default=None,
                        help="easyfit prefetch depth for the fit runs (default: easyfit's own)")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--no-wait-idle", action="store_true",
                        help="do not wait for other processes to go quiet before each timing")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.epochs = 20, 2, 1
    global WAIT_IDLE
    WAIT_IDLE = not args.no_wait_idle
    if args.depth is not None:  # no_prefetch_thread() still forces depth 0 where it is used
        easyfit.loop.prefetch = functools.partial(prefetch_lib.prefetch, depth=args.depth)

    print(machine_info())
    print(f"command:  python {' '.join(sys.argv)}")
    print(f"setup:    MLP 784-{args.hidden}-{args.hidden}-10, batch {args.batch}, "
          f"{args.steps} batches/epoch, {args.epochs} epochs per timed fit, median of "
          f"{args.repeats} rounds, prefetch depth "
          f"{'default' if args.depth is None else args.depth}, "
          f"tf.data .prefetch({args.tf_prefetch}), tf.data "
          f"inject_prefetch={'on' if args.tf_autoprefetch else 'off'}\n", flush=True)

    x, y = make_data(args.batch, args.steps)
    model = make_model(args.hidden)
    if args.host_ms == "auto":
        # host work per batch = device time per step minus the pipeline's own cost per batch
        model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0)  # compile
        probe = [timed(lambda: model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False,
                                         verbose=0)) for _ in range(3)]
        device_s = statistics.median(probe) / args.steps
        bare = slow_dataset(x, y, args.batch, lambda: None, 0, args.tf_autoprefetch)
        base_s = statistics.median(timed(lambda: [_ for _ in bare.as_numpy_iterator()])
                                   for _ in range(3)) / args.steps
        host_s = max(device_s - base_s, 0.0)
        print(f"calibration: device {device_s * 1e3:.2f} ms/step, pipeline with no work "
              f"{base_s * 1e3:.2f} ms/batch -> host work {host_s * 1e3:.2f} ms/batch\n")
    else:
        host_s = float(args.host_ms) / 1e3

    rows = []
    for kind in args.cases.split(","):
        rows.append(bench_case(kind.strip(), host_s, args, x, y, model))
        r = rows[-1]
        print(f"{kind:<7} host {r.med('host'):.3f}s  host-ef {r.med('host-ef'):.3f}s  "
              f"device {r.med('device'):.3f}s  "
              f"fit {r.med('fit'):.3f}s  no-thread {r.med('no-thread'):.3f}s  "
              f"fit+wait {r.med('fit+wait'):.3f}s  "
              f"serial {r.med('serial'):.3f}s  (per epoch)", flush=True)
    print("\nper round (s per epoch):")
    print(rounds(rows))
    print()
    print(table(rows, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
