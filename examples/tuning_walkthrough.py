"""Tuning hyperparameters on scikit-learn's digits, one step at a time (the guide's figures).

Run:  pip install -e ".[examples,plots,tune]" && python examples/tuning_walkthrough.py
Writes the figures of docs/guides/tuning.md into runs/tuning_walkthrough/ (``--out
docs/guides/img`` regenerates the guide's own) and prints the numbers the guide quotes;
about two minutes on a 2-core CPU.

1. the learning-rate range test (``model.find_lr``);
2. training with the defaults and reading the curves (``history.plot``);
3. a learning rate far too high: divergence;
4. a model that overfits, then one change (dropout) that cures it;
5. a search over width, dropout and learning rate (``ef.tune.search``).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import easyfit as ef


class MLP(nnx.Module):
    """64 pixels -> ``width`` ReLU units (with dropout) -> 10 logits."""

    def __init__(self, width: int = 128, dropout: float = 0.0, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, width, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(self.dropout(nnx.relu(self.hidden(x))))


def load_data():
    """Train / validation / test (60/20/20, stratified); a small training set overfits."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y,
                                                        random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.25,
                                                      stratify=y_train, random_state=0)
    return x_train, y_train, x_val, y_val, x_test, y_test


def model_of(optimizer="adamw", **module_args) -> ef.Model:
    model = ef.Model(MLP(**module_args, rngs=nnx.Rngs(0)))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("runs", "tuning_walkthrough"))
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    figure = lambda name: os.path.join(args.out, name)
    x_train, y_train, x_val, y_val, x_test, y_test = load_data()
    val = (x_val, y_val)

    # 1. The learning-rate range test, on the default optimizer (AdamW).
    result = model_of().find_lr(x_train, y_train, min_lr=1e-6, max_lr=10.0)
    result.plot(figure("lr_finder.png"))
    print(f"1. find_lr: suggestion {result.suggestion:.2g}, "
          f"stopped after {len(result.lrs)} steps (diverged: {result.diverged})")

    # 2. The defaults: AdamW 1e-3, weight decay 1e-4.
    model = model_of()
    history = model.fit(x_train, y_train, epochs=40, validation_data=val, verbose=0)
    history.plot(figure("curves_defaults.png"))
    best = int(np.argmin(history.history["val_loss"]))
    print(f"2. defaults: best val_loss {history.history['val_loss'][best]:.3f} at epoch "
          f"{best + 1}; val_accuracy there {history.history['val_accuracy'][best]:.3f}")

    # 3. Too high a learning rate: the loss jumps around and does not come down.
    history = model_of(ef.optimizers.adamw(0.5)).fit(x_train, y_train, epochs=15,
                                                     validation_data=val, verbose=0)
    history.plot(figure("curves_diverging.png"))
    print(f"3. lr 0.5: final loss {history.history['loss'][-1]:.2f}, "
          f"val_accuracy {history.history['val_accuracy'][-1]:.3f}")

    # 4. The suggested rate on a wide model: fast, then overfitting; one change: dropout.
    for name, dropout in (("overfitting", 0.0), ("dropout", 0.5)):
        model = model_of(ef.optimizers.adamw(result.suggestion), width=512, dropout=dropout)
        history = model.fit(x_train, y_train, epochs=40, validation_data=val, verbose=0)
        history.plot(figure(f"curves_{name}.png"))
        val_loss = history.history["val_loss"]
        print(f"4. width 512, dropout {dropout}: best val_loss {min(val_loss):.3f} at epoch "
              f"{int(np.argmin(val_loss)) + 1}, last {val_loss[-1]:.3f}; train loss "
              f"{history.history['loss'][-1]:.4f}")

    # 5. Search: width, dropout and learning rate, around what worked.
    def build(trial):
        return model_of(
            ef.optimizers.adamw(trial.suggest_float("lr", 1e-4, 3e-2, log=True)),
            width=trial.suggest_int("width", 32, 512, log=True),
            dropout=trial.suggest_float("dropout", 0.0, 0.6))

    study = ef.tune.search(build, x_train, y_train, validation_data=val,
                           objective="val_accuracy", trials=args.trials, epochs=25, verbose=0)
    study.summary()
    test = study.best_model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print(f"5. search: best val_accuracy {study.best_value:.3f} with {study.best_params}; "
          f"test accuracy {test['accuracy']:.3f}")


if __name__ == "__main__":
    main()
