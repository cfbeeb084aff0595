"""Notice of preemption: SIGTERM (sent by spot VMs, SLURM and Kubernetes some seconds before
the kill) turned into a flag that ``BackupAndRestore`` reads at the next step boundary."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["PREEMPTION_EXIT_STATUS", "SignalWatch"]

PREEMPTION_EXIT_STATUS = 128 + signal.SIGTERM
"""The exit status of a process ended by SIGTERM, which a preempted ``fit`` exits with."""


class SignalWatch:
    """Records that ``signum`` arrived instead of dying of it, while installed.

    Installed only from the main thread (Python runs signal handlers there); elsewhere it
    records nothing and the signal keeps its usual effect. `restore` puts the previous
    handler (the user's own, or the default) back.

    Examples:
        >>> watch = SignalWatch()
        >>> watch.install(); watch.received
        False
        >>> watch.restore()
    """

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum, self.received = signum, False
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self.received = False
        self._previous = signal.signal(self.signum, self._record)
        self._installed = True

    def _record(self, signum: int, frame: Any) -> None:
        self.received = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous)
            self._installed = False
