"""A residual CNN with BatchNorm and on-device augmentation, on digits upsampled to 32x32.

Run:  pip install -e ".[examples]" && python examples/resnet_digits.py
scikit-learn's 1,797 8x8 digits are resized to 24x24 and centred in a black 32x32 frame (one
channel, NHWC); the last 400 of a seeded shuffle are held out for the test. ``ResNet`` (from
``examples/models.py``) trains through ``ef.Model(...).fit`` with validation; each training
image is shifted by up to 4 pixels inside the jitted train step (``compile(augment=...)``).
The last line printed is the test accuracy (about 0.99). Nothing is downloaded.
Flags make it small for tests: ``--epochs 1 --widths 4 8 --size 16 --limit 160``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from sklearn.datasets import load_digits

import easyfit as ef

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import ResNet  # noqa: E402  (examples/models.py, beside this file)

TEST_ROWS = 400


def load_data(size: int = 32, margin: int = 4, test_rows: int = TEST_ROWS, seed: int = 0,
              limit: int | None = None) -> tuple[np.ndarray, ...]:
    """The digits as ``(N, size, size, 1)`` float32 in [0, 1], split train / test.

    Each 8x8 digit is resized (bilinear) to ``size - 2 * margin`` and centred in a black
    ``size`` x ``size`` frame, as MNIST centres its digits: scikit-learn's digits fill their
    frame, and a shift would otherwise cut strokes off.

    Args:
        size: the side of the images.
        margin: black pixels around the resized digit, on each side.
        test_rows: rows held out, the last ones of a shuffle seeded by ``seed``.
        seed: the shuffle's seed.
        limit: keep only this many rows before splitting (for quick runs).

    Returns:
        ``(x_train, y_train, x_test, y_test)``.
    """
    if not 0 <= 2 * margin < size:
        raise ValueError(f"margin must leave room for the digit in size {size}; got {margin}.")
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))[:limit]
    images = (digits.images[order] / 16.0).astype(np.float32)[..., None]
    inner = size - 2 * margin
    images = np.asarray(jax.image.resize(images, (len(images), inner, inner, 1), "bilinear"))
    images = np.pad(images, [(0, 0), (margin, margin), (margin, margin), (0, 0)])
    labels = digits.target[order].astype(np.int32)
    test_rows = min(test_rows, len(labels) // 4) if limit else test_rows
    return images[:-test_rows], labels[:-test_rows], images[-test_rows:], labels[-test_rows:]


def build(widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1, shift: int = 4,
          learning_rate: float = 3e-3, seed: int = 0, precision: str = "float32") -> ef.Model:
    """A compiled ``ef.Model`` of a ``ResNet``, augmented by random shifts of up to ``shift``
    pixels (0: no augmentation); ``precision="bfloat16"`` for GPUs and TPUs."""
    model = ef.Model(ResNet(num_classes=10, widths=widths, blocks=blocks, in_channels=1,
                            rngs=nnx.Rngs(seed)))
    model.compile(
        optimizer=ef.optimizers.adamw(
            learning_rate=ef.schedules.warmup_cosine(peak=learning_rate, warmup=0.1),
            weight_decay=1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        augment=ef.augment.random_translation(shift) if shift else None,
        seed=seed,
        precision=precision,
    )
    return model


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Loads the data, trains, evaluates; returns the test results and the fit's seconds."""
    x_train, y_train, x_test, y_test = load_data(args.size, args.margin, seed=args.seed,
                                                 limit=args.limit)
    model = build(tuple(args.widths), args.blocks, args.shift, args.learning_rate, args.seed,
                  args.precision)
    if args.verbose:
        model.summary()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_split=0.1, verbose=args.verbose)
    seconds = time.perf_counter() - start
    results = model.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)
    return {**results, "seconds": seconds, "history": history.history}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64],
                        help="channels of each stage (each stage after the first halves the size)")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per stage")
    parser.add_argument("--shift", type=int, default=4,
                        help="largest random shift in pixels (0: no augmentation)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak of the schedule")
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--margin", type=int, default=4, help="black border around each digit")
    parser.add_argument("--limit", type=int, default=None, help="use only this many digits")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                        help="bfloat16 pays on GPUs and TPUs, not on a CPU")
    parser.add_argument("--seed", type=int, default=0, help="split, init and augmentation")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                        help="0 silent, 1 progress bar, 2 one line per epoch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    print(f"trained {args.epochs} epochs in {results['seconds']:.1f}s; last val_accuracy: "
          f"{results['history']['val_accuracy'][-1]:.4f}")
    print(f"test loss: {results['loss']:.4f}")
    print(f"test accuracy: {results['accuracy']:.4f}")


if __name__ == "__main__":
    main()
