"""Two outputs: one network reads scikit-learn's 8x8 digits and answers two questions, which
digit it is (10 classes) and how much ink the image holds (a number), with a loss, a loss
weight and metrics per output, as in Keras.

Run:  pip install -e ".[examples]" && python examples/two_outputs.py
It trains in a few seconds on a 2-core CPU and prints the logs' names, the test results
(the total loss is the weighted sum of the two outputs' losses) and the shapes ``predict``
returns. The digits ship with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse

import numpy as np
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import easyfit as ef

INK_WEIGHT = 10.0  # the ink's squared error is small; weigh it up against the cross-entropy


class TwoHeads(nnx.Module):
    """64 pixels -> a shared hidden layer -> {"digit": 10 logits, "ink": one number}."""

    def __init__(self, rngs: nnx.Rngs):
        self.body = nnx.Linear(64, 128, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.digit = nnx.Linear(128, 10, rngs=rngs)
        self.ink = nnx.Linear(128, 1, rngs=rngs)

    def __call__(self, x):
        h = self.dropout(nnx.relu(self.body(x)))
        return {"digit": self.digit(h), "ink": self.ink(h)[:, 0]}


def load_data(seed: int):
    """Pixels in [0, 1] and the two targets per image; 20% held out, stratified."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = {"digit": digits.target.astype(np.int32), "ink": x.mean(axis=1)}
    parts = train_test_split(x, y["digit"], y["ink"], test_size=0.2, stratify=y["digit"],
                             random_state=seed)
    x_train, x_test, digit_train, digit_test, ink_train, ink_test = parts
    return (x_train, {"digit": digit_train, "ink": ink_train},
            x_test, {"digit": digit_test, "ink": ink_test})


def main() -> None:
    parser = argparse.ArgumentParser(description="easyfit: a model with two outputs")
    parser.add_argument("--seed", type=int, default=0, help="data split, init and dropout")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2),
                        help="0 silent, 1 progress bar, 2 one line per epoch")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = load_data(args.seed)
    model = ef.Model(TwoHeads(rngs=nnx.Rngs(args.seed)))
    model.compile(
        optimizer=ef.optimizers.adamw(3e-3),
        loss={"digit": "sparse_categorical_crossentropy", "ink": "mse"},
        loss_weights={"digit": 1.0, "ink": INK_WEIGHT},
        metrics={"digit": ["accuracy"], "ink": ["mae"]},
        seed=args.seed,
    )
    stop = ef.callbacks.EarlyStopping(monitor="val_digit_accuracy", patience=5,
                                      restore_best_weights=True)  # "auto": accuracy goes up
    history = model.fit(x_train, y_train, batch_size=64, epochs=args.epochs,
                        validation_split=0.1, callbacks=[stop], verbose=args.verbose)
    print("logged:", ", ".join(history.history))

    results = model.evaluate(x_test, y_test, batch_size=128, verbose=0, return_dict=True)
    for name, value in results.items():
        print(f"test {name}: {value:.4f}")
    total = results["digit_loss"] + INK_WEIGHT * results["ink_loss"]
    print(f"digit_loss + {INK_WEIGHT:g} * ink_loss = {total:.4f} (the total, 'loss')")

    outputs = model.predict(x_test[:5], verbose=0)
    print("predict:", {name: value.shape for name, value in outputs.items()})
    print("digits:", outputs["digit"].argmax(axis=1), "true:", y_test["digit"][:5])


if __name__ == "__main__":
    main()
