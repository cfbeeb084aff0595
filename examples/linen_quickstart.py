"""Quickstart with a flax.linen module (dropout + BatchNorm) on scikit-learn's 8x8 digits.

Run:  pip install -e ".[examples]" && python examples/linen_quickstart.py
easyfit finds the module's ``train`` argument and sets it: ``train=True`` in ``fit``
(dropout on, BatchNorm batch statistics updated), ``train=False`` in ``evaluate``/``predict``.
The last line printed is the test accuracy.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import easyfit as ef


class CNN(nn.Module):
    """Conv -> BatchNorm -> ReLU (x2) -> 2x2 average pool -> dense -> dropout -> 10 logits."""

    @nn.compact
    def __call__(self, x, train: bool):
        for features in (32, 64):
            x = nn.Conv(features, kernel_size=(3, 3), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128)(x))
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(10)(x)  # logits


def load_data(seed: int):
    """The 1,797 digits as (N, 8, 8, 1) floats in [0, 1]; 20% held out, stratified."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description="easyfit Linen quickstart on sklearn digits")
    parser.add_argument("--seed", type=int, default=0, help="data split, init and dropout")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                        help="0 silent, 1 progress bar, 2 one line per epoch")
    args = parser.parse_args()

    x_train, x_test, y_train, y_test = load_data(args.seed)

    # Linen modules are initialised from an example input (one row is enough).
    model = ef.Model(CNN(), sample_input=x_train[:1])
    model.compile(
        optimizer=ef.optimizers.adamw(
            learning_rate=ef.schedules.warmup_cosine(peak=5e-3, warmup=0.1),
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
