"""What every error test in this folder asserts: the exception type, a short message in the
user's terms that names what is wrong and the fix, nothing of JAX's internals in the
headline, and no file created or changed by the failed call."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Iterator

import pytest

# Types and words of JAX / XLA internals that must not lead a user-facing message.
INTERNALS = re.compile(r"Traceback|TracerArrayConversionError|ConcretizationTypeError|"
                       r"XlaRuntimeError|dot_general|jaxlib|UnexpectedTracerError|"
                       r"ShapedArray|DynamicJaxprTracer|Traced<")
MAX_HEADLINE = 600  # characters of the first paragraph (a "details" line may follow)


def snapshot(root: str | os.PathLike) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes."""
    files = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@contextlib.contextmanager
def clear_error(error: type[BaseException] | tuple, *must_name: str,
                untouched: str | os.PathLike | None = None) -> Iterator[pytest.ExceptionInfo]:
    """``with clear_error(ValueError, "batch_size", "0"): model.fit(...)``.

    Asserts the type, that the message contains each of ``must_name`` (case-insensitive
    substrings or regular expressions), that its headline (up to the first blank line) is
    short and free of JAX internals, and that nothing under ``untouched`` changed.
    """
    before = None if untouched is None else snapshot(untouched)
    with pytest.raises(error) as info:
        yield info
    message = str(info.value)
    headline = message.split("\n\n")[0]
    for name in must_name:
        assert re.search(name, message, re.IGNORECASE | re.DOTALL), (name, message)
    assert len(headline) <= MAX_HEADLINE, f"headline too long ({len(headline)}): {headline}"
    assert not INTERNALS.search(headline), f"JAX internals in the headline: {headline}"
    assert type(info.value).__module__.split(".")[0] not in ("jax", "jaxlib"), type(info.value)
    if untouched is not None:
        assert snapshot(untouched) == before, "the failed call changed files"
