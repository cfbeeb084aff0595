"""Process-wide settings: the persistent compilation cache.

JAX compiles each jitted program (easyfit's train, eval and predict steps) the first time it
runs in a process. With a persistent cache, the compiled programs are written to a
directory and read back by later processes that build the same programs, so a second run of
the same script starts training without waiting for XLA.

The cache is off unless asked for: call [`set_cache_dir`][easyfit.config.set_cache_dir], or set
the environment
variable ``EASYFIT_CACHE_DIR`` before ``import easyfit`` (read at import; touches no device).

Examples:
    >>> import easyfit as ef
    >>> ef.config.set_cache_dir("~/.cache/easyfit-xla")   # doctest: +SKIP
    >>> ef.config.cache_dir()                              # doctest: +SKIP
    '/home/me/.cache/easyfit-xla'
"""

from __future__ import annotations

import os

import jax

__all__ = ["ENV_CACHE_DIR", "cache_dir", "set_cache_dir"]

ENV_CACHE_DIR = "EASYFIT_CACHE_DIR"

_THRESHOLDS = ("jax_persistent_cache_min_compile_time_secs",
               "jax_persistent_cache_min_entry_size_bytes")
_saved_thresholds: dict[str, float | int] | None = None  # JAX's values before we changed them


def set_cache_dir(path: str | os.PathLike | None, *, min_compile_time_secs: float = 0.0,
                  min_entry_size_bytes: int = -1) -> None:
    """Turns on JAX's persistent compilation cache in ``path`` (``None`` turns it off).

    Compiled train / eval / predict steps are saved there and reused by any later process
    that compiles the same program (same model, shapes, optimizer, mesh, JAX version and
    device kind): the first epoch of a rerun no longer waits for XLA. Programs compiled
    before the call are not written; every compile after it is. A local path is made
    absolute (``~`` expanded); a URL such as ``gs://bucket/dir`` is passed on as is (it
    needs ``etils[epath]``). The directory is created at the next compile.

    Only share a cache directory with people you trust: whoever can write to it can make
    your process run their code (see JAX's persistent cache guide).

    Args:
        path: the cache directory, or ``None`` to stop using the cache (the thresholds
            below go back to JAX's values).
        min_compile_time_secs: programs that compiled faster than this are not written.
            JAX's default (1 s) skips the small steps of small models; 0 caches them all.
        min_entry_size_bytes: programs smaller than this are not written; -1 caches all
            sizes (and stops JAX from picking a size for the file system).

    Examples:
        >>> ef.config.set_cache_dir("/tmp/xla-cache")  # doctest: +SKIP
        >>> model.fit(x, y, epochs=3)  # run the script again: no compile  # doctest: +SKIP
        >>> ef.config.set_cache_dir(None)  # off again  # doctest: +SKIP
    """
    global _saved_thresholds
    if path is None:
        if _saved_thresholds is not None:
            for name, value in _saved_thresholds.items():
                jax.config.update(name, value)
            _saved_thresholds = None
        _switch_to(None)
        return
    path = os.fspath(path)
    if not path:
        raise ValueError("set_cache_dir needs a directory; pass None to turn the cache off.")
    if min_compile_time_secs < 0:
        raise ValueError(f"min_compile_time_secs must be >= 0; got {min_compile_time_secs}.")
    if "://" not in path:
        path = os.path.abspath(os.path.expanduser(path))
    if _saved_thresholds is None:
        _saved_thresholds = {name: getattr(jax.config, name) for name in _THRESHOLDS}
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
    _switch_to(path)


def cache_dir() -> str | None:
    """The persistent compilation cache directory in use, or ``None`` when there is none.

    Reports JAX's setting, so a directory set through JAX itself
    (``jax.config.update("jax_compilation_cache_dir", ...)``, ``JAX_COMPILATION_CACHE_DIR``)
    shows as well.

    Examples:
        >>> ef.config.cache_dir() is None     # the default               # doctest: +SKIP
        True
    """
    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir or None


def _switch_to(path: str | None) -> None:
    """Points JAX at ``path``. JAX opens its cache once, at the first compile that uses it:
    changing the directory afterwards needs a reset, or entries keep going to the old one."""
    if jax.config.jax_compilation_cache_dir == path:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


def _from_environment() -> None:
    """Applies ``EASYFIT_CACHE_DIR`` (called once, when easyfit is imported)."""
    path = os.environ.get(ENV_CACHE_DIR, "").strip()
    if path:
        set_cache_dir(path)


_from_environment()
