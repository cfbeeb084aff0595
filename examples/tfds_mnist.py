"""The real MNIST path: `tfds.load("mnist")`. Needs a network connection the first time.

Not run in CI (no network there). On a machine with internet:

    pip install -e ".[tfds]" && python examples/tfds_mnist.py

Offline, and with no MNIST already in the TFDS data directory, it says so and exits at once.
"""

import socket
import sys

import jax.numpy as jnp
import tensorflow_datasets as tfds
from flax import nnx

import easyfit as ef


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.dropout = nnx.Dropout(0.25, rngs=rngs)
        self.dense1 = nnx.Linear(7 * 7 * 64, 128, rngs=rngs)
        self.dense2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        x = x.astype(jnp.float32) / 255.0
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = self.dropout(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))
        return self.dense2(x)


def online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """Whether the host that serves TFDS's files answers (TFDS would retry for minutes)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def main() -> None:
    if not tfds.builder("mnist").is_prepared() and not online():
        sys.exit("tfds_mnist.py needs the network to download MNIST once (none here); "
                 "examples/tfds_digits.py runs the same path offline.")
    train = tfds.load("mnist", split="train", as_supervised=True)   # downloads once
    test = tfds.load("mnist", split="test", as_supervised=True)
    model = ef.Model(CNN(rngs=nnx.Rngs(0)))
    model.compile(optimizer=ef.optimizers.adamw(ef.schedules.warmup_cosine(1e-3, warmup=0.05)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train.shuffle(10_000).batch(128), epochs=5, validation_data=test.batch(256))
    print("test accuracy:", model.evaluate(test.batch(256), return_dict=True)["accuracy"])


if __name__ == "__main__":
    main()
