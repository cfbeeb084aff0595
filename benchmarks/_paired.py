"""The paired-rounds method the CPU speed benchmarks share (``fit_overhead.py``,
``real_models.py``).

Each variant (one way to train one model) is warmed up, then timed in trials of whole
epochs. Trials of all variants are interleaved, round after round, each round in its own
seeded random order, and each trial waits for a quiet machine and is retried while other
processes used more than ``QUIET`` of the CPU. A variant's speed is its best quiet trial;
ratios that decide targets are *paired*: the median over rounds of (this variant's trial /
the reference's trial in the same round), since this VM's speed drifts by 10-20% over
minutes. Peers that must live in their own process (Keras, which reads ``KERAS_BACKEND``
at import) run in a :class:`Worker` that times one trial whenever asked, so their trials
interleave too. First epochs and peak memory come from fresh processes (:class:`FreshRun`).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from _machine import cpu_times, wait_idle

QUIET = 0.10     # a trial is "quiet" if other processes used at most this share of the CPU
MARK = "@@bench "  # prefix of the result lines children print on stdout
_settings = {"wait_idle": True}


def set_wait_idle(on: bool) -> None:
    """Whether trials wait for the machine to go quiet first (``--no-wait-idle`` turns it
    off)."""
    _settings["wait_idle"] = on


def settle() -> None:
    """Waits for a quiet machine, unless turned off."""
    if _settings["wait_idle"]:
        wait_idle()


def timed(run: Callable[[], None]) -> tuple[float, float]:
    """Wall time (s) of ``run()`` (which ends synchronised) and the share of the machine's
    CPU that *other* processes used meanwhile (0.0 = we had the machine to ourselves)."""
    if not os.path.exists("/proc/stat"):
        start = time.perf_counter()
        run()
        return time.perf_counter() - start, 0.0
    busy0, total0 = cpu_times()
    own0 = sum(os.times()[:2])
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    busy1, total1 = cpu_times()
    own = (sum(os.times()[:2]) - own0) * os.sysconf("SC_CLK_TCK")
    others = max(0.0, (busy1 - busy0 - own) / max(total1 - total0, 1))
    return seconds, others


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (MiB).

    Linux: ``VmHWM`` of ``/proc/self/status``. Not ``ru_maxrss``: Linux carries that over
    ``fork`` + ``exec``, so a child started by a big parent reports the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes / KiB


class Setting(Protocol):
    """What a variant trains on: a name for tables and the batches of one epoch."""

    label: str
    steps: int


@dataclass
class Result:
    config: str
    variant: str
    steps_per_s: float
    others: float = 0.0  # other processes' CPU share during the best trial
    note: str = ""
    quiet_trials: int = 0
    trials: int = 0
    median_steps_per_s: float = 0.0  # over the trials the best was chosen from
    key: str = ""
    paired_vs_limit: float = 0.0  # median over rounds of (this / the limit), same round


@dataclass
class Variant:
    """One thing to time: ``run(n)`` trains ``n`` epochs and returns when the device is done."""

    config: Setting
    name: str
    run: Callable[[int], None]
    check: Callable[[], str] = lambda: ""   # after timing: "" or a problem to report
    info: Callable[[], str] = lambda: ""    # after timing: a remark for the note column
    key: str = ""                           # for the main table: "default", "hand", ...
    epochs: int = 1                         # per timed trial (calibrated)
    trials: list[tuple[float, float]] = field(default_factory=list)  # (s, others' CPU share)
    rounds: list[float] = field(default_factory=list)  # seconds of each round's kept trial

    def prepare(self, target_s: float, max_epochs: int) -> None:
        """Warm-up epoch (compiles), then picks the epochs per trial for ~``target_s``.

        Timed twice: a ``fit`` call's fixed cost (its setup, filling and draining the
        pipeline) makes one epoch look slower than an epoch within a longer trial, and
        trials sized from it alone came out at a quarter of ``target_s``.
        """
        self.run(1)
        epochs = 1
        for _ in range(2):
            seconds, _ = timed(lambda: self.run(epochs))
            epochs = int(min(max_epochs, max(1, round(epochs * target_s / seconds))))
        self.epochs = epochs
        self.trials, self.rounds = [], []

    def measure(self) -> tuple[float, float]:
        return timed(lambda: self.run(self.epochs))

    def trial(self, attempts: int = 1) -> None:
        """One timed trial; retried (up to ``attempts`` runs) while others used the CPU."""
        for _ in range(attempts):
            settle()
            self.trials.append(self.measure())
            if self.trials[-1][1] <= QUIET:
                break
        self.rounds.append(self.trials[-1][0])

    def rates(self) -> list[float]:
        """Epochs per second of each round's kept trial."""
        return [self.epochs / t for t in self.rounds]

    def result(self) -> Result:
        # Contention only ever slows a run down: the fastest quiet trial is the measurement.
        quiet = [t for t in self.trials if t[1] <= QUIET]
        seconds, others = min(quiet or self.trials)
        note = "; ".join(n for n in (self.check(), self.info()) if n)
        if not quiet:
            note = (note + "; " if note else "") + "no quiet trial: contended"
        median = statistics.median(t for t, _ in (quiet or self.trials))
        steps = self.epochs * self.config.steps
        return Result(self.config.label, self.name, steps / seconds, others, note,
                      len(quiet), len(self.trials), steps / median, self.key)


def run_rounds(variants: list[Variant], rounds: int, attempts: int) -> None:
    """``rounds`` rounds of one trial per variant, each round in its own seeded random
    order: in a fixed order, a variant ran slower than the same program elsewhere in the
    list, so which comes first is not left to the order of the list."""
    for i in range(rounds):
        for variant in random.Random(i).sample(variants, len(variants)):
            variant.trial(attempts=attempts)
        print(f"  trial round {i + 1}/{rounds} done", flush=True)


def paired_ratio(rates: list[float], reference: list[float]) -> float:
    """The median over rounds of ``rates[i] / reference[i]``: two variants compared in the
    same round, so that a slow spell of the machine hits both sides of each ratio alike."""
    return statistics.median(a / b for a, b in zip(rates, reference))


# ---------------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------------
def child_env(role_env: str, role: str | None, keras: bool) -> dict[str, str]:
    """The environment of a child process: ``role_env=role`` (removed if ``None``), and
    ``KERAS_BACKEND=jax`` for Keras children."""
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if keras:
        env["KERAS_BACKEND"] = "jax"
    if role is None:
        env.pop(role_env, None)
    else:
        env[role_env] = role
    return env


def reply(payload: dict) -> None:
    """A child's answer to its parent: one marked JSON line on stdout."""
    print(MARK + json.dumps(payload), flush=True)


def read_reply(lines: Any) -> dict | None:
    """The first marked JSON line of ``lines`` (``None`` if there is none)."""
    for line in lines:
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return None


class Worker:
    """A subprocess that prepares its variants, replies once (with what it calibrated), then
    times one trial per request: its trials interleave with the parent's."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, env=env)
        self.ready = self._read()

    def _read(self) -> dict:
        answer = read_reply(self.proc.stdout)
        if answer is None:
            self._log.seek(0)
            raise RuntimeError("a worker ended early:\n" + self._log.read()[-3000:])
        return answer

    def request(self, payload: dict) -> dict:
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request({"op": "quit"})
            except Exception:  # noqa: BLE001 -- it is going away anyway
                pass
            self.proc.wait(timeout=30)
        self._log.close()


class WorkerVariant(Variant):
    """A variant living in a :class:`Worker` under ``key``; ``measure`` asks for a trial."""

    def __init__(self, config: Setting, name: str, worker: Worker, key: str, epochs: int):
        super().__init__(config, name, run=None, key=key)
        self.worker, self.epochs = worker, epochs

    def prepare(self, target_s: float, max_epochs: int) -> None:
        self.trials, self.rounds = [], []  # the worker warmed up and calibrated at its start

    def measure(self) -> tuple[float, float]:
        answer = self.worker.request({"op": "trial", "key": self.key})
        return answer["seconds"], answer["others"]


def serve_trials(variants: dict[str, Variant]) -> int:
    """A worker's main loop: replies with the epochs each variant calibrated, then one trial
    per request read from stdin, until asked to quit."""
    reply({"epochs": {key: v.epochs for key, v in variants.items()}})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            reply({})
            return 0
        seconds, others = variants[request["key"]].measure()
        reply({"seconds": seconds, "others": others})
    return 0


@dataclass
class FreshRun:
    """What one fresh process measured."""

    first_s: float
    others: float
    rss_mib: float
    before_mib: float = 0.0  # peak RSS once imports, data and model are ready (before fit)
    auto_k: list[int] = field(default_factory=list)  # what "auto" chose (easyfit default)


def fresh_run(cmd: list[str], env: dict[str, str], timeout: float = 900) -> FreshRun:
    """Runs a fresh child process to its end; returns what it replied."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    answer = read_reply(done.stdout.splitlines())
    if answer is None:
        raise RuntimeError(f"fresh run {cmd[2:]} failed (rc {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return FreshRun(**answer)


def best_fresh(runs: list[FreshRun]) -> FreshRun | None:
    """The fastest quiet first epoch and the largest peak RSS of ``runs``."""
    if not runs:
        return None
    quiet = [f for f in runs if f.others <= QUIET]
    quick = min(quiet or runs, key=lambda f: f.first_s)
    return FreshRun(quick.first_s, quick.others, max(f.rss_mib for f in runs),
                    max(f.before_mib for f in runs), sorted({k for f in runs for k in f.auto_k}))


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def easyfit_model(module: Any, k: int | str, lr: float) -> Any:
    """``ef.Model(module)`` compiled as the benchmarks time it: AdamW (lr, no weight decay),
    sparse cross-entropy on logits, ``steps_per_execution=k``."""
    import easyfit as ef

    model = ef.Model(module)
    model.compile(optimizer=ef.optimizers.adamw(lr, weight_decay=0.0),
                  loss="sparse_categorical_crossentropy", steps_per_execution=k)
    return model


def easyfit_fit(model: Any, batch_size: int, x: Any, y: Any, epochs: int) -> None:
    """``fit`` with default arguments but the batch size and the epochs (and no output)."""
    import jax

    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    jax.block_until_ready(model.trainer.state)


def git_state(module: Any) -> str:
    """The commit the imported package comes from, and whether its files differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
    try:
        git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True,
                                        text=True, timeout=10, check=True).stdout.strip()
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", os.path.basename(module.__path__[0]))
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    changed = len(dirty.splitlines())
    return f"git {head}" + (f", {changed} file(s) modified" if changed else ", clean")


def machine_info(keras: bool) -> str:
    """Date, Python, jax, devices, CPUs, easyfit (and its commit), flax, optax, Keras."""
    import flax
    import jax
    import optax

    import easyfit as ef

    lines = [
        f"date:     {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"python:   {platform.python_version()}  ({platform.platform()})",
        f"jax:      {jax.__version__}  jaxlib backend: {jax.default_backend()}",
        f"devices:  {jax.devices()}",
        f"cpus:     os.cpu_count()={os.cpu_count()}, "
        f"sched_getaffinity={len(os.sched_getaffinity(0))}",
        f"easyfit:  {ef.__version__}  ({os.path.dirname(ef.__file__)}; {git_state(ef)})",
        f"flax:     {flax.__version__}  optax: {optax.__version__}",
    ]
    if keras:
        from importlib.metadata import version
        lines.append(f"keras:    {version('keras')} (backend jax, in subprocesses)")
    else:
        lines.append("keras:    not installed (pip install -e '.[benchmark]'): no Keras rows")
    return "\n".join(lines)
