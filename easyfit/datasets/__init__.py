"""Small datasets that ship with easyfit's dependencies, as real TFDS datasets (no network)."""

from easyfit.datasets import digits

__all__ = ["digits"]
