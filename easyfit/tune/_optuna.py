"""The lazy import of optuna, the optional extra behind [`easyfit.tune`][easyfit.tune].

Optuna is imported only when a tuning function runs, never at ``import easyfit``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["INSTALL", "import_optuna"]

INSTALL = "pip install 'easyfit[tune]'"


def import_optuna() -> Any:
    """Imports optuna, or says how to install it."""
    try:
        import optuna
    except ImportError:
        raise ImportError(f"ef.tune needs optuna: {INSTALL}") from None
    return optuna
