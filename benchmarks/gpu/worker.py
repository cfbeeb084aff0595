"""Runs parts of the GPU suite in this process, one after another.

Usage: ``python benchmarks/gpu/worker.py SIZE OUT_DIR PART:MODEL [PART:MODEL ...]``, SIZE
``gpu`` or ``smoke``; each part writes ``OUT_DIR/PART_MODEL.json`` (its figures, or its
error's text). ``suite.py`` starts a worker per part on the GPU (fresh processes: memory
peaks and compiles don't mix) and one worker for all parts in ``--smoke`` (one import).
"""

from __future__ import annotations

import os
import sys

import distribution_check
import memory_check
import speed
from common import run_part, versions

PARTS = {"versions": versions, "speed": speed.run, "memory": memory_check.run,
         "distribution": distribution_check.run}


def job_name(part: str, model: str) -> str:
    return part if part in ("versions", "distribution") else f"{part}_{model}"


if __name__ == "__main__":
    size, out_dir, *jobs = sys.argv[1:]
    for job in jobs:
        part, _, model = job.partition(":")
        name = job_name(part, model)
        print(f"\n=== {name} ===", flush=True)
        run_part(PARTS[part], model, size, os.path.join(out_dir, f"{name}.json"))
