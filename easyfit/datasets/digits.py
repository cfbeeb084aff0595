"""scikit-learn's handwritten digits as a real TFDS dataset, built locally with no network.

``tfds.load("digits", data_dir=...)`` and ``tfds.data_source("digits", data_dir=...)`` find
it once [`prepare`][easyfit.datasets.digits.prepare] has written it (TFRecord for ``tfds.load``,
ArrayRecord for
``tfds.data_source``). 1797 8x8 grey images (values 0-16, uint8) with labels 0-9; splits
``train`` (1437) and ``test`` (360), drawn by a fixed permutation (the rows of scikit-learn's
copy are ordered by writer, so a plain cut would test on unseen writers only).

Examples:
    >>> from easyfit.datasets import digits
    >>> data_dir = digits.prepare("/tmp/tfds")                    # doctest: +SKIP
    >>> import tensorflow_datasets as tfds                         # doctest: +SKIP
    >>> train = tfds.load("digits", split="train", data_dir=data_dir, as_supervised=True)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import io
import os

import numpy as np

from easyfit.data.tf_dataset import import_tensorflow

__all__ = ["TRAIN_ROWS", "data_dir_for", "prepare"]

TRAIN_ROWS = 1437


def _tfds():
    import_tensorflow()  # hides GPUs from TensorFlow before tfds imports it
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError("TFDS datasets need tensorflow-datasets: "
                          "pip install 'easyfit[tfds]'") from None
    return tfds


@functools.lru_cache(maxsize=None)  # TFDS registers a builder name once per process
def _builder_class():
    tfds = _tfds()

    class Digits(tfds.core.GeneratorBasedBuilder):
        """scikit-learn's digits (8x8x1 uint8 images, 10 classes)."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "From sklearn.datasets.load_digits."}

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Handwritten digits from scikit-learn (UCI ML optical digits).",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10)}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            order = np.random.default_rng(0).permutation(1797)
            return {"train": self._generate_examples(order[:TRAIN_ROWS]),
                    "test": self._generate_examples(order[TRAIN_ROWS:])}

        def _generate_examples(self, rows):
            from sklearn.datasets import load_digits
            data = load_digits()
            images = data.images.astype(np.uint8)[rows, :, :, None]
            for index, (image, label) in enumerate(zip(images, data.target[rows])):
                yield index, {"image": image, "label": int(label)}

    return Digits


def prepare(data_dir: str, file_formats: tuple[str, ...] = ("tfrecord", "array_record")) -> str:
    """Builds the ``digits`` dataset into ``data_dir`` (skipped when already there).

    Args:
        data_dir: TFDS data directory.
        file_formats: ``"tfrecord"`` (for ``tfds.load``) and/or ``"array_record"`` (for
            ``tfds.data_source``). Each format gets its own sub-directory.

    Returns:
        ``data_dir``; pass it to ``tfds.load`` / ``tfds.data_source`` as ``data_dir=``
        (add ``/array_record`` for the ArrayRecord copy, see
        [`data_dir_for`][easyfit.datasets.digits.data_dir_for]).
    """
    digits = _builder_class()
    tfds = _tfds()
    tfds.display_progress_bar(False)  # a few thousand rows: bars would only add noise
    try:
        for file_format in file_formats:
            builder = digits(data_dir=data_dir_for(data_dir, file_format),
                             file_format=file_format)
            with contextlib.redirect_stdout(io.StringIO()):  # "Downloading and preparing..."
                builder.download_and_prepare()
    finally:
        tfds.display_progress_bar(True)
    return data_dir


def data_dir_for(data_dir: str, file_format: str) -> str:
    """Where [`prepare`][easyfit.datasets.digits.prepare] writes one file format inside ``data_dir``."""
    return data_dir if file_format == "tfrecord" else os.path.join(data_dir, file_format)
