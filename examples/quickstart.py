"""Quickstart: a small CNN (flax.nnx) on scikit-learn's 8x8 digits, trained with easyfit.

Run:  pip install -e ".[examples]" && python examples/quickstart.py
The last line printed is the test accuracy (about 0.98-0.99, in well under a minute on
a 2-core CPU). The digits ship with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import easyfit as ef


class CNN(nnx.Module):
    """8x8x1 images -> two 3x3 convolutions -> 2x2 average pool -> dense -> 10 logits."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.dense = nnx.Linear(4 * 4 * 64, 128, rngs=rngs)
        self.dropout = nnx.Dropout(0.3, rngs=rngs)  # active in fit, off in evaluate/predict
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.conv2(x))
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(nnx.relu(self.dense(x)))
        return self.out(x)  # logits: easyfit's losses take logits by default


def load_data(seed: int):
    """The 1,797 digits as (N, 8, 8, 1) floats in [0, 1]; 20% held out, stratified."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description="easyfit quickstart on sklearn digits")
    parser.add_argument("--seed", type=int, default=0, help="data split, init and dropout")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                        help="0 silent, 1 progress bar, 2 one line per epoch")
    args = parser.parse_args()

    x_train, x_test, y_train, y_test = load_data(args.seed)

    model = ef.Model(CNN(rngs=nnx.Rngs(args.seed)))
    model.compile(
        optimizer=ef.optimizers.adamw(
            learning_rate=ef.schedules.warmup_cosine(peak=5e-3, warmup=0.1),  # 10% of the run
            weight_decay=1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        seed=args.seed,
    )
    if args.verbose:
        model.summary()

    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=64, epochs=args.epochs,
                        validation_split=0.1, verbose=args.verbose)
    seconds = time.perf_counter() - start
    print(f"trained {args.epochs} epochs in {seconds:.1f}s; "
          f"last val_accuracy: {history.history['val_accuracy'][-1]:.4f}")

    results = model.evaluate(x_test, y_test, batch_size=128, verbose=0, return_dict=True)
    print(f"test loss: {results['loss']:.4f}")
    print(f"test accuracy: {results['accuracy']:.4f}")


if __name__ == "__main__":
    main()
