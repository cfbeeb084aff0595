"""Hugging Face datasets (``Dataset``: as arrays of its columns, in memory or read per
chunk; ``IterableDataset``: in batches) and a PyTorch ``DataLoader``, each against numpy
arrays of the same rows. Skips what is not installed."""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from easyfit.data import huggingface
from easyfit.data.dispatch import adapt

datasets = pytest.importorskip("datasets")


class Net(nnx.Module):
    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        if isinstance(x, dict):  # two inputs of 4 features each
            x = jnp.concatenate([x["a"], x["b"]], -1)
        return self.l2(nnx.relu(self.l1(x)))


def arrays(n: int = 70):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, :4].argmax(-1)).astype(np.int32)


def table(n: int = 70):
    x, y = arrays(n)
    return datasets.Dataset.from_dict({"features": x, "label": y,
                                       "text": [f"row {i}" for i in range(n)]})


def model_of(spe: int | str = 2) -> ef.Model:
    model = ef.Model(Net())
    model.compile(ef.optimizers.adam(1e-2), "sparse_categorical_crossentropy", ["accuracy"],
                  steps_per_execution=spe)
    return model


def weights_after(x, y=None, epochs: int = 3, callbacks=(), **fit_kw):
    model = model_of()
    history = model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=list(callbacks),
                        **fit_kw)
    return model, history


def assert_same(model_a, model_b):
    for a, b in zip(model_a.get_weights(), model_b.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_importing_easyfit_data_imports_no_datasets():
    code = "import sys, easyfit; print('datasets' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False False"


@pytest.mark.parametrize("in_memory", [True, False])
def test_dataset_with_keys_trains_as_arrays_of_its_columns(in_memory, monkeypatch):
    if not in_memory:
        monkeypatch.setattr(huggingface, "MATERIALIZE_BYTES", 0)
    x, y = arrays()
    reference, ref_history = weights_after(x, y)  # shuffled per epoch from the compile seed
    model, history = weights_after(table(), x_key="features", y_key="label",
                                   validation_data=table(30))
    assert_same(model, reference)
    assert history.history["loss"] == ref_history.history["loss"]
    assert len(history.history["val_loss"]) == 3
    data = adapt(table(), batch_size=16, keys=("features", "label"))
    assert isinstance(data, ef.data.ArrayAdapter if in_memory else huggingface.HFDatasetAdapter)
    np.testing.assert_allclose(model.evaluate(table(), x_key="features", y_key="label",
                                              verbose=0, return_dict=True)["loss"],
                               reference.evaluate(x, y, verbose=0, return_dict=True)["loss"])
    predictions = model.predict(table().select_columns(["features"]), x_key="features",
                                verbose=0)
    np.testing.assert_array_equal(predictions, reference.predict(x, verbose=0))


def test_dataset_read_per_chunk_resumes_mid_epoch_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface, "MATERIALIZE_BYTES", 0)

    class Interrupted(Exception):
        pass

    class InterruptAt(ef.callbacks.Callback):
        every_batch = False

        def on_train_batch_end(self, batch, logs=None):
            if self.model.trainer.step_count >= 7:
                raise Interrupted

    keys = dict(x_key="features", y_key="label")
    reference, ref_history = weights_after(table(), **keys)
    backup = lambda: ef.callbacks.BackupAndRestore(tmp_path / "backup", save_freq=3)
    with pytest.raises(Interrupted):
        weights_after(table(), callbacks=[InterruptAt(), backup()], **keys)
    resumed, history = weights_after(table(), callbacks=[backup()], **keys)
    assert history.history == ref_history.history
    assert_same(resumed, reference)


def test_dataset_rows_split_across_processes_as_arrays_are():
    x, y = arrays(40)
    for index in range(2):
        process = dict(process_index=index, process_count=2)
        expected = ef.data.ArrayAdapter(x, y, batch_size=16, shuffle=True, seed=3, **process)
        for materialize in (1 << 30, 0):
            huggingface.MATERIALIZE_BYTES = materialize
            try:
                data = huggingface.hf_adapter(table(40), batch_size=16, steps=None, with_y=True,
                                              keys=("features", "label"), epochs=1,
                                              shuffle=True, seed=3, **process)
            finally:
                huggingface.MATERIALIZE_BYTES = 1 << 30
            for (got, n), (want, m) in zip(data.chunks(1, 2), expected.chunks(1, 2),
                                           strict=True):
                assert n == m and got.x.shape == (2, 8, 8)
                for a, b in zip(got, want):
                    np.testing.assert_array_equal(a, b)


def test_dataset_dict_input_and_clear_errors():
    x, y = arrays()
    ds = datasets.Dataset.from_dict({"a": x[:, :4], "b": x[:, 4:], "label": y})
    model, _ = weights_after(ds, x_key=["a", "b"], y_key="label", epochs=1)
    reference, _ = weights_after(x, y, epochs=1)
    assert_same(model, reference)  # a dict input of the two halves, concatenated by Net
    with pytest.raises(ValueError, match=r"x_key='image', y_key='label'.*"):
        model.fit(table(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"columns \(\['features', 'label', 'text'\]\).*"
                                         r"predict\(dataset, x_key='image'\)"):
        model.predict(table(), verbose=0)  # the labels would reach the module
    with pytest.raises(KeyError, match=r"\['image'\].*columns are \['features', 'label', 'text'\]"):
        model.fit(table(), x_key="image", y_key="label", epochs=1, verbose=0)
    with pytest.raises(TypeError, match="Column 'text' must hold numbers"):
        model.fit(table(), x_key="text", y_key="label", epochs=1, verbose=0)
    splits = datasets.DatasetDict({"train": table(), "test": table(10)})
    with pytest.raises(TypeError, match=r"dataset\['train'\]"):
        model.fit(splits, x_key="features", y_key="label", epochs=1, verbose=0)


def test_iterable_dataset_trains_in_batches_and_reshuffles_per_epoch():
    x, y = arrays()
    reference, ref_history = weights_after(x, y, shuffle=False)
    stream = table().to_iterable_dataset(num_shards=1)
    model, history = weights_after(stream, x_key="features", y_key="label")
    assert_same(model, reference)  # same batches in the same order, the last one padded
    assert history.history["loss"] == ref_history.history["loss"]

    shuffled = table().to_iterable_dataset(num_shards=4).shuffle(seed=0, buffer_size=8)
    data = adapt(shuffled, batch_size=16, keys=("features", "label"))
    first = lambda epoch: [b.y for b, _ in data.batches(epoch)]
    assert not np.array_equal(np.concatenate(first(0)), np.concatenate(first(1)))
    np.testing.assert_array_equal(np.concatenate(first(1)), np.concatenate(first(1)))


def test_torch_dataloader_trains_as_arrays():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    x, y = arrays()
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=16)
    reference, ref_history = weights_after(x, y, shuffle=False)
    model, history = weights_after(loader)
    assert_same(model, reference)
    assert history.history["loss"] == ref_history.history["loss"]
    dicts = DataLoader([{"features": torch.from_numpy(a), "label": int(b)}
                        for a, b in zip(x, y)], batch_size=16)
    model, _ = weights_after(dicts, x_key="features", y_key="label")
    assert_same(model, reference)
