"""The GPU suite: device-facing tests, real-model speed, memory estimates and distribution
strategies, in one call, each part in its own process under its own time budget.

Usage (from the repository root; ``benchmarks/gpu/run.sh`` sets the environment)::

    python benchmarks/gpu/suite.py OUT_DIR [--smoke] [--budget SECONDS] [--only PART,...]

Parts, in this order (the headline figures first, the tests last with what time is left):

- ``versions``: python, jax, jaxlib, flax, optax, orbax-checkpoint, numpy, the devices.
- ``speed_transformer``, ``speed_cnn`` (``speed.py``): easyfit ``fit`` against the same
  hand-written jitted step; step times, tokens/s or images/s, MFU.
- ``memory_transformer``, ``memory_cnn`` (``memory_check.py``): ``estimate_memory`` against
  the measured ``peak_bytes_in_use``, a fresh process per model.
- ``distribution`` (``distribution_check.py``): default, DataParallel and FSDP losses.
- ``tests``: the device-facing part of the pytest suite.

A part that fails or runs out of time is recorded (its error text in the JSON) and the next
one runs. This process never imports jax, so the parts each have the device to themselves.
``--smoke``: the same parts at tiny sizes (seconds each on a CPU), and one test file.

Writes into ``OUT_DIR`` (at most 8 files): ``results.json``, ``results.md`` (the tables for
``benchmarks/RESULTS-gpu.md``), ``parts.log`` (every part's output) and ``pytest.log``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from report import markdown

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# Device-facing test files (no tensorflow, grain, optuna or tensorboardX needed): precision,
# accumulation, remat and memory estimates, the parts that differ on a GPU. A test takes ~4 s
# on the H200 (most of it compiling; 2026-12-04), so the rest of the suite (130 tests in six
# files) does not fit one call. Left out: test_distribute.py (its meshes are 8 fake CPU
# devices; part d covers one real one) and the tests that start processes with fake CPU
# devices ("eight_devices", "slow").
TEST_FILES = ["tests/test_precision_accumulation_remat.py", "tests/test_memory.py"]
TEST_SELECT = ["-m", "not slow", "-k", "not eight_devices"]
TESTS_BUDGET = 150  # seconds, at most: the tests run last, with what time is left
SMOKE_TESTS = ["tests/test_precision_accumulation_remat.py::test_unknown_precision_lists_the_names"]

# (part name, worker job, budget in seconds on the GPU)
PARTS = [("versions", "versions", 30),
         ("speed_transformer", "speed:transformer", 150),
         ("speed_cnn", "speed:cnn", 90),
         ("memory_transformer", "memory:transformer", 75),
         ("memory_cnn", "memory:cnn", 50),
         ("distribution", "distribution", 50)]


def run_part(name: str, command: list[str], timeout: float, log, env: dict) -> tuple[int, str]:
    """Runs one part's process, its output both printed and logged; returns
    ``(return code, output tail)``; 124 when it ran out of time (then it is interrupted,
    as by Ctrl-C, so that pytest still prints its summary, and killed 15 s later)."""
    print(f"\n=== {name} (budget {timeout:.0f} s) ===", flush=True)
    log.write(f"\n=== {name} ===\n")
    lines: list[str] = []
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)

    def pump() -> None:
        for line in process.stdout:
            print(line, end="", flush=True)
            log.write(line)
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        code = 124
    reader.join(timeout=5)  # a grandchild may still hold the pipe open
    log.flush()
    return code, "".join(lines[-40:])


def pytest_summary(output: str) -> dict:
    """Counts of pytest's verbose result lines (``tests/x.py::test_y PASSED [ 3%]``), which
    are there even when the run was stopped before its closing line; the failed tests."""
    outcomes = re.findall(r"^\S+::\S+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", output, re.M)
    counts = {word.lower(): outcomes.count(word) for word in sorted(set(outcomes))}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
    return {"counts": counts, "failed_tests": sorted(set(failed))[:30]}


def run_tests(tests: list[str], out_dir: str, timeout: float, env: dict) -> dict:
    """The device-facing tests, their output in ``OUT_DIR/pytest.log``; their counts."""
    pytest_log = os.path.join(out_dir, "pytest.log")
    # some tests count compiles: no persistent cache for them
    env = {k: v for k, v in env.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    start = time.monotonic()
    with open(pytest_log, "w") as log:
        # one process, no xdist: the device image has no pytest-xdist, and the counts are
        # read from the serial verbose lines
        code, _ = run_part("tests", [sys.executable, "-m", "pytest", "-v", "-o", "addopts=",
                                     "-p", "no:cacheprovider", "-rfE", *TEST_SELECT, *tests],
                           timeout, log, env)
    with open(pytest_log) as f:
        output = f.read()
    return {"ok": code == 0, "exit_code": code, "files": tests, "select": " ".join(TEST_SELECT),
            "seconds": round(time.monotonic() - start, 1), **pytest_summary(output)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU, seconds")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds for all parts together (default 330)")
    parser.add_argument("--only", default=None,
                        help="comma-separated parts to run (e.g. speed_cnn,tests); versions "
                             "always run")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    size = "smoke" if args.smoke else "gpu"
    start = time.monotonic()
    left = lambda: args.budget - (time.monotonic() - start)  # noqa: E731
    cache = tempfile.mkdtemp(prefix="easyfit-gpu-suite-xla-")
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           # parts b and c compile the same easyfit step: c reuses b's from this cache
           "JAX_COMPILATION_CACHE_DIR": cache}
    results: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "size": size, "parts": {}}
    python = sys.executable

    with open(os.path.join(args.out_dir, "parts.log"), "w") as log:
        worker = [python, os.path.join(HERE, "worker.py"), size, cache]
        # a process per part on the GPU (versions share the first: one start of the device
        # fewer); one process for all of them in a smoke run (one import)
        chosen = None if args.only is None else {"versions", *args.only.split(",")}
        parts = [part for part in PARTS if chosen is None or part[0] in chosen]
        batches = [parts] if args.smoke else [parts[:2], *([part] for part in parts[2:])]
        for batch in batches:
            names = " + ".join(name for name, _, _ in batch)
            budget = sum(seconds for _, _, seconds in batch)
            batch_start, timeout = time.monotonic(), min(budget, max(left(), 5))
            code, tail = run_part(names, [*worker, *(job for _, job, _ in batch)], timeout,
                                  log, env)
            for name, _, _ in batch:
                try:
                    with open(os.path.join(cache, f"{name}.json")) as f:
                        result = json.load(f)
                except (OSError, ValueError):
                    why = (f"stopped at its time budget ({timeout:.0f} s)" if code == 124
                           else f"exit code {code}")
                    result = {"ok": False, "error": f"{why}, no result; output tail:\n{tail}",
                              "seconds": round(time.monotonic() - batch_start, 1)}
                results["parts"][name] = result
                print(f"--- {name}: {'ok' if result.get('ok') else 'FAILED'} in "
                      f"{result.get('seconds')} s", flush=True)

        tests = SMOKE_TESTS if args.smoke else TEST_FILES
        if chosen is None or "tests" in chosen:
            results["parts"]["tests"] = run_tests(tests, args.out_dir,
                                                  min(TESTS_BUDGET, max(left(), 20)), env)

    shutil.rmtree(cache, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - start, 1)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out_dir, "results.md"), "w") as f:
        f.write(markdown(results))
    print(f"\n=== done in {results['seconds']} s: {args.out_dir}/results.json, results.md ===")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
