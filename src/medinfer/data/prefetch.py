"""Items drawn ahead by a background thread: training batches, slide tiles."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()


def prefetched(batches: Iterable[T], depth: int) -> Iterator[T]:
    """``batches`` drawn by a background thread, up to ``depth`` ahead (0: in this thread).

    Drawing a batch (indexing, MONAI augmentation, reading and decoding slide tiles) runs
    while the previous one computes; both release the GIL in their native code (torch
    kernels, OpenSlide's decoder), so the two cores stay busy. The order
    and content of the batches are those of ``batches`` (one producer, FIFO). An error
    in the producer is raised here, at the batch it would have produced.
    """
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
