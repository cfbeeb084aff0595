"""``easyfit.data.prefetch.prefetch``: order, bounded read-ahead, errors reaching the
consumer, and a clean stop when the consumer leaves early."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from data_fixtures import deadline
from easyfit.data.prefetch import prefetch


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "easyfit-prefetch" and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leftover_threads():
    yield
    for _ in range(50):   # a joined thread is gone at once; allow a moment just in case
        if not _prefetch_threads():
            break
        time.sleep(0.01)
    assert not _prefetch_threads(), "a prefetch thread outlived its consumer"


def _jittery(i):
    time.sleep(random.Random(i).uniform(0, 0.002))
    return i * 10


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_order_is_preserved(depth):
    rng = random.Random(depth)
    out = []
    with deadline(30, "prefetch"):
        for value in prefetch(range(200), _jittery, depth=depth):
            if rng.random() < 0.1:
                time.sleep(0.002)
            out.append(value)
    assert out == [i * 10 for i in range(200)]


def test_place_runs_in_the_background_thread():
    names = []
    list(prefetch(range(3), lambda i: names.append(threading.current_thread().name), depth=2))
    assert names == ["easyfit-prefetch"] * 3
    names.clear()
    list(prefetch(range(3), lambda i: names.append(threading.current_thread().name), depth=0))
    assert names == [threading.current_thread().name] * 3


def test_read_ahead_is_bounded():
    pulled = []

    def items():
        for i in range(30):
            pulled.append(i)
            yield i

    leads = []
    with deadline(30, "prefetch"):
        for consumed, value in enumerate(prefetch(items(), lambda i: i, depth=2)):
            time.sleep(0.005)
            leads.append(len(pulled) - consumed)
    assert max(leads) <= 2 + 2   # the queue's depth, one placed item waiting, one consumed


def failing_items():
    yield 0
    yield 1
    yield 2
    raise ValueError("boom in the producer")


def test_producer_error_reaches_the_consumer_with_its_traceback():
    received = []
    with deadline(30, "prefetch"):
        with pytest.raises(ValueError, match="boom in the producer") as error:
            for value in prefetch(failing_items(), lambda i: i, depth=2):
                received.append(value)
    assert received == [0, 1, 2]   # everything before the failure arrives first
    assert any(entry.name == "failing_items" for entry in error.traceback)


def test_place_error_reaches_the_consumer():
    def place(i):
        if i == 5:
            raise RuntimeError(f"boom placing {i}")
        return i

    with deadline(30, "prefetch"):
        with pytest.raises(RuntimeError, match="boom placing 5") as error:
            list(prefetch(range(10), place, depth=2))
    assert any(entry.name == "place" for entry in error.traceback)


def test_error_in_the_first_item():
    def items():
        raise KeyError("boom first")
        yield  # pragma: no cover

    with deadline(30, "prefetch"):
        with pytest.raises(KeyError, match="boom first"):
            list(prefetch(items(), lambda i: i))


@pytest.mark.parametrize("depth", [1, 2])
def test_breaking_early_stops_the_producer(depth):
    produced = []

    def endless():
        for i in itertools.count():
            produced.append(i)
            yield i

    with deadline(30, "leaving a prefetch loop early"):
        taken = []
        for value in prefetch(endless(), lambda i: i, depth=depth):
            taken.append(value)
            if len(taken) == 3:
                break
        assert not _prefetch_threads()   # closed (by refcount) and joined on break
    assert taken == [0, 1, 2]
    count = len(produced)
    time.sleep(0.05)
    assert len(produced) == count <= 3 + depth + 2   # nothing is read after the stop


def test_breaking_early_with_a_slow_producer_does_not_hang():
    def slow():
        for i in itertools.count():
            time.sleep(0.05)
            yield i

    with deadline(30, "leaving a slow prefetch loop early"):
        start = time.perf_counter()
        stream = prefetch(slow(), lambda i: i, depth=2)
        assert next(stream) == 0
        stream.close()
        assert time.perf_counter() - start < 5
    assert not _prefetch_threads()


def test_consumer_error_stops_the_producer():
    with deadline(30, "a failing consumer"):
        with pytest.raises(ZeroDivisionError):
            for value in prefetch(itertools.count(), lambda i: i, depth=2):
                if value == 4:
                    1 / 0  # noqa: B018
    assert not _prefetch_threads()


def test_host_chunks_are_placed_on_a_cpu_device_without_a_copy():
    """Chunks gathered from arrays and stacked from a generator's batches start on a 64-byte
    boundary, so XLA:CPU uses them in place: placing one costs no copy of the rows."""
    import jax
    import numpy as np

    from easyfit.data.dispatch import adapt

    x = np.random.default_rng(0).normal(size=(100, 7)).astype(np.float32)
    y = np.arange(100, dtype=np.int32)
    from_arrays = adapt(x, y, batch_size=8, shuffle=True)
    from_batches = adapt(((x[i:i + 8], y[i:i + 8]) for i in range(0, 100, 8)), batch_size=None)
    for data in (from_arrays, from_batches):
        chunk, _ = next(iter(data.chunks(0, 4)))
        for leaf in (chunk.x, chunk.y):
            placed = jax.device_put(leaf, jax.devices("cpu")[0])
            assert placed.unsafe_buffer_pointer() == leaf.ctypes.data
