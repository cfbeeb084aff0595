"""Train from TFDS with no network: scikit-learn's digits built as a local TFDS dataset.

Both TFDS paths are shown: `tfds.load` (a tf.data pipeline) and `tfds.data_source` (random
access read through grain, no TensorFlow in the input path).

    pip install -e ".[tfds,grain]" && python examples/tfds_digits.py
"""

import tempfile

import grain
import jax.numpy as jnp
from flax import nnx

import easyfit as ef
from easyfit.datasets import digits


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.dense = nnx.Linear(8 * 8 * 64 // 4, 10, rngs=rngs)

    def __call__(self, x):
        x = x.astype(jnp.float32) / 16.0          # uint8 images arrive as they are
        x = nnx.relu(self.conv1(x))
        x = nnx.avg_pool(nnx.relu(self.conv2(x)), window_shape=(2, 2), strides=(2, 2))
        return self.dense(self.dropout(x.reshape(x.shape[0], -1)))


def compiled_model() -> ef.Model:
    model = ef.Model(CNN(rngs=nnx.Rngs(0)))
    model.compile(optimizer=ef.optimizers.adamw(ef.schedules.warmup_cosine(3e-3, warmup=0.1)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    data_dir = digits.prepare(tempfile.mkdtemp())  # easyfit imports TensorFlow, quietly
    import tensorflow_datasets as tfds

    # 1. tfds.load: a tf.data pipeline, batched (the last partial batch is padded and masked).
    train = tfds.load("digits", split="train", data_dir=data_dir, as_supervised=True)
    test = tfds.load("digits", split="test", data_dir=data_dir, as_supervised=True)
    model = compiled_model()
    model.fit(train.shuffle(2000, seed=0).batch(32), epochs=15, verbose=2)
    print("tfds.load        test accuracy:",
          round(model.evaluate(test.batch(128), return_dict=True, verbose=0)["accuracy"], 4))

    # 2. tfds.data_source + grain: random access, dict elements named with x_key / y_key.
    source_dir = digits.data_dir_for(data_dir, "array_record")
    train_src = tfds.data_source("digits", split="train", data_dir=source_dir)
    test_src = tfds.data_source("digits", split="test", data_dir=source_dir)
    model = compiled_model()
    model.fit(train_src, batch_size=32, epochs=15, x_key="image", y_key="label", verbose=2)
    print("tfds.data_source test accuracy:", round(model.evaluate(
        grain.MapDataset.source(test_src).batch(128), x_key="image", y_key="label",
        return_dict=True, verbose=0)["accuracy"], 4))


if __name__ == "__main__":
    main()
