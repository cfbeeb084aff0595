"""Input: adapters that turn user data into fixed-shape, padded, masked host batches."""

from easyfit.data.dispatch import adapt
from easyfit.data.adapters import ArrayAdapter, DataAdapter, IterableAdapter
from easyfit.data.batch import Batch

__all__ = ["ArrayAdapter", "Batch", "DataAdapter", "IterableAdapter", "adapt"]
