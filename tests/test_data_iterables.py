"""Python iterables and generators as input, and multi-host readiness of the adapters
(each process's share of every global batch, without running several processes)."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import easyfit as ef
from data_fixtures import (BatchCounter, assert_params_close, deadline, make_data, mlp_model,
                           params_of)
from easyfit.data.adapters import ArrayAdapter, IterableAdapter


def _batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def _no_prefetch_threads() -> bool:
    return not any(t.name == "easyfit-prefetch" and t.is_alive() for t in threading.enumerate())


class Source:
    """A generator over fixed batches that counts what was pulled from it."""

    def __init__(self, batches, forever=False, fail_at=None):
        self.batches, self.forever, self.fail_at = batches, forever, fail_at
        self.pulled = 0

    def __call__(self):
        while True:
            for batch in self.batches:
                if self.pulled == self.fail_at:
                    raise ValueError(f"boom at batch {self.pulled}")
                self.pulled += 1
                yield batch
            if not self.forever:
                return


# ---------------------------------------------------------------------------------------
# generators
# ---------------------------------------------------------------------------------------


def test_generator_with_steps_per_epoch_one_epoch():
    x, y = make_data(80)
    source = Source(_batches(x, y, 16), forever=True)
    counter = BatchCounter()
    model = mlp_model(lr=0.1)
    with deadline(60, "fit on a generator"):
        model.fit(source(), steps_per_epoch=3, epochs=1, callbacks=[counter], verbose=0)
    assert counter.per_epoch == [3]
    assert source.pulled == 3   # an epoch reads exactly steps_per_epoch batches
    reference = mlp_model(lr=0.1)
    reference.fit(x[:48], y[:48], batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)




@pytest.mark.filterwarnings("ignore:The (training )?input ran out of data")
def test_generator_with_steps_per_epoch_several_epochs_trains_like_numpy():
    x, y = make_data(80)
    source = Source(_batches(x, y, 16), forever=True)   # 5 batches, repeated forever
    counter = BatchCounter()
    model = mlp_model(lr=0.1)
    with deadline(60, "fit on a generator"):
        history = model.fit(source(), steps_per_epoch=5, epochs=3, callbacks=[counter],
                            verbose=0)
    assert counter.per_epoch == [5, 5, 5]
    assert source.pulled == 15   # each epoch continues where the last one stopped
    assert len(history.history["loss"]) == 3
    reference = mlp_model(lr=0.1)
    expected = reference.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)


def test_exhausted_generator_ends_the_epoch_with_a_warning():
    x, y = make_data(48)
    source = Source(_batches(x, y, 16))   # 3 batches only
    counter = BatchCounter()
    model = mlp_model(lr=0.1)
    with deadline(60, "fit on an exhausted generator"):
        with pytest.warns(UserWarning, match="ran out of data"):
            history = model.fit(source(), steps_per_epoch=5, epochs=1, callbacks=[counter],
                                verbose=0)
    assert counter.per_epoch == [3]
    assert len(history.history["loss"]) == 1
    reference = mlp_model(lr=0.1)
    reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)


def test_exhausted_generator_stops_training_early():
    x, y = make_data(48)
    source = Source(_batches(x, y, 16))
    model = mlp_model(lr=0.1)
    with deadline(60, "fit on an exhausted generator"):
        with pytest.warns(UserWarning, match="ran out of data"):
            history = model.fit(source(), steps_per_epoch=2, epochs=4, verbose=0)
    # 3 batches: epoch 1 takes 2, epoch 2 the last one (and warns), epoch 3 finds none.
    assert len(history.history["loss"]) == 2


def test_generator_needs_steps_per_epoch_for_several_epochs():
    x, y = make_data(48)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        mlp_model().fit(Source(_batches(x, y, 16))(), epochs=2, verbose=0)


def test_generator_one_epoch_without_steps_reads_to_the_end():
    x, y = make_data(100)
    counter = BatchCounter()
    model = mlp_model(lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # running to the end of one epoch is not a warning
        model.fit(Source(_batches(x, y, 32))(), epochs=1, callbacks=[counter], verbose=0)
    assert counter.per_epoch == [4]   # 32, 32, 32, 4
    reference = mlp_model(lr=0.1)
    reference.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)


def test_list_of_batches_is_reread_each_epoch():
    x, y = make_data(100)
    counter = BatchCounter()
    model = mlp_model(lr=0.1)
    model.fit(_batches(x, y, 32), epochs=3, callbacks=[counter], verbose=0)
    assert counter.per_epoch == [4, 4, 4]
    reference = mlp_model(lr=0.1)
    reference.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)


class _Passes:
    """A re-iterable input that records, as each pass over it starts, how many epochs had
    ended (``ended``: filled by a callback)."""

    def __init__(self, batches, ended):
        self.batches, self.ended, self.starts = batches, ended, []

    def __iter__(self):
        self.starts.append(len(self.ended))
        return iter(self.batches)


class _EpochEnds(ef.callbacks.Callback):
    observer = True  # reads nothing: fit need not pause between epochs for it

    def __init__(self, ended):
        super().__init__()
        self.ended = ended

    def on_epoch_end(self, epoch, logs=None):
        self.ended.append(epoch)


def test_a_reiterable_input_is_read_across_epochs_as_arrays_are():
    # each epoch starts over, so the next epoch's first chunk is read (and dispatched) before
    # this epoch's callbacks run: the device does not wait for the input between epochs
    x, y = make_data(100)
    ended = []
    data = _Passes(_batches(x, y, 25), ended)
    model = mlp_model(lr=0.1, steps_per_execution=2)
    model.fit(data, epochs=3, verbose=0, callbacks=[_EpochEnds(ended)])
    assert data.starts == [0, 0, 1]  # the peek, then epochs 1 and 2 before epochs 0 and 1 end
    reference = mlp_model(lr=0.1, steps_per_execution=2)
    reference.fit(x, y, batch_size=25, epochs=3, shuffle=False, verbose=0)
    assert_params_close(params_of(model.module), params_of(reference.module), atol=1e-5)


def test_evaluate_and_predict_on_generators():
    x, y = make_data(1001)
    model = mlp_model()
    expected = model.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    logs = model.evaluate(Source(_batches(x, y, 64))(), return_dict=True, verbose=0)
    assert logs == pytest.approx(expected, rel=1e-5)
    predictions = model.predict((x[i:i + 64] for i in range(0, 1001, 64)), verbose=0)
    assert predictions.shape == (1001, 4)
    np.testing.assert_allclose(predictions, model.predict(x, batch_size=64, verbose=0),
                               atol=1e-6)


def test_error_inside_generator_reaches_user():
    x, y = make_data(128)
    source = Source(_batches(x, y, 16), fail_at=4)
    with deadline(60, "fit on a failing generator"):
        with pytest.raises(ValueError, match="boom at batch 4") as error:
            mlp_model().fit(source(), steps_per_epoch=8, epochs=1, verbose=0)
    # The traceback reaches into the user's generator.
    assert any(entry.name == "__call__" and "data_fixtures" not in str(entry.path)
               and "test_data_iterables" in str(entry.path) for entry in error.traceback)
    assert _no_prefetch_threads()


def test_error_inside_generator_during_evaluate_and_predict():
    x, y = make_data(128)
    model = mlp_model()
    with deadline(60, "evaluate on a failing generator"):
        with pytest.raises(ValueError, match="boom"):
            model.evaluate(Source(_batches(x, y, 16), fail_at=3)(), verbose=0)
        with pytest.raises(ValueError, match="boom"):
            model.predict((b[0] for b in Source(_batches(x, y, 16), fail_at=3)()), verbose=0)
    assert _no_prefetch_threads()


# ---------------------------------------------------------------------------------------
# multi-host readiness: each process's rows of every global batch
# ---------------------------------------------------------------------------------------


def _ids(batch):
    return batch.x[:, 0].astype(int)


def test_array_adapter_splits_each_global_batch_between_processes():
    n = 21   # batches of 8: two full ones and a last one of 5 rows (padded to 8)
    x = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32)
    y = np.arange(n) % 3
    w = np.random.default_rng(0).uniform(0.5, 2.0, n).astype(np.float32)
    for shuffle in (False, True):
        whole = list(ArrayAdapter(x, y, w, batch_size=8, shuffle=shuffle, seed=3).batches(0))
        parts = [list(ArrayAdapter(x, y, w, batch_size=8, shuffle=shuffle, seed=3,
                                   process_index=i, process_count=2).batches(0))
                 for i in range(2)]
        assert len(parts[0]) == len(parts[1]) == len(whole) == 3
        for j, (global_batch, _) in enumerate(whole):
            local = [parts[i][j][0] for i in range(2)]
            for i in range(2):   # each process: its contiguous half of the global batch
                assert local[i].x.shape == (4, 2) and local[i].mask.shape == (4,)
                np.testing.assert_array_equal(local[i].x, global_batch.x[4 * i:4 * i + 4])
                np.testing.assert_array_equal(local[i].y, global_batch.y[4 * i:4 * i + 4])
                np.testing.assert_array_equal(local[i].mask, global_batch.mask[4 * i:4 * i + 4])
                np.testing.assert_array_equal(local[i].weight,
                                              global_batch.weight[4 * i:4 * i + 4])
            # Together: exactly the rows of this global batch, each once.
            real = np.concatenate([_ids(b)[b.mask == 1] for b in local])
            expected = _ids(global_batch)[global_batch.mask == 1]
            np.testing.assert_array_equal(real, expected)
            assert len(set(real.tolist())) == len(real) == (8 if j < 2 else 5)
            for b in local:   # weights: the sample weight on real rows, 0 on padding
                np.testing.assert_allclose(b.weight, w[_ids(b)] * b.mask)
        rows = np.concatenate([_ids(b)[b.mask == 1] for batches in parts for b, _ in batches])
        assert sorted(rows.tolist()) == list(range(n))


def _global_batches(n, size, with_weight=True):
    x = np.stack([np.arange(n), np.ones(n)], axis=1).astype(np.float32)
    y = np.arange(n) % 3
    w = (np.arange(n) % 4 + 1).astype(np.float32)
    return [(x[i:i + size], y[i:i + size], w[i:i + size]) if with_weight else
            (x[i:i + size], y[i:i + size]) for i in range(0, n, size)]


def test_iterable_adapter_splits_each_global_batch_between_processes():
    batches = _global_batches(22, 8)   # 8, 8, 6
    parts = [IterableAdapter(batches, process_index=i, process_count=2) for i in range(2)]
    assert [p.batch_size for p in parts] == [8, 8]   # global batch size
    local = [list(p.batches(0)) for p in parts]
    assert len(local[0]) == len(local[1]) == len(batches)
    for j, (gx, gy, gw) in enumerate(batches):
        rows = len(gx)
        half = -(-rows // 2)
        chunks = [local[i][j][0] for i in range(2)]
        for i, b in enumerate(chunks):
            assert b.x.shape == (4, 2)
            mine = slice(0, half) if i == 0 else slice(half, rows)   # contiguous halves
            real = b.mask == 1
            np.testing.assert_array_equal(b.x[real], gx[mine])
            np.testing.assert_array_equal(b.y[real], gy[mine])
            np.testing.assert_allclose(b.weight[real], gw[mine])
            assert np.all(b.weight[~real] == 0)
            assert np.all(real[:real.sum()])   # real rows first, then padding
        together = np.concatenate([_ids(b)[b.mask == 1] for b in chunks])
        np.testing.assert_array_equal(together, gx[:, 0].astype(int))


def test_iterable_adapter_sample_batch_is_local():
    parts = [IterableAdapter(_global_batches(16, 8, with_weight=False), process_index=i,
                             process_count=2) for i in range(2)]
    samples = [p.sample_batch() for p in parts]
    assert all(s.x.shape == (4, 2) for s in samples)
    np.testing.assert_array_equal(np.concatenate([_ids(s) for s in samples]), np.arange(8))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_iterable_adapter_last_batch_smaller_than_process_count():
    batches = _global_batches(17, 8)   # 8, 8, 1
    local = [list(IterableAdapter(batches, process_index=i, process_count=2).batches(0))
             for i in range(2)]
    assert len(local[0]) == len(local[1]) == 3
    last = [local[i][2][0] for i in range(2)]
    assert [int(b.mask.sum()) for b in last] == [1, 0]
    assert np.all(last[1].weight == 0)
    assert _ids(last[0])[0] == 16


# ---------------------------------------------------------------------------------------
# multi-host readiness through adapt(): every input kind gets this process's share
# ---------------------------------------------------------------------------------------

_N = 21   # global batches of 8: 8, 8 and 5 rows


def _rows():
    x = np.stack([np.arange(_N), np.ones(_N)], axis=1).astype(np.float32)
    return x, (np.arange(_N) % 3).astype(np.int32)


def _arrays():
    return _rows()


def _list():
    x, y = _rows()
    return _batches(x, y, 8)


def _tf_batched():
    import tensorflow as tf
    return tf.data.Dataset.from_tensor_slices(_rows()).batch(8)


def _tf_unbatched():
    import tensorflow as tf
    return tf.data.Dataset.from_tensor_slices(_rows())


def _grain_batched():
    import grain
    x, y = _rows()
    return grain.MapDataset.source(range(_N)).map(lambda i: (x[i], y[i])).batch(8)




@pytest.mark.parametrize("make", [
    _arrays, _list,
    _tf_batched,
    _tf_unbatched,
    _grain_batched,
], ids=["arrays", "list", "tf_batched", "tf_unbatched", "grain_batched"])
def test_adapt_gives_each_process_its_rows_of_every_global_batch(make, monkeypatch):
    import jax

    from easyfit.data.dispatch import adapt

    def build():
        data = make()
        if isinstance(data, tuple):
            return adapt(*data, batch_size=8)
        return adapt(data, batch_size=8)

    reference = [b for b, _ in build().batches(0)]
    local = []
    for i in range(2):
        monkeypatch.setattr(jax, "process_index", lambda i=i: i)
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        adapter = build()
        monkeypatch.undo()
        assert adapter.batch_size == 8   # the global batch size
        local.append([b for b, _ in adapter.batches(0)])
    assert len(local[0]) == len(local[1]) == len(reference) == 3
    for j, whole in enumerate(reference):
        parts = [local[i][j] for i in range(2)]
        assert all(p.mask.shape == (4,) for p in parts)   # half of the global batch each
        together = sorted(np.concatenate([_ids(p)[p.mask == 1] for p in parts]).tolist())
        assert together == sorted(_ids(whole)[whole.mask == 1].tolist())
