"""The examples in easyfit's docstrings run (those not marked ``# doctest: +SKIP``), so the
API pages show code that works."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import easyfit

MODULES = sorted(info.name for info in pkgutil.walk_packages(easyfit.__path__, "easyfit."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
