"""What the machine's other processes are doing: the benchmarks' guard against a busy CPU.

On a 2-core machine another process (a test run, say) distorts timings badly, so the
benchmarks wait for a quiet machine before a trial and report others' CPU use during it.
Linux only (``/proc/stat``); elsewhere nothing waits and others count as 0.
"""

from __future__ import annotations

import os
import time


def cpu_times() -> tuple[int, int]:
    """``(busy, total)`` CPU time of the whole machine so far, in clock ticks."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_idle(max_busy: float = 0.15, window: float = 0.5, timeout: float = 2.0) -> float:
    """Waits until the machine is quiet (CPU use < ``max_busy`` over ``window`` s); returns
    the busy fraction last seen. Gives up after ``timeout`` seconds."""
    if not os.path.exists("/proc/stat"):
        return 0.0
    deadline = time.monotonic() + timeout
    while True:
        busy0, total0 = cpu_times()
        time.sleep(window)
        busy1, total1 = cpu_times()
        busy = (busy1 - busy0) / max(total1 - total0, 1)
        if busy < max_busy or time.monotonic() > deadline:
            return busy
