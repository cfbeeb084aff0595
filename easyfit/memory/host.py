"""Host memory: hand back to the OS what XLA's compiler freed.

Compiling a train step makes the compiler allocate (and free) tens to hundreds of MiB of
scratch. glibc's allocator keeps freed memory in the process for reuse, so each compile
leaves the process bigger (its RSS) for good: ``fit`` on a small model held 1.1-1.3x the
memory of a hand-written loop, mostly this. After a compile, ``fit`` asks glibc to return
the free pages (``malloc_trim``); nothing is trimmed where no compile ran, and elsewhere than
glibc (macOS, musl) this is a no-op.

Examples:
    >>> compiles = CompileWatch()
    >>> compiles.release_if_compiled()   # after work that may have compiled
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

import jax

__all__ = ["CompileWatch", "release_free_memory"]

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_compiles = 0  # programs compiled in this process (any thread)
_lock = threading.Lock()
_listening = False


def _count(event: str, duration: float, **kwargs: Any) -> None:
    global _compiles
    if event == _BACKEND_COMPILE:
        _compiles += 1


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_trim = _malloc_trim()


def release_free_memory() -> None:
    """Returns the allocator's free memory to the OS (glibc ``malloc_trim``; else nothing)."""
    if _trim is not None:
        _trim(0)


class CompileWatch:
    """Remembers how many programs had been compiled; [`release_if_compiled`][easyfit.memory.host.CompileWatch.release_if_compiled] frees the
    allocator's memory when more have been since."""

    def __init__(self):
        global _listening
        with _lock:
            if not _listening:
                jax.monitoring.register_event_duration_secs_listener(_count)
                _listening = True
        self._seen = _compiles

    def release_if_compiled(self) -> None:
        """Returns the allocator's free memory to the OS if a program was compiled since the
        last call (or since this watch was made); else does nothing."""
        if _compiles != self._seen:
            self._seen = _compiles
            release_free_memory()
