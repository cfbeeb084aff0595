"""Prefetch to device: a background thread keeps the next chunks ready on the mesh.

The producer reads host chunks from an adapter and places them on the devices while the
current chunk trains, so input and compute overlap. An exception in the producer (a
failing generator, a tf.data map) is re-raised in the training thread with its own
message and traceback.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

__all__ = ["prefetch"]

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[Any], place: Callable[[Any], Any], depth: int = 2) -> Iterator[Any]:
    """Yields ``place(item)`` for each item, computed up to ``depth`` items ahead in a thread.

    The thread makes the next item when the caller asks for the one after the item it holds,
    not as soon as it takes it: the caller's own work on an item (dispatching a train step)
    does not compete with the thread for the interpreter.

    Args:
        items: host items (e.g. ``(chunk, sizes)`` pairs); read in the background thread.
        place: puts one item on the devices.
        depth: how many placed items may wait; ``0`` places in the caller's thread.

    Examples:
        >>> list(prefetch(range(3), lambda i: i * 10))
        [0, 10, 20]
    """
    if depth <= 0:
        yield from (place(item) for item in items)
        return
    ready: queue.Queue = queue.Queue()
    slots = threading.Semaphore(depth)  # items made and not yet handed back by the caller
    stop = threading.Event()

    def produce() -> None:
        try:
            iterator = iter(items)
            while True:
                slots.acquire()
                if stop.is_set():
                    return
                item = next(iterator, _DONE)
                ready.put(item if item is _DONE else place(item))
                if item is _DONE:
                    return
        except BaseException as error:  # noqa: BLE001 -- handed to the consumer
            ready.put(_Failure(error))

    thread = threading.Thread(target=produce, name="easyfit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = ready.get()
            if value is _DONE:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value
            slots.release()  # the caller is done with ``value``
    finally:
        stop.set()
        slots.release()  # wakes the thread if it waits for a slot
        thread.join()
